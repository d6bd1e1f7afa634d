"""The render threads: bounded admission, each caller's own deadline, and a bound on
renders that go on after their callers have gone."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from opentelemetry import trace

from common.errors import Reason, ServiceError
from processor.metrics import ProcessorMetrics

log = logging.getLogger("processor")
tracer = trace.get_tracer("imagesvc.processor")

T = TypeVar("T")


class Workers:
    """CPU work on a thread pool: at most `capacity` pieces admitted (running or
    queued), past which new work is refused with OVERLOADED at once.

    A thread cannot be stopped, so work whose caller's deadline passed runs on
    (abandoned); while `max_abandoned` such pieces have not ended, new work is refused
    too: they hold threads nobody waits for, and work queued behind them would only
    outlive its own caller in turn.
    """

    def __init__(
        self,
        threads: int,
        queue_size: int,
        timeout_seconds: float,
        max_abandoned: int,
        metrics: ProcessorMetrics,
    ) -> None:
        self.threads = threads
        self.capacity = threads + queue_size
        self.timeout_seconds = timeout_seconds
        self.max_abandoned = max_abandoned
        self.metrics = metrics
        # Admitted work not yet finished; counted down when the thread really stops,
        # not when a caller stops waiting (a thread cannot be killed).
        self.pending = 0
        self.running = 0  # of pending, those on a thread now (changed under _lock)
        self._lock = threading.Lock()
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="render")
        # Read at scrape time, on the metrics thread: nothing to update per render.
        metrics.queued.set_function(lambda: self.pending - self.running)
        metrics.running.set_function(lambda: self.running)
        metrics.abandoned.set_function(lambda: len(self._abandoned))

    @property
    def abandoned(self) -> int:
        return len(self._abandoned)

    def admit(self) -> None:
        """Refuse at once when no more work may be admitted."""
        if len(self._abandoned) >= self.max_abandoned:
            self.metrics.refused_abandoned.inc()
            raise ServiceError(
                Reason.OVERLOADED,
                f"{len(self._abandoned)} renders whose callers' deadlines passed still "
                "run; retry shortly",
                {"retry_after_seconds": "1"},
            )
        if self.pending >= self.capacity:
            self.metrics.refused_capacity.inc()
            raise ServiceError(
                Reason.OVERLOADED,
                "the processor is at capacity; retry shortly",
                {"retry_after_seconds": "1"},
            )

    def submit(self, work: Callable[[], T], label: str) -> asyncio.Future[T]:
        """Start work on a thread, or refuse at once when the queue is full; a
        "processed" line (label, milliseconds) is logged when it succeeds. The work runs
        in its caller's context (request id, trace), in a span of its own, "render"."""
        self.admit()
        self.pending += 1
        start = time.perf_counter()

        def run() -> T:
            with self._lock:
                self.running += 1
            try:
                with tracer.start_as_current_span("render", attributes={"imagesvc.work": label}):
                    return work()
            finally:
                with self._lock:
                    self.running -= 1

        # An executor's thread does not inherit the caller's context by itself.
        context = contextvars.copy_context()
        future = asyncio.get_running_loop().run_in_executor(self._pool, context.run, run)

        def finished(done: asyncio.Future[T]) -> None:
            self.pending -= 1
            if not done.cancelled() and done.exception() is None:
                ms = round((time.perf_counter() - start) * 1000, 2)
                log.info("processed", extra={"key": label, "ms": ms})

        future.add_done_callback(finished)
        return future

    async def wait(self, work: asyncio.Future[T], deadline: float | None, doing: str) -> T:
        """work's result, within the caller's deadline and the processing time limit;
        the work itself goes on for whoever else waits for it, counted as abandoned
        until it ends."""
        timeout = self.timeout_seconds if deadline is None else min(self.timeout_seconds, deadline)
        try:
            return await asyncio.wait_for(asyncio.shield(work), timeout)
        except TimeoutError:
            self.metrics.deadline_exceeded.inc()
            if not work.done() and work not in self._abandoned:
                self._abandoned.add(work)
                work.add_done_callback(self._abandoned.discard)
            raise ServiceError(
                Reason.DEADLINE_EXCEEDED, f"{doing} took longer than the {timeout:.1f}s allowed"
            ) from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
