"""Wires the cache service: backends from config, the servicer, health, reflection, signals."""

from __future__ import annotations

import asyncio

from imageservice.v1 import cache_service_pb2, cache_service_pb2_grpc

from cache.backends import open_blob_store, open_metadata_store, open_variant_cache
from cache.blobs import BlobStore
from cache.config import Settings
from cache.metadata import MetadataStore
from cache.service import CacheService
from cache.variants import VariantCache
from common import jsonlog
from common.grpcserver import create_server, enable_reflection, listen, serve_until_signalled

SERVICE_NAME = cache_service_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name


async def reconcile(
    blobs: BlobStore, metadata: MetadataStore, variants: VariantCache
) -> tuple[int, int]:
    """Drop what a crash left: staged files, blobs whose metadata never committed, and
    variants of images whose delete did not finish."""
    staged = await asyncio.to_thread(blobs.recover)
    keys = await asyncio.to_thread(lambda: list(blobs.keys()))
    orphans = await metadata.missing(keys)
    for key in orphans:
        await asyncio.to_thread(blobs.delete, key)
    gone = await metadata.missing(variants.held_images())
    for image_id in gone:
        await variants.purge(image_id)
    return staged, len(orphans) + len(gone)


async def serve(settings: Settings) -> None:
    """Run the cache service until SIGTERM or SIGINT."""
    jsonlog.capture_native_output()
    jsonlog.configure("cache", settings.log_level)
    server, health = create_server(settings.chunk_bytes)
    # The port first: a cache that cannot serve must not recover someone else's data.
    port = await listen(server, settings.listen, "IMAGESVC_CACHE_LISTEN")
    blobs = open_blob_store(settings.blob_url)
    metadata = open_metadata_store(settings.metadata_url)
    variants = await asyncio.to_thread(open_variant_cache, settings)
    staged, orphans = await reconcile(blobs, metadata, variants)
    if staged or orphans:
        jsonlog.lifecycle.info(
            "recovered after a crash", extra={"staged": staged, "orphans": orphans}
        )

    service = CacheService(settings, blobs, metadata, variants)
    cache_service_pb2_grpc.add_CacheServiceServicer_to_server(service, server)
    enable_reflection(server, [SERVICE_NAME])
    await server.start()
    jsonlog.lifecycle.info("listening", extra={"address": settings.listen, "port": port})
    try:
        await serve_until_signalled(server, health, [SERVICE_NAME], settings.shutdown_grace_seconds)
    finally:
        service.close()
        await asyncio.to_thread(variants.close)
        await metadata.close()
