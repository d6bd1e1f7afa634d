"""Wires the cache service: backends from config, the servicer, health, reflection, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from imageservice.v1 import cache_service_pb2, cache_service_pb2_grpc

from cache.backends import open_blob_store, open_metadata_store, open_variant_cache
from cache.config import Settings
from cache.service import CacheService
from cache.storage import StorageUnavailable
from common import jsonlog
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
    server, health = create_server()
    # The port first: a cache that cannot serve must not recover someone else's data.
    port = await listen(server, settings.listen, "IMAGESVC_CACHE_LISTEN", settings.tls)
    blobs = open_blob_store(settings.blob_url, settings.data_dir / "staging")
    metadata = await open_metadata_store(settings.metadata_url)
    variants = await asyncio.to_thread(open_variant_cache, settings)
    service = CacheService(settings, blobs, metadata, variants)
    configure_pillow(service.limits)  # before the first upload starts a decoding thread
    # In the background: start-up never waits for recovery, whatever the data's size.
    tasks = [
        asyncio.create_task(service.follow_deletions()),
        asyncio.create_task(keep_recovering(service)),
    ]
    cache_service_pb2_grpc.add_CacheServiceServicer_to_server(service, server)
    enable_reflection(server, [SERVICE_NAME])
    await server.start()
    jsonlog.lifecycle.info("listening", extra={"address": settings.listen, "port": port})
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
