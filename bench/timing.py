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
