"""Small variants on their way to the cache service, gathered into batches."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence

from imageservice.v1 import cache_service_pb2 as cache_pb

Send = Callable[[list[cache_pb.WholeVariant]], Awaitable[Sequence[cache_pb.PutVariantResult]]]
Pending = tuple[cache_pb.WholeVariant, "asyncio.Future[cache_pb.PutVariantResult]"]


class VariantBatches:
    """Sends variants in batches: each waits up to `delay` seconds for others, so the
    cache service does one call's work for several (a call costs it more CPU than
    storing a small variant does).

    A batch leaves at once when it reaches max_count variants or max_bytes bytes.
    """

    def __init__(self, send: Send, delay: float, max_count: int, max_bytes: int) -> None:
        self._send = send
        self._delay = delay
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._pending: list[Pending] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._closing = False

    async def put(self, variant: cache_pb.WholeVariant) -> cache_pb.PutVariantResult:
        """The variant's result once its batch is answered; the call's error if it failed."""
        size = len(variant.data)
        if self._pending and self._bytes + size > self._max_bytes:
            self.flush()
        future: asyncio.Future[cache_pb.PutVariantResult] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.append((variant, future))
        self._bytes += size
        full = len(self._pending) >= self._max_count or self._bytes >= self._max_bytes
        if full or self._closing:
            self.flush()
        elif self._timer is None:
            # In a context of its own: the batch belongs to no one caller's request.
            self._timer = asyncio.get_running_loop().call_later(
                self._delay, self.flush, context=contextvars.Context()
            )
        return await future

    def flush(self) -> None:
        """Send what is waiting now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending, self._bytes = self._pending, [], 0
        task = asyncio.get_running_loop().create_task(
            self._call(batch), context=contextvars.Context()
        )
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[Pending]) -> None:
        try:
            results = await self._send([variant for variant, _ in batch])
            answered = [r.variant.key for r in results if r.WhichOneof("outcome") == "variant"]
            sent = {variant.header.key for variant, _ in batch}
            if len(results) != len(batch) or not sent.issuperset(answered):
                raise RuntimeError(f"{len(results)} results do not answer {len(batch)} variants")
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def close(self) -> None:
        """From now on every variant leaves at once (shutting down)."""
        self._closing = True
        self.flush()

    @property
    def idle(self) -> bool:
        return not self._pending and not self._calls

    async def drain(self) -> None:
        """Send what is waiting and wait for every batch to be answered."""
        self.flush()
        await asyncio.gather(*self._calls, return_exceptions=True)
