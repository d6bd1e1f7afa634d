"""How the benchmarks time one operation."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator


def median_ms(op: Callable[[int], object], runs: int) -> float:
    """Median milliseconds per call of op(i) for i in range(runs), after op(-1) warms up."""
    op(-1)
    samples = []
    for i in range(runs):
        start = time.perf_counter()
        op(i)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


@contextlib.contextmanager
def on_cpu(cpu: int | None) -> Iterator[None]:
    """Run the block on one CPU (None: wherever the scheduler likes), then as before."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def interleaved_ms(
    baseline: Callable[[int], object],
    *others: Callable[[int], object],
    runs: int,
    rounds: int = 3,
    spread_baseline: bool = False,
) -> list[float]:
    """Median ms per call of the baseline and of each other op, in that order, timed in
    alternating blocks of runs // rounds calls.

    Blocks keep each side warm (calling them strictly in turn makes each wait on the
    other's cold caches); alternating them spreads the machine's drift over all.
    With spread_baseline, the baseline's blocks run on each CPU in turn: where the
    others' work runs in another process, on whichever CPU, and the CPUs drift apart
    (on this machine one may run 25% slower than the other for seconds at a time), a
    baseline from one CPU would stand for that CPU only.
    """
    ops = (baseline, *others)
    samples: list[list[float]] = [[] for _ in ops]
    block = max(1, runs // rounds)
    cpus = sorted(os.sched_getaffinity(0))
    for r in range(rounds):
        for op, out in zip(ops, samples, strict=True):
            cpu = cpus[r % len(cpus)] if spread_baseline and op is baseline else None
            with on_cpu(cpu):
                op(-1 - r)  # warm-up, not counted
                for i in range(r * block, (r + 1) * block):
                    start = time.perf_counter()
                    op(i)
                    out.append(time.perf_counter() - start)
    return [statistics.median(times) * 1000 for times in samples]
