"""Variants on their way to the cache service: a bounded queue and one worker task.

A render is answered first and stored after: its flight hands the variant to this queue
and waits for the store to finish before it forgets the key, so a caller arriving in
that window shares the result instead of rendering it again. Stores never fail a
caller: a variant not stored is only a later miss, and is logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from imageservice.v1 import cache_service_pb2 as cache_pb
from opentelemetry import context as otel

from common.jsonlog import request_id

log = logging.getLogger("processor")


@dataclass
class Store:
    """One variant to store, with the request id and the trace context of the call that
    made it: its PutVariant is a child of that call's span (drawn past its end, since
    the answer went first), so a miss's trace shows its store too."""

    header: cache_pb.PutVariantHeader
    data: bytes
    request_id: str
    trace: otel.Context
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


# Sends one variant's PutVariant stream; raises what the call raised.
Send = Callable[[AsyncIterator[cache_pb.PutVariantRequest]], Awaitable[object]]


class Stores:
    """Stores variants in the background, in the order they were made.

    `put` queues a variant and returns at once a future that is done once the variant
    is stored (or given up on); past `capacity` waiting variants, a new one is dropped
    with a warning rather than held. `close` stops taking new ones and waits for the
    queue to empty.
    """

    def __init__(self, send: Send, capacity: int, chunk_bytes: int) -> None:
        self._send = send
        self._chunk_bytes = chunk_bytes
        self._queue: asyncio.Queue[Store] = asyncio.Queue(capacity)
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def put(self, header: cache_pb.PutVariantHeader, data: bytes) -> asyncio.Future[None]:
        """Queue a variant; the future is done once it is stored or given up on."""
        store = Store(header, data, request_id.get(), otel.get_current())
        if self._closed:
            self._give_up(store, "the processor is stopping")
            return store.done
        try:
            self._queue.put_nowait(store)
        except asyncio.QueueFull:
            self._give_up(store, "too many variants waiting to be stored")
            return store.done
        if self._worker is None:
            # In a context of its own: the worker belongs to no one caller's request.
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), context=contextvars.Context()
            )
        return store.done

    async def close(self) -> None:
        """Store what is queued, then stop the worker (at shutdown)."""
        self._closed = True
        if self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            store = await self._queue.get()
            token = otel.attach(store.trace)
            try:
                request_id.set(store.request_id)  # the store is traced to its request
                await self._send(self._messages(store))
            except Exception as exc:
                # The caller has its bytes already; a variant not cached is a later miss.
                self._give_up(store, _why(exc))
            finally:
                otel.detach(token)
                if not store.done.done():
                    store.done.set_result(None)
                self._queue.task_done()

    async def _messages(self, store: Store) -> AsyncIterator[cache_pb.PutVariantRequest]:
        yield cache_pb.PutVariantRequest(header=store.header)
        step = self._chunk_bytes
        for start in range(0, len(store.data), step):
            yield cache_pb.PutVariantRequest(chunk=store.data[start : start + step])

    def _give_up(self, store: Store, why: str) -> None:
        log.warning("variant not stored", extra={"key": store.header.key, "err": why})
        if not store.done.done():
            store.done.set_result(None)


def _why(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        return str(code().name)
    return repr(exc)
