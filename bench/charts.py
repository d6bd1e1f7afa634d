"""What each suite measured, kept beside its baseline of the same run, and drawn as PNG.

The suites hand over their samples as they time them: latencies through latencies(),
percentiles() (for tools that report only those, like wrk) or the timing helpers'
record argument (recorder()), throughput figures through throughput(). In every
chart the first series is the baseline. `python -m bench --charts DIR` writes, per
suite, DIR/SUITE-latency.png (each series' distribution as a CDF beside its
baseline's) and DIR/SUITE-throughput.png (bars), each stamped with the run's date and
load average. Drawn with matplotlib's Agg canvas: no display, no pyplot state.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter


@dataclass(frozen=True)
class Curve:
    """A latency distribution: ms at ascending percentiles (every sample, or a tool's few)."""

    ms: list[float]
    percent: list[float]
    median: float
    every_sample: bool = True

    @classmethod
    def of_samples(cls, ms: Sequence[float]) -> Curve:
        ordered = sorted(ms)
        n = len(ordered)
        return cls(ordered, [100 * (i + 1) / n for i in range(n)], statistics.median(ordered))

    @classmethod
    def of_percentiles(cls, at: Mapping[float, float]) -> Curve:
        """From percentile -> ms; the 50th must be among them."""
        return cls([at[p] for p in sorted(at)], sorted(at), at[50], every_sample=False)


@dataclass
class Suite:
    """One suite's results, in the order recorded; each chart's first series its baseline."""

    name: str
    latencies: dict[str, dict[str, Curve]] = field(default_factory=dict)
    # title -> (unit, label -> figures: one per run, or one)
    throughputs: dict[str, tuple[str, dict[str, list[float]]]] = field(default_factory=dict)
    ended: datetime.datetime | None = None
    load: tuple[float, float] = (0.0, 0.0)  # over the last 1 and 5 minutes, at the end


_current = Suite("bench")


@contextlib.contextmanager
def suite(name: str) -> Iterator[Suite]:
    """Collect what the block records under name; stamp the time and load at its end."""
    global _current
    _current = Suite(name)
    try:
        yield _current
    finally:
        _current.ended = datetime.datetime.now(datetime.UTC)
        load1, load5, _ = os.getloadavg()
        _current.load = (load1, load5)


def latencies(title: str, samples: Mapping[str, Sequence[float]]) -> None:
    """Add series of ms per call to the chart titled title (the first one added to it is
    its baseline)."""
    chart = _current.latencies.setdefault(title, {})
    chart.update({label: Curve.of_samples(ms) for label, ms in samples.items()})


def percentiles(title: str, at: Mapping[str, Mapping[float, float]]) -> None:
    """Add series known only at some percentiles: label -> {percentile: ms}, 50 included."""
    chart = _current.latencies.setdefault(title, {})
    chart.update({label: Curve.of_percentiles(points) for label, points in at.items()})


def recorder(title: str, *labels: str) -> Callable[[Sequence[Sequence[float]]], None]:
    """For the timing helpers' record argument: their per-op samples, in seconds and in
    the order of the ops, become the series labels of the chart titled title."""

    def record(seconds: Sequence[Sequence[float]]) -> None:
        ms = {
            label: [s * 1000 for s in times] for label, times in zip(labels, seconds, strict=True)
        }
        latencies(title, ms)

    return record


def throughput(title: str, figures: Mapping[str, Sequence[float]], unit: str = "req/s") -> None:
    """Add throughput figures (one per run, or one) to the chart titled title; the first
    label added to it is its baseline."""
    chart = _current.throughputs.setdefault(title, (unit, {}))[1]
    chart.update({label: list(values) for label, values in figures.items()})


def write(results: Suite, folder: Path) -> list[Path]:
    """SUITE-latency.png and SUITE-throughput.png in folder (those with anything in them)."""
    folder.mkdir(parents=True, exist_ok=True)
    ended = results.ended or datetime.datetime.now(datetime.UTC)
    stamp = (
        f"{results.name}: {ended:%Y-%m-%d %H:%M} UTC, load average "
        f"{results.load[0]:.1f} (1 min), {results.load[1]:.1f} (5 min), "
        f"{os.cpu_count()} CPUs"
    )
    written = []
    if results.latencies:
        path = folder / f"{results.name}-latency.png"
        _draw(path, stamp, [partial(_cdf, title=t, curves=c) for t, c in results.latencies.items()])
        written.append(path)
    if results.throughputs:
        path = folder / f"{results.name}-throughput.png"
        panels = [
            partial(_bars, title=t, unit=u, figures=f) for t, (u, f) in results.throughputs.items()
        ]
        _draw(path, stamp, panels)
        written.append(path)
    return written


def _draw(path: Path, stamp: str, panels: Sequence[Callable[[Axes], None]]) -> None:
    """One panel per chart, in one column (two when there are many), into a PNG."""
    cols = 1 if len(panels) <= 3 else 2
    rows = math.ceil(len(panels) / cols)
    figure = Figure(figsize=(8 * cols, 0.6 + 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)  # Agg: a PNG without a display
    axes = figure.subplots(rows, cols, squeeze=False).flatten()
    for ax, draw in zip(axes, panels, strict=False):
        draw(ax)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(stamp, fontsize="medium")
    figure.savefig(path, dpi=80)


def _cdf(ax: Axes, title: str, curves: Mapping[str, Curve]) -> None:
    base = next(iter(curves.values())).median
    for i, (label, curve) in enumerate(curves.items()):
        ratio = "baseline" if i == 0 else f"{curve.median / base:.2f}x"
        ax.plot(
            curve.ms,
            curve.percent,
            marker=None if curve.every_sample else "o",  # a tool's few percentiles: points
            drawstyle="steps-post" if curve.every_sample else "default",
            label=f"{label}: median {_number(curve.median)} ms, {ratio}",
        )
    everything = [ms for curve in curves.values() for ms in curve.ms]
    if max(everything) > 4 * min(everything) > 0:  # a long tail, or series far apart
        ax.set_xscale("log")
        few_decades = max(everything) < 100 * min(everything)
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5) if few_decades else (1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(title=title, ylabel="% of calls at or under", ylim=(0, 101))
    ax.set_xlabel("ms per call; ratio: median to the baseline's")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")


def _bars(ax: Axes, title: str, unit: str, figures: Mapping[str, list[float]]) -> None:
    medians = [statistics.median(values) for values in figures.values()]
    colors = ["0.6"] + ["C0"] * (len(figures) - 1)  # the baseline in grey
    ax.barh(range(len(figures)), medians, color=colors, height=0.6)
    several = False
    for y, (values, median) in enumerate(zip(figures.values(), medians, strict=True)):
        if len(values) > 1:
            several = True
            ax.plot(values, [y] * len(values), "k.", alpha=0.6)
        ratio = "baseline" if y == 0 else f"{median / medians[0]:.2f}x"
        ax.text(max(values), y, f"  {_number(median)} {unit}, {ratio}", va="center")
    ax.set_yticks(range(len(figures)), list(figures))
    ax.invert_yaxis()
    ax.margins(x=0.35)
    runs = " (bar: median; dots: each run)" if several else ""
    ax.set(title=title, xlabel=f"{unit}{runs}; ratio: to the baseline's")
    ax.grid(axis="x", alpha=0.3)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
