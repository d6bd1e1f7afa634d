"""The render threads: bounded admission, and each caller's own deadline."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from opentelemetry import trace

from common.errors import Reason, ServiceError

log = logging.getLogger("processor")
tracer = trace.get_tracer("imagesvc.processor")

T = TypeVar("T")


class Workers:
    """CPU work on a thread pool: at most `capacity` pieces admitted (running or
    queued), past which new work is refused with OVERLOADED at once."""

    def __init__(self, threads: int, queue_size: int, timeout_seconds: float) -> None:
        self.threads = threads
        self.capacity = threads + queue_size
        self.timeout_seconds = timeout_seconds
        # Admitted work not yet finished; counted down when the thread really stops,
        # not when a caller stops waiting (a thread cannot be killed).
        self.pending = 0
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="render")

    def admit(self) -> None:
        """Refuse at once when no more work may be admitted."""
        if self.pending >= self.capacity:
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

        def traced() -> T:
            with tracer.start_as_current_span("render", attributes={"imagesvc.work": label}):
                return work()

        # An executor's thread does not inherit the caller's context by itself.
        run = contextvars.copy_context().run
        future = asyncio.get_running_loop().run_in_executor(self._pool, run, traced)

        def finished(done: asyncio.Future[T]) -> None:
            self.pending -= 1
            if not done.cancelled() and done.exception() is None:
                ms = round((time.perf_counter() - start) * 1000, 2)
                log.info("processed", extra={"key": label, "ms": ms})

        future.add_done_callback(finished)
        return future

    async def wait(self, work: asyncio.Future[T], deadline: float | None, doing: str) -> T:
        """work's result, within the caller's deadline and the processing time limit;
        the work itself goes on for whoever else waits for it."""
        timeout = self.timeout_seconds if deadline is None else min(self.timeout_seconds, deadline)
        try:
            return await asyncio.wait_for(asyncio.shield(work), timeout)
        except TimeoutError:
            raise ServiceError(
                Reason.DEADLINE_EXCEEDED, f"{doing} took longer than the {timeout:.1f}s allowed"
            ) from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
