"""The ProcessorService RPCs: stored images through the variant cache, and raw bytes."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import grpc
from imageservice.v1 import cache_service_pb2 as cache_pb
from imageservice.v1 import cache_service_pb2_grpc as cache_grpc
from imageservice.v1 import processor_service_pb2 as pb
from imageservice.v1 import processor_service_pb2_grpc as pb_grpc

from common.errors import invalid_argument
from common.grpcclient import call_metadata
from common.ids import parse_image_id
from common.imaging import SOURCE_FORMATS, SourceLimits, inspect
from common.streams import receive
from processor import pipeline, spec
from processor.config import Settings
from processor.metrics import ProcessorMetrics
from processor.resolver import (
    CACHE_DEADLINE_SECONDS,
    Held,
    Resolver,
    Wanted,
    timed_render,
    variant_metadata,
)
from processor.stores import Stores
from processor.workers import Workers

Context = grpc.aio.ServicerContext[Any, Any]
# Variants waiting to be stored, at most; past that a new one is dropped (a later miss).
STORE_QUEUE = 256


class ProcessorService(pb_grpc.ProcessorServiceServicer):
    """Transforms images; stored ones are looked up in and saved to the variant cache."""

    def __init__(
        self,
        settings: Settings,
        cache: cache_grpc.CacheServiceAsyncStub,
        metrics: ProcessorMetrics,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.spec_limits = spec.RequestLimits(
            settings.max_output_dimension, settings.max_blur_sigma, settings.auto_formats
        )
        self.render_limits = pipeline.RenderLimits(
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
        self.workers = Workers(
            settings.workers,
            settings.queue_size,
            settings.processing_timeout_seconds,
            settings.max_abandoned,
            metrics,
        )
        self.resolver = Resolver(
            cache,
            self.workers,
            Stores(self._put_variant, STORE_QUEUE, settings.chunk_bytes),
            self.render_limits,
            settings.hot_cache_bytes,
            settings.originals_cache_bytes,
            metrics,
        )
        # Watched by the server: a deleted image's variants and original leave memory.
        self.hot = self.resolver.hot
        self.originals = self.resolver.originals

    async def close(self) -> None:
        """Finish renders, fetches and stores still under way (after the server stopped)."""
        await self.resolver.close()
        self.workers.shutdown()

    async def Process(
        self, request: pb.ProcessRequest, context: Context
    ) -> AsyncIterator[pb.ProcessResponse]:
        answer = await self.resolver.resolve(self._wanted(request), _patience(request, context))
        if answer.more is not None:  # cached, larger than one message: as the cache sends it
            try:
                yield pb.ProcessResponse(variant=answer.variant, chunk=answer.data, cache_hit=True)
                async for chunk in answer.more.chunks:
                    yield pb.ProcessResponse(chunk=chunk)
            finally:
                answer.more.cancel()  # a caller that hangs up ends the cache's call too
            return
        chunks = self._chunks(answer.data) or [b""]
        yield pb.ProcessResponse(
            variant=answer.variant, chunk=chunks[0], cache_hit=answer.cache_hit
        )
        for chunk in chunks[1:]:
            yield pb.ProcessResponse(chunk=chunk)

    async def ProcessBytes(
        self, request_iterator: AsyncIterator[pb.ProcessBytesRequest], context: Context
    ) -> AsyncIterator[pb.ProcessBytesResponse]:
        wanted, data = await receive(
            request_iterator,
            "spec",
            self.settings.max_upload_bytes,
            "image",
            lambda head: self._spec(head.transformation),
        )

        images = await self.resolver.images(wanted)

        def work() -> Held:
            # Bytes from a caller were never validated: decode them fully first.
            inspect(io.BytesIO(data), self.source_limits)
            rendered = timed_render(
                self.workers.metrics, io.BytesIO(data), wanted, self.render_limits, images
            )
            return variant_metadata("", "", rendered), rendered.data

        variant, output = await self.workers.wait(
            self.workers.submit(work, "bytes"), context.time_remaining(), "processing"
        )
        chunks = self._chunks(output)
        yield pb.ProcessBytesResponse(variant=variant, chunk=chunks[0])
        for chunk in chunks[1:]:
            yield pb.ProcessBytesResponse(chunk=chunk)

    def _wanted(self, request: pb.ProcessRequest) -> Wanted:
        try:
            image_id = parse_image_id(request.image_id)
        except ValueError:
            raise invalid_argument("image_id", "not a valid image id") from None
        wanted = self._spec(request.transformation)
        return Wanted(image_id, wanted, wanted.key(image_id))

    def _spec(self, transformation: pb.Transformation) -> spec.Spec:
        return spec.parse(transformation.operations, transformation.output, self.spec_limits)

    async def _put_variant(self, requests: AsyncIterator[cache_pb.PutVariantRequest]) -> object:
        return await self.cache.PutVariant(
            requests, timeout=CACHE_DEADLINE_SECONDS, metadata=call_metadata()
        )

    def _chunks(self, data: bytes) -> list[bytes]:
        step = self.settings.chunk_bytes
        return [data[i : i + step] for i in range(0, len(data), step)]


def _patience(request: pb.ProcessRequest, context: Context) -> float | None:
    """How long the caller waits for its first message, in seconds (None: no bound of
    its own): its render_timeout, else its deadline, whichever is shorter."""
    remaining = context.time_remaining()
    if not request.HasField("render_timeout"):
        return remaining
    timeout = request.render_timeout.ToTimedelta().total_seconds()
    return timeout if remaining is None else min(timeout, remaining)
