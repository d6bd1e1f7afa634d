"""How the benchmarks time one operation."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(op: Callable[[int], object], runs: int) -> float:
    """Median milliseconds per call of op(i) for i in range(runs), after op(-1) warms up."""
    op(-1)
    samples = []
    for i in range(runs):
        start = time.perf_counter()
        op(i)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def interleaved_ms(
    first: Callable[[int], object],
    second: Callable[[int], object],
    runs: int,
    rounds: int = 3,
) -> tuple[float, float]:
    """Median ms per call of each, in alternating blocks of runs // rounds calls.

    Blocks keep each side warm (calling them strictly in turn makes each wait on the
    other's cold caches); alternating them spreads the machine's drift over both.
    """
    samples: tuple[list[float], list[float]] = ([], [])
    block = max(1, runs // rounds)
    for r in range(rounds):
        for op, out in zip((first, second), samples, strict=True):
            op(-1 - r)  # warm-up, not counted
            for i in range(r * block, (r + 1) * block):
                start = time.perf_counter()
                op(i)
                out.append(time.perf_counter() - start)
    return statistics.median(samples[0]) * 1000, statistics.median(samples[1]) * 1000
