"""Wires the cache service: backends from config, the servicer, health, reflection, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

from imageservice.v1 import cache_service_pb2, cache_service_pb2_grpc

from cache.backends import open_blob_store, open_metadata_store, open_variant_cache
from cache.blobs import BlobStore
from cache.config import Settings
from cache.metadata import MetadataStore
from cache.metrics import CacheMetrics, Timed
from cache.service import CacheService
from cache.storage import StorageUnavailable
from cache.variants import VariantCache
from common import jsonlog, metrics, tracing
from common.grpcserver import create_server, enable_reflection, listen, serve_until_signalled
from common.imaging import configure_pillow

SERVICE_NAME = cache_service_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name
RECOVERY_INTERVAL_SECONDS = 60.0

log = logging.getLogger("cache")


async def keep_recovering(service: CacheService) -> None:
    """Finish crashed work now and every minute after, whichever replica it was."""
    while True:
        try:
            finished = await service.recover()
        except StorageUnavailable as exc:
            log.warning("recovery postponed", extra={"upstream": exc.engine, "err": exc.detail})
        except Exception:
            # Never silently: intents would pile up unseen. The next round tries again.
            log.exception("recovery failed")
        else:
            if finished:
                jsonlog.lifecycle.info("recovered after a crash", extra={"finished": finished})
        await asyncio.sleep(RECOVERY_INTERVAL_SECONDS)


async def serve(settings: Settings) -> None:
    """Run the cache service until SIGTERM or SIGINT."""
    jsonlog.capture_native_output()
    jsonlog.configure("cache", settings.log_level)
    tracing.configure("cache")  # before the server and channels, which it instruments
    series = CacheMetrics()
    server, health = create_server(metrics=series)
    # The ports first: a cache that cannot serve must not recover someone else's data.
    port = await listen(server, settings.listen, "IMAGESVC_CACHE_LISTEN", settings.tls)
    exposed = await metrics.serve_beside(
        server,
        series.registry,
        settings.listen,
        settings.metrics_port,
        "IMAGESVC_CACHE_METRICS_PORT",
    )
    blobs = open_blob_store(settings.blob_url, settings.data_dir / "staging")
    metadata = await open_metadata_store(settings.metadata_url)
    variants = await asyncio.to_thread(open_variant_cache, settings)
    series.watch_tiers(variants)
    service = CacheService(
        settings,
        cast(BlobStore, Timed(blobs, "blobs", series)),
        cast(MetadataStore, Timed(metadata, "metadata", series)),
        cast(VariantCache, Timed(variants, "variants", series)),
        series,
    )
    configure_pillow(service.limits)  # before the first upload starts a decoding thread
    # In the background: start-up never waits for recovery, whatever the data's size.
    tasks = [
        asyncio.create_task(service.follow_deletions()),
        asyncio.create_task(keep_recovering(service)),
    ]
    cache_service_pb2_grpc.add_CacheServiceServicer_to_server(service, server)
    enable_reflection(server, [SERVICE_NAME])
    await server.start()
    jsonlog.lifecycle.info(
        "listening",
        extra={
            "address": settings.listen,
            "port": port,
            "metrics_port": exposed and exposed.server_port,
        },
    )
    try:
        await serve_until_signalled(server, health, [SERVICE_NAME], settings.shutdown_grace_seconds)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        service.close()
        await variants.close()
        await metadata.close()
        await blobs.close()
        metrics.stop(exposed)
