"""The way from a request for a stored image's variant to its answer, in order.

`Resolver.resolve` takes these steps, each a method below, and stops at the first that
answers:

1. `from_memory`: the variant held in this processor's hot cache (dropped the moment
   its image is deleted).
2. `from_cache`: the cache service's `GetVariant`, which on a miss also claims the
   render lease; while another processor holds the lease, it looks again until that
   one has stored the variant, for at most half the caller's time. A miss also says the
   image exists. A render of the key already running here needs no lease.
3. `rendered`: the render, once however many callers want it (single-flight), each
   waiting by its own deadline. A render is started only after the cache has said
   "miss", so it is always stored: its flight queues the store (`processor.stores`)
   and keeps the key until the store is done, whether or not any caller still waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from imageservice.v1 import cache_service_pb2 as cache_pb
from imageservice.v1 import cache_service_pb2_grpc as cache_grpc
from imageservice.v1 import image_pb2

from common.errors import Reason, ServiceError, remote_error
from common.grpcclient import call_metadata, upstream_error
from common.hotcache import HotCache
from common.lru import ByteLRU
from processor import pipeline, spec
from processor.flights import Flights
from processor.metrics import ProcessorMetrics
from processor.stores import Stores
from processor.workers import Workers

# Calls to the cache service: a hit is a handful of milliseconds; originals may be large.
CACHE_DEADLINE_SECONDS = 30.0
HOT_ENTRY_BYTES = 1024 * 1024
# While another processor renders a variant (it holds the lease), this one looks again
# at these intervals, doubling: a render takes tens of milliseconds to seconds.
LEASE_POLL_SECONDS = 0.02
MAX_LEASE_POLL_SECONDS = 0.25
MAX_LEASE_WAIT_SECONDS = 10.0

Held = tuple[image_pb2.VariantMetadata, bytes]


@dataclass(frozen=True)
class Wanted:
    """A parsed request: which image, made how, under which variant key."""

    image_id: str
    spec: spec.Spec
    key: str


@dataclass(frozen=True)
class Rest:
    """The chunks of a cached variant after the first, as the cache sends them; or,
    cancelled, none (the call to the cache ends)."""

    chunks: AsyncIterator[bytes]
    cancel: Callable[[], object]


@dataclass(frozen=True)
class Answer:
    """A variant and its bytes: all of them, or, for a cached variant too large for one
    message, the first chunk, the rest in `more` as the cache sends them."""

    variant: image_pb2.VariantMetadata
    data: bytes
    cache_hit: bool
    more: Rest | None = None


class Resolver:
    """Answers variant requests from memory, the cache service, or a render."""

    def __init__(
        self,
        cache: cache_grpc.CacheServiceAsyncStub,
        workers: Workers,
        stores: Stores,
        render_limits: pipeline.RenderLimits,
        hot_cache_bytes: int,
        originals_cache_bytes: int,
        metrics: ProcessorMetrics,
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.workers = workers
        self.stores = stores
        self.render_limits = render_limits
        # Recent variants in memory, dropped when their image is deleted (see HotCache).
        self.hot: HotCache[Held] = HotCache(
            hot_cache_bytes, lambda held: len(held[1]) + 256, HOT_ENTRY_BYTES
        )
        # Originals never change under an id: one held from an earlier miss is as good
        # as a fetch (a render starts only after the cache said the image exists).
        self.originals: ByteLRU[str, bytes] = ByteLRU(originals_cache_bytes, len)
        self.renders: Flights[Held] = Flights()
        self.fetches: Flights[bytes] = Flights()

    async def resolve(self, wanted: Wanted, time_remaining: float | None) -> Answer:
        """The variant wanted: held, cached, or made (once, however many ask), within
        the caller's time_remaining (seconds; None: no deadline of its own)."""
        deadline = None if time_remaining is None else time.monotonic() + time_remaining
        # Read before any step: an answer fetched before the hot cache was last emptied
        # may belong to an image deleted meanwhile, and is then not kept.
        generation = self.hot.generation
        answer = self.from_memory(wanted)
        if answer is None:
            answer = await self.from_cache(wanted, deadline, generation)
        if answer is None:
            answer = await self.rendered(wanted, deadline, generation)
        return answer

    def from_memory(self, wanted: Wanted) -> Answer | None:
        held = self.hot.get(wanted.image_id, wanted.key)
        if held is None:
            self.metrics.hot_misses.inc()
            return None
        self.metrics.hot_hits.inc()
        return Answer(held[0], held[1], cache_hit=True)

    async def from_cache(
        self, wanted: Wanted, deadline: float | None, generation: int
    ) -> Answer | None:
        """The cache service's variant, or None for a miss (the image exists). On a miss
        whose render another processor holds the lease for, look again until it is
        stored or the lease is this one's, for at most half the caller's time: then
        this processor renders too, since a render made twice beats a caller's deadline
        passing (the other may have died, or failed, holding the lease)."""
        now = time.monotonic()
        patience = MAX_LEASE_WAIT_SECONDS if deadline is None else (deadline - now) / 2
        give_up = now + min(patience, MAX_LEASE_WAIT_SECONDS)
        pause = LEASE_POLL_SECONDS
        while True:
            # A render of the key here already (its callers share it) needs no lease.
            claim = wanted.key not in self.renders
            answer, claimed = await self._get_variant(wanted, claim, generation)
            if answer is not None:
                return answer
            waiting = claim and not claimed
            if not waiting or wanted.key in self.renders or time.monotonic() + pause > give_up:
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_LEASE_POLL_SECONDS)

    async def rendered(self, wanted: Wanted, deadline: float | None, generation: int) -> Answer:
        """The render of the key: joined if one runs here, else started, and stored."""
        flight = self.renders.get(wanted.key)
        if flight is None:
            self.workers.admit()  # before pulling up to 50 MB of original in
            flight = self.renders.start(
                wanted.key, lambda: self._make(wanted), lambda made: self._store(wanted, made)
            )
        else:
            self.metrics.flight_joins.inc()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        made, data = await self.workers.wait(flight, remaining, "rendering")
        self.hot.put(wanted.image_id, wanted.key, (made, data), generation)
        return Answer(made, data, cache_hit=False)

    async def _get_variant(
        self, wanted: Wanted, claim: bool, generation: int
    ) -> tuple[Answer | None, bool]:
        """(the cached variant, or None on a miss; whether the miss claimed the lease)."""
        call = self.cache.GetVariant(
            cache_pb.GetVariantRequest(image_id=wanted.image_id, key=wanted.key, claim=claim),
            timeout=CACHE_DEADLINE_SECONDS,
            metadata=call_metadata(),
        )
        messages = aiter(call)
        try:
            first = await anext(messages)
            if first.WhichOneof("payload") == "miss":
                await _end(messages)
                return None, first.miss.claimed
            variant = first.variant
            data = (await anext(messages)).chunk
            whole = len(data) >= variant.byte_size  # in one message, as most variants are
            if whole:
                await _end(messages)
        except grpc.aio.AioRpcError as exc:
            raise self._cache_error(wanted.image_id, exc) from None
        except StopAsyncIteration:
            raise ServiceError(Reason.INTERNAL, "the cache service sent no variant") from None
        if whole:
            self.hot.put(wanted.image_id, wanted.key, (variant, data), generation)
            return Answer(variant, data, cache_hit=True), False
        more = Rest(self._rest(wanted, variant, data, messages, generation), call.cancel)
        return Answer(variant, data, cache_hit=True, more=more), False

    async def _rest(
        self,
        wanted: Wanted,
        variant: image_pb2.VariantMetadata,
        first: bytes,
        messages: AsyncIterator[cache_pb.GetVariantResponse],
        generation: int,
    ) -> AsyncIterator[bytes]:
        """The chunks after the first, as the cache sends them; kept in memory once all
        have come, if small enough."""
        body = [first] if variant.byte_size <= HOT_ENTRY_BYTES else None
        try:
            async for message in messages:
                if body is not None:
                    body.append(message.chunk)
                yield message.chunk
        except grpc.aio.AioRpcError as exc:
            raise self._cache_error(wanted.image_id, exc) from None
        if body is not None:
            self.hot.put(wanted.image_id, wanted.key, (variant, b"".join(body)), generation)

    def _cache_error(self, image_id: str, exc: grpc.aio.AioRpcError) -> ServiceError:
        if remote_error(exc).reason == Reason.IMAGE_NOT_FOUND:
            self.originals.pop(image_id)
        return upstream_error(exc, "cache")

    async def _make(self, wanted: Wanted) -> Held:
        """The original and any other image the render draws (a watermark), each held or
        fetched once for every render that wants it, rendered on a worker thread."""
        original = await self.original(wanted.image_id)
        images = await self.images(wanted.spec)

        def work() -> Held:
            rendered = timed_render(
                self.metrics, io.BytesIO(original), wanted.spec, self.render_limits, images
            )
            # The answer's metadata is made on the thread, not on the event loop.
            return variant_metadata(wanted.image_id, wanted.key, rendered), rendered.data

        return await self.workers.submit(work, wanted.key)

    async def original(self, image_id: str) -> bytes:
        """A stored image's bytes: held, or fetched once however many renders want them."""
        held = self.originals.get(image_id)
        if held is not None:
            return held
        fetch = self.fetches.get(image_id)
        if fetch is None:
            fetch = self.fetches.start(image_id, lambda: self._fetch(image_id))
        return await asyncio.shield(fetch)

    async def images(self, wanted: spec.Spec) -> dict[str, bytes]:
        """The other stored images wanted's steps draw (a watermark), by id, fetched as
        originals are; a missing one is IMAGE_NOT_FOUND naming the field that names it."""
        images: dict[str, bytes] = {}
        for name, image_id in wanted.images().items():
            try:
                images[image_id] = await self.original(image_id)
            except ServiceError as exc:
                if exc.reason != Reason.IMAGE_NOT_FOUND:
                    raise
                raise ServiceError(exc.reason, "no such image", {"field": name}) from None
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
        original = bytes(body)
        self.originals.put(image_id, original)
        return original

    async def _store(self, wanted: Wanted, made: Held) -> None:
        variant, data = made
        header = cache_pb.PutVariantHeader(
            image_id=wanted.image_id,
            key=wanted.key,
            media_type=variant.media_type,
            width=variant.width,
            height=variant.height,
        )
        await self.stores.put(header, data)

    async def close(self) -> None:
        """Finish the renders and fetches under way, and their stores (at shutdown)."""
        await self.renders.drain()
        await self.fetches.drain()
        await self.stores.close()


async def _end(messages: AsyncIterator[cache_pb.GetVariantResponse]) -> None:
    """Read a stream to its end (its status), expecting nothing more."""
    async for _ in messages:
        raise ServiceError(Reason.INTERNAL, "the cache service sent more than expected")


def timed_render(
    metrics: ProcessorMetrics,
    source: io.BytesIO,
    wanted: spec.Spec,
    limits: pipeline.RenderLimits,
    images: dict[str, bytes],
) -> pipeline.Rendered:
    """pipeline.render, its time and each operation's recorded (on the worker thread)."""
    steps: dict[str, float] = {}
    start = time.perf_counter()
    rendered = pipeline.render(source, wanted, limits, images, steps)
    metrics.rendered(rendered.media_type, time.perf_counter() - start, steps)
    return rendered


def variant_metadata(
    image_id: str, key: str, rendered: pipeline.Rendered
) -> image_pb2.VariantMetadata:
    return image_pb2.VariantMetadata(
        image_id=image_id,
        key=key,
        media_type=rendered.media_type,
        width=rendered.width,
        height=rendered.height,
        byte_size=len(rendered.data),
        sha256=hashlib.sha256(rendered.data).hexdigest(),
    )
