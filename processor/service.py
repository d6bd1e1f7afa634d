"""The ProcessorService RPCs: stored images through the variant cache, and raw bytes."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from imageservice.v1 import cache_service_pb2 as cache_pb
from imageservice.v1 import cache_service_pb2_grpc as cache_grpc
from imageservice.v1 import image_pb2
from imageservice.v1 import processor_service_pb2 as pb
from imageservice.v1 import processor_service_pb2_grpc as pb_grpc

from common.errors import Reason, ServiceError, invalid_argument, remote_error
from common.grpcclient import call_metadata, upstream_error
from common.grpcserver import AFTER_CALL_SECONDS, after_call
from common.hotcache import HotCache
from common.ids import parse_image_id
from common.imaging import SOURCE_FORMATS, inspect
from common.imaging import Limits as SourceLimits
from common.lru import ByteLRU
from common.streams import receive
from processor import pipeline, spec
from processor.batches import VariantBatches
from processor.config import Settings
from processor.flights import Flights

log = logging.getLogger("processor")

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

# Calls to the cache service: a hit is a handful of milliseconds; originals may be large.
CACHE_DEADLINE_SECONDS = 30.0
SEEN_KEYS = 100_000
HOT_ENTRY_BYTES = 1024 * 1024
# A variant waits this long for others to be stored with it: under load a batch holds
# several, and the cache's CPU per variant stored falls by more than half. A caller
# never waits for it (storing follows the answer); the key stays in flight meanwhile.
STORE_BATCH_SECONDS = 0.05
STORE_BATCH_VARIANTS = 64  # the contract's bound on a PutVariantBatch
Held = tuple[image_pb2.VariantMetadata, bytes]
# While another processor renders a variant (it holds the lease), this one looks again
# at these intervals, doubling: a render takes tens of milliseconds to seconds.
LEASE_POLL_SECONDS = 0.02
MAX_LEASE_POLL_SECONDS = 0.25
MAX_LEASE_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class Answer:
    """What a request comes to: a variant and its bytes, or, when the cache holds it and
    it is too large for one message, its metadata alone (data None)."""

    variant: image_pb2.VariantMetadata
    data: bytes | None
    cache_hit: bool


class ProcessorService(pb_grpc.ProcessorServiceServicer):
    """Transforms images; stored ones are looked up in and saved to the variant cache."""

    def __init__(self, settings: Settings, cache: cache_grpc.CacheServiceAsyncStub) -> None:
        self.settings = settings
        self.cache = cache
        self.spec_limits = spec.Limits(
            settings.max_output_dimension, settings.max_blur_sigma, settings.auto_formats
        )
        self.render_limits = pipeline.Limits(
            settings.max_pixels,
            settings.max_frames,
            settings.max_output_dimension,
            settings.max_total_pixels,
        )
        self.source_limits = SourceLimits(
            frozenset(SOURCE_FORMATS),
            settings.max_pixels,
            settings.max_frames,
            settings.max_total_pixels,
        )
        self.workers = ThreadPoolExecutor(settings.workers, thread_name_prefix="render")
        self.flights: Flights[Held] = Flights()
        self.fetches: Flights[bytes] = Flights()
        # Variants that fit one message go to the cache a batch at a time.
        self.batches = VariantBatches(
            self._put_batch, STORE_BATCH_SECONDS, STORE_BATCH_VARIANTS, settings.chunk_bytes
        )
        self.originals: ByteLRU[str, bytes] = ByteLRU(settings.originals_cache_bytes, len)
        # Recent variants in memory, dropped when their image is deleted (see HotCache).
        self.hot: HotCache[Held] = HotCache(
            settings.hot_cache_bytes, lambda held: len(held[1]) + 256, HOT_ENTRY_BYTES
        )
        # Variant keys asked for lately (hits and misses), so early starts are only
        # tried for keys that are probably new.
        self.seen: ByteLRU[str, bool] = ByteLRU(SEEN_KEYS, lambda _: 1)
        # Admitted renders not yet finished (running or queued); past the bound, refuse.
        self.pending = 0
        self.capacity = settings.workers + settings.queue_size

    async def close(self) -> None:
        """Finish renders, fetches and stores still under way (after the server stopped)."""
        self.batches.close()
        # A store may start while another is drained (a flight settles as it ends); a
        # few passes catch those, without waiting forever on one that never settles.
        for _ in range(5):
            if not len(self.flights) and self.batches.idle:
                break
            await self.flights.drain()
            await self.batches.drain()
        await self.fetches.drain()
        self.workers.shutdown(wait=True, cancel_futures=True)
        await asyncio.sleep(AFTER_CALL_SECONDS * 2)  # the last renders' log lines

    async def Process(
        self, request: pb.ProcessRequest, context: Context
    ) -> AsyncIterator[pb.ProcessResponse]:
        generation = self.hot.generation
        answer = await self._answer(request, context)
        if answer.data is None:  # cached, too large for one message: the cache streams it
            variant, body = answer.variant, []
            async for response in self._stream_cached(variant.image_id, variant.key):
                body.append(response.chunk)
                yield response
            if body:
                if variant.byte_size <= HOT_ENTRY_BYTES:
                    self.hot.put(
                        variant.image_id, variant.key, (variant, b"".join(body)), generation
                    )
                return
            # Evicted between the lookup and the read: made afresh, like any miss.
            answer = await self._answer(request, context, ask_cache=False)
        assert answer.data is not None  # a render always comes with its bytes
        for response in self._responses(answer.variant, answer.data, answer.cache_hit):
            yield response

    async def ProcessWhole(
        self, request: pb.ProcessWholeRequest, context: Context
    ) -> pb.ProcessWholeResponse:
        answer = await self._answer(request, context)
        if answer.data is None or len(answer.data) > self.settings.chunk_bytes:
            return pb.ProcessWholeResponse(too_large=answer.variant)
        whole = pb.ProcessedVariant(
            variant=answer.variant, data=answer.data, cache_hit=answer.cache_hit
        )
        return pb.ProcessWholeResponse(whole=whole)

    async def _answer(
        self,
        request: pb.ProcessRequest | pb.ProcessWholeRequest,
        context: Context,
        ask_cache: bool = True,
    ) -> Answer:
        """The variant request asks for: held, cached, or made (once, however many ask)."""
        try:
            image_id = parse_image_id(request.image_id)
        except ValueError:
            raise invalid_argument("image_id", "not a valid image id") from None
        wanted = spec.parse(request.operations, request.output, self.spec_limits)
        key = wanted.key(image_id)
        generation = self.hot.generation
        held = self.hot.get(image_id, key)
        if held is not None:
            return Answer(held[0], held[1], cache_hit=True)
        flight: asyncio.Future[Held] | None = None
        missed = not ask_cache  # the cache lacks the variant (so the image exists): store it

        def join(on_start: Callable[[], None] | None = None) -> tuple[asyncio.Future[Held], bool]:
            joined, started = self._flight(image_id, key, wanted, on_start)
            if started:
                # The call that starts a render stores what it makes, once the call has
                # ended, however it ends: the caller never waits for the store, and a
                # caller that hangs up after the cache said "miss" still gets its render
                # stored. (Not after a failed lookup: the image may be gone.)
                def settle() -> None:
                    store = functools.partial(self._store, image_id, key) if missed else None
                    self.flights.settle(key, joined, store)

                after_call(context, settle)
            elif not ask_cache:
                # The cache lost the variant after saying it held it, and the render
                # joined was started before that (by this call, early): its starter
                # stores nothing, so this call does.
                store = functools.partial(self._store, image_id, key)
                after_call(context, lambda: self.flights.settle(key, joined, store))
            return joined, started

        if ask_cache and self._worth_starting_early(image_id, key):
            # Never seen this key, the original is at hand and a worker is idle: the
            # render starts now, while the cache is asked, so a miss does not wait.
            loop = asyncio.get_running_loop()
            running = loop.create_future()

            def on_start() -> None:  # on the worker
                loop.call_soon_threadsafe(_resolve, running)

            flight, started = join(on_start)
            if started:
                # The cache is asked once the render runs: setting up the call holds
                # the GIL the worker needs to start, which delayed the render ~0.25 ms.
                await asyncio.wait((running, flight), return_when=asyncio.FIRST_COMPLETED)
        self.seen.put(key, True)
        if ask_cache:
            lookup = await self._lookup_or_wait(image_id, key, context.time_remaining())
            outcome = lookup.WhichOneof("outcome")
            if outcome == "found":
                found = lookup.found
                if found.variant.byte_size <= HOT_ENTRY_BYTES:
                    self.hot.put(image_id, key, (found.variant, found.data), generation)
                return Answer(found.variant, found.data, cache_hit=True)
            if outcome == "too_large":
                return Answer(lookup.too_large, None, cache_hit=True)
            missed = True
        if flight is None:
            flight, _ = join()
        made, data = await self._wait(flight, context.time_remaining(), "rendering")
        self.hot.put(image_id, key, (made, data), generation)
        return Answer(made, data, cache_hit=False)

    async def _lookup_or_wait(
        self, image_id: str, key: str, time_remaining: float | None
    ) -> cache_pb.LookupVariantResponse:
        """The cache's answer for key. A miss whose render another processor holds the
        lease for is looked up again until it is stored or the lease is this one's, for
        at most half the call's time: then the miss is answered and this processor
        renders too, since a render made twice beats a caller's deadline passing (the
        other may have died, or failed, holding the lease)."""
        patience = MAX_LEASE_WAIT_SECONDS if time_remaining is None else time_remaining / 2
        give_up = time.monotonic() + min(patience, MAX_LEASE_WAIT_SECONDS)
        pause = LEASE_POLL_SECONDS
        while True:
            # A render of the key here already (this processor's own callers share it)
            # needs no lease: it is ours to store.
            claim = key not in self.flights
            lookup = await self._lookup(image_id, key, claim)
            waiting = claim and lookup.WhichOneof("outcome") == "miss" and not lookup.miss.claimed
            if not waiting or key in self.flights or time.monotonic() + pause > give_up:
                return lookup
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_LEASE_POLL_SECONDS)

    async def _lookup(
        self, image_id: str, key: str, claim: bool = False
    ) -> cache_pb.LookupVariantResponse:
        """The cache's answer for key: found (small), too large for one message, or miss
        (claiming the lease to render it, if asked)."""
        try:
            return await self.cache.LookupVariant(
                cache_pb.LookupVariantRequest(image_id=image_id, key=key, claim=claim),
                timeout=CACHE_DEADLINE_SECONDS,
                metadata=call_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise self._cache_error(image_id, exc) from None

    def _cache_error(self, image_id: str, exc: grpc.aio.AioRpcError) -> ServiceError:
        if remote_error(exc).reason == Reason.IMAGE_NOT_FOUND:
            self.originals.pop(image_id)
        return upstream_error(exc, "cache")

    async def _stream_cached(self, image_id: str, key: str) -> AsyncIterator[pb.ProcessResponse]:
        """A cached variant too large for one message, chunk by chunk as the cache sends
        it; nothing if it has gone meanwhile."""
        variant: image_pb2.VariantMetadata | None = None
        first = True
        messages = self.cache.GetVariant(
            cache_pb.GetVariantRequest(image_id=image_id, key=key),
            timeout=CACHE_DEADLINE_SECONDS,
            metadata=call_metadata(),
        )
        try:
            async for message in messages:
                kind = message.WhichOneof("payload")
                if kind == "miss":
                    return
                if kind == "variant":
                    variant = message.variant  # sent with the first chunk
                    continue
                if variant is None:
                    raise ServiceError(Reason.INTERNAL, "the cache service sent no variant")
                yield pb.ProcessResponse(
                    variant=variant if first else None, chunk=message.chunk, cache_hit=first
                )
                first = False
        except grpc.aio.AioRpcError as exc:
            raise self._cache_error(image_id, exc) from None

    def _responses(
        self, variant: image_pb2.VariantMetadata, data: bytes, cache_hit: bool
    ) -> list[pb.ProcessResponse]:
        """The variant with its first chunk in one message, then the rest: a small
        result is a single message."""
        chunks = self._chunks(data) or [b""]
        first = pb.ProcessResponse(variant=variant, chunk=chunks[0], cache_hit=cache_hit)
        return [first, *(pb.ProcessResponse(chunk=chunk) for chunk in chunks[1:])]

    def _worth_starting_early(self, image_id: str, key: str) -> bool:
        return (
            key not in self.seen
            and image_id in self.originals
            and self.pending < self.settings.workers
        )

    def _flight(
        self,
        image_id: str,
        key: str,
        wanted: spec.Spec,
        on_start: Callable[[], None] | None = None,
    ) -> tuple[asyncio.Future[Held], bool]:
        """(the render of key, whether this call started it): joined if one is running.

        Shared by every caller of the key, so it is bounded by the processor's own
        limit, not by whichever caller came first; each caller applies its own deadline.
        """
        return self.flights.join(key, lambda: self._start_render(image_id, key, wanted, on_start))

    def _start_render(
        self,
        image_id: str,
        key: str,
        wanted: spec.Spec,
        on_start: Callable[[], None] | None,
    ) -> asyncio.Future[Held]:
        """The render of key; on_start is called on its worker as it starts (after the
        fetches, when a watermark is drawn: its image is fetched as an original is)."""
        # Originals never change under an id, and the image exists (a miss says so, or
        # a fetch will), so a copy held from an earlier miss is as good as a fetch.
        original = self.originals.get(image_id)
        if original is not None and not wanted.images():
            # Submitted to a worker here and now, not when a task first gets to run.
            return self._render(image_id, key, original, wanted, on_start)
        return asyncio.ensure_future(self._fetch_and_render(image_id, key, wanted, on_start))

    async def _fetch_and_render(
        self,
        image_id: str,
        key: str,
        wanted: spec.Spec,
        on_start: Callable[[], None] | None = None,
    ) -> Held:
        self._admit()  # before pulling up to 50 MB in, not only before rendering
        original = await self._original(image_id)
        images = await self._images(wanted)
        return await self._render(image_id, key, original, wanted, on_start, images)

    def _render(
        self,
        image_id: str,
        key: str,
        original: bytes,
        wanted: spec.Spec,
        on_start: Callable[[], None] | None,
        images: Mapping[str, bytes] | None = None,
    ) -> asyncio.Future[Held]:
        def work() -> Held:
            if on_start is not None:
                on_start()
            rendered = pipeline.render(io.BytesIO(original), wanted, self.render_limits, images)
            # The answer's metadata is made here, on the thread still warm from the
            # render, not by the loop once it wakes (see docs/performance.md).
            return _variant(image_id, key, rendered), rendered.data

        return self._submit(work, key)

    async def _original(self, image_id: str) -> bytes:
        """The original's bytes: held, or fetched once however many renders want them."""
        held = self.originals.get(image_id)
        if held is not None:
            return held
        fetch, started = self.fetches.join(
            image_id, lambda: asyncio.ensure_future(self._fetch(image_id))
        )
        if started:
            self.fetches.settle(image_id, fetch, None)
        original = await asyncio.shield(fetch)
        self.originals.put(image_id, original)
        return original

    async def _images(self, wanted: spec.Spec) -> dict[str, bytes]:
        """The other stored images wanted's steps draw (a watermark), fetched as
        originals are; a missing one is IMAGE_NOT_FOUND naming the field that names it."""
        images: dict[str, bytes] = {}
        for field, image_id in wanted.images().items():
            try:
                images[image_id] = await self._original(image_id)
            except ServiceError as exc:
                if exc.reason != Reason.IMAGE_NOT_FOUND:
                    raise
                raise ServiceError(exc.reason, "no such image", {"field": field}) from None
        return images

    async def _fetch(self, image_id: str) -> bytes:
        body = bytearray()
        try:
            async for message in self.cache.GetImage(
                cache_pb.GetImageRequest(id=image_id),
                timeout=CACHE_DEADLINE_SECONDS,
                metadata=call_metadata(),
            ):
                if message.WhichOneof("payload") == "chunk":
                    body += message.chunk
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc, "cache") from None
        return bytes(body)

    async def _store(self, image_id: str, key: str, made: Held) -> None:
        variant, data = made
        header = cache_pb.PutVariantHeader(
            image_id=image_id,
            key=key,
            media_type=variant.media_type,
            width=variant.width,
            height=variant.height,
        )

        async def requests() -> AsyncIterator[cache_pb.PutVariantRequest]:
            yield cache_pb.PutVariantRequest(header=header)
            for chunk in self._chunks(data):
                yield cache_pb.PutVariantRequest(chunk=chunk)

        try:
            if len(data) <= self.settings.chunk_bytes:
                whole = cache_pb.WholeVariant(header=header, data=data)
                result = await self.batches.put(whole)
                if result.WhichOneof("outcome") == "refused":
                    refusal = result.refused
                    log.warning("variant not stored", extra={"key": key, "code": refusal.reason})
            else:
                await self.cache.PutVariant(
                    requests(), timeout=CACHE_DEADLINE_SECONDS, metadata=call_metadata()
                )
        except grpc.aio.AioRpcError as exc:
            # The caller has its bytes already; a variant not cached is only a later miss.
            log.warning("variant not stored", extra={"key": key, "code": exc.code().name})
        except Exception as exc:  # a batch answered wrongly, say: still only a miss later
            log.warning("variant not stored", extra={"key": key, "err": repr(exc)})

    async def _put_batch(
        self, variants: list[cache_pb.WholeVariant]
    ) -> Sequence[cache_pb.PutVariantResult]:
        response = await self.cache.PutVariantBatch(
            cache_pb.PutVariantBatchRequest(variants=variants),
            timeout=CACHE_DEADLINE_SECONDS,
            metadata=call_metadata(),
        )
        return response.results

    async def ProcessBytes(
        self, request_iterator: AsyncIterator[pb.ProcessBytesRequest], context: Context
    ) -> AsyncIterator[pb.ProcessBytesResponse]:
        wanted, data = await receive(
            request_iterator,
            "spec",
            self.settings.max_upload_bytes,
            "image",
            lambda head: spec.parse(head.operations, head.output, self.spec_limits),
        )
        images = await self._images(wanted)

        def work() -> Held:
            # Bytes from a caller were never validated: decode them fully first.
            inspect(io.BytesIO(data), self.source_limits)
            rendered = pipeline.render(io.BytesIO(data), wanted, self.render_limits, images)
            return _variant("", "", rendered), rendered.data

        variant, output = await self._wait(
            self._submit(work, "bytes"), context.time_remaining(), "processing"
        )
        chunks = self._chunks(output)
        yield pb.ProcessBytesResponse(variant=variant, chunk=chunks[0])
        for chunk in chunks[1:]:
            yield pb.ProcessBytesResponse(chunk=chunk)

    def _admit(self) -> None:
        if self.pending >= self.capacity:
            raise ServiceError(
                Reason.OVERLOADED,
                "the processor is at capacity; retry shortly",
                {"retry_after_seconds": "1"},
            )

    def _submit(self, work: Callable[[], T], label: str) -> asyncio.Future[T]:
        """Start CPU work on the pool, or refuse at once when the queue is full."""
        self._admit()
        self.pending += 1
        start = time.perf_counter()
        took: list[float] = []

        def timed() -> T:
            result = work()
            took.append(time.perf_counter() - start)
            return result

        future = asyncio.get_running_loop().run_in_executor(self.workers, timed)

        def finished(done: asyncio.Future[T]) -> None:
            # Counted down when the thread really stops, not when a caller stops waiting.
            self.pending -= 1
            if took and not done.cancelled() and done.exception() is None:
                # Logged shortly after, not before the answer that waits on this work:
                # a log line costs 0.1-0.3 ms on a core just woken (docs/performance.md).
                line = functools.partial(
                    log.info, "processed", extra={"key": label, "ms": round(took[0] * 1000, 2)}
                )
                asyncio.get_running_loop().call_later(AFTER_CALL_SECONDS, line)

        future.add_done_callback(finished)
        return future

    async def _wait(self, work: asyncio.Future[T], deadline: float | None, doing: str) -> T:
        """Work's result, within the caller's deadline and the processing time limit."""
        timeout = self.settings.processing_timeout_seconds
        if deadline is not None:
            timeout = min(timeout, deadline)
        try:
            return await asyncio.wait_for(asyncio.shield(work), timeout)
        except TimeoutError:
            raise ServiceError(
                Reason.DEADLINE_EXCEEDED, f"{doing} took longer than the {timeout:.1f}s allowed"
            ) from None

    def _chunks(self, data: bytes) -> list[bytes]:
        step = self.settings.chunk_bytes
        return [data[i : i + step] for i in range(0, len(data), step)]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _variant(image_id: str, key: str, rendered: pipeline.Rendered) -> image_pb2.VariantMetadata:
    return image_pb2.VariantMetadata(
        image_id=image_id,
        key=key,
        media_type=rendered.media_type,
        width=rendered.width,
        height=rendered.height,
        byte_size=len(rendered.data),
        sha256=hashlib.sha256(rendered.data).hexdigest(),
    )
