"""How the benchmarks time one operation."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

# Takes a helper's samples, in seconds, one list per op in the order given (the
# baseline's first): bench.charts.recorder makes one.
Record = Callable[[Sequence[Sequence[float]]], object]


def median_ms(op: Callable[[int], object], runs: int, record: Record | None = None) -> float:
    """Median milliseconds per call of op(i) for i in range(runs), after op(-1) warms up."""
    op(-1)
    samples = []
    for i in range(runs):
        start = time.perf_counter()
        op(i)
        samples.append(time.perf_counter() - start)
    if record is not None:
        record([samples])
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
    record: Record | None = None,
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
    if record is not None:
        record(samples)
    return [statistics.median(times) * 1000 for times in samples]


class ThreadCores:
    """Which CPU a process's busiest thread ran on since a snapshot (Linux /proc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def snapshot(self) -> dict[int, int]:
        """Nanoseconds on a CPU so far, per thread."""
        return {tid: self._read(tid)[0] for tid in self._tids()}

    def busiest_since(self, before: dict[int, int]) -> int | None:
        """The CPU the thread that ran longest since before last ran on (None: none ran)."""
        best, cpu = 0, None
        for tid in self._tids():
            ran, last = self._read(tid)
            if ran - before.get(tid, 0) > best:
                best, cpu = ran - before.get(tid, 0), last
        return cpu

    def _tids(self) -> list[int]:
        return [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]

    def _read(self, tid: int) -> tuple[int, int]:
        task = f"/proc/{self.pid}/task/{tid}"
        try:
            with open(f"{task}/schedstat") as f:
                ran = int(f.read().split()[0])
            with open(f"{task}/stat") as f:
                # Fields after the command's closing parenthesis start at field 3;
                # field 39 is the CPU the thread last ran on.
                last = int(f.read().rsplit(")", 1)[1].split()[36])
        except (FileNotFoundError, ProcessLookupError):  # the thread has just ended
            return 0, -1
        return ran, last


def core_matched(
    baseline: Callable[[int], object],
    op: Callable[[int], object],
    cores: ThreadCores,
    runs: int,
    rounds: int,
    record: Record | None = None,
) -> tuple[float, float, float]:
    """(median of op's time over the baseline's on the CPU op's busiest thread ran on,
    in the same round; op's median ms; the baseline's median ms over all CPUs).

    Where the CPUs drift apart (one 25% slower than the other for seconds), a
    service's render lands on either, and a baseline from both mixes the two speeds;
    each call compared with the baseline on its own CPU, just measured, does not.
    record, if given, gets the baseline's samples over all CPUs, then op's.
    """
    cpus = sorted(os.sched_getaffinity(0))
    block = max(len(cpus), runs // rounds)
    ratios: list[float] = []
    own: list[float] = []
    base_all: list[float] = []
    for r in range(rounds):
        base: dict[int, float] = {}
        for cpu in cpus:
            with on_cpu(cpu):
                baseline(-1 - r)
                times = []
                for i in range(block // len(cpus)):
                    start = time.perf_counter()
                    baseline(i)
                    times.append(time.perf_counter() - start)
            base[cpu] = statistics.median(times)
            base_all += times
        op(-1 - r)
        for i in range(r * block, (r + 1) * block):
            before = cores.snapshot()
            start = time.perf_counter()
            op(i)
            took = time.perf_counter() - start
            ran_on = cores.busiest_since(before)
            own.append(took)
            if ran_on in base:
                ratios.append(took / base[ran_on])
    if record is not None:
        record([base_all, own])
    return (
        statistics.median(ratios),
        statistics.median(own) * 1000,
        statistics.median(base_all) * 1000,
    )


@dataclass(frozen=True)
class AsyncOp:
    """An awaitable operation to time, op(i), after an untimed prepare(i) (staging its input)."""

    run: Callable[[int], Awaitable[object]]
    prepare: Callable[[int], Awaitable[object]] | None = None


async def interleaved_async_ms(
    ops: Sequence[AsyncOp], runs: int, rounds: int = 3, record: Record | None = None
) -> list[float]:
    """Median ms per call of each op, timed in alternating blocks of runs // rounds calls
    (see interleaved_ms: blocks keep each side warm, alternation spreads the drift)."""
    samples: list[list[float]] = [[] for _ in ops]
    block = max(1, runs // rounds)
    for r in range(rounds):
        for op, out in zip(ops, samples, strict=True):
            for i in [-1 - r, *range(r * block, (r + 1) * block)]:  # the first warms up
                if op.prepare is not None:
                    await op.prepare(i)
                start = time.perf_counter()
                await op.run(i)
                if i >= 0:
                    out.append(time.perf_counter() - start)
    if record is not None:
        record(samples)
    return [statistics.median(times) * 1000 for times in samples]
