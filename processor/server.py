"""Wires the processor: cache channel, worker threads, servicer, health, reflection, signals."""

from __future__ import annotations

import asyncio
import contextlib

from imageservice.v1 import (
    cache_service_pb2,
    cache_service_pb2_grpc,
    processor_service_pb2,
    processor_service_pb2_grpc,
)

from common import jsonlog, metrics, tracing
from common.grpcclient import open_channel, target
from common.grpcserver import create_server, enable_reflection, listen, serve_until_signalled
from common.imaging import configure_pillow
from processor.config import Settings
from processor.metrics import ProcessorMetrics
from processor.service import ProcessorService

SERVICE_NAME = processor_service_pb2.DESCRIPTOR.services_by_name["ProcessorService"].full_name
CACHE_SERVICE = cache_service_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name


async def serve(settings: Settings) -> None:
    """Run the processor until SIGTERM or SIGINT."""
    jsonlog.capture_native_output()
    jsonlog.configure("processor", settings.log_level)
    tracing.configure("processor")  # before the server and channels, which it instruments
    series = ProcessorMetrics()
    server, health = create_server(metrics=series)
    port = await listen(server, settings.listen, "IMAGESVC_PROCESSOR_LISTEN", settings.tls)
    exposed = await metrics.serve_beside(
        server,
        series.registry,
        settings.listen,
        settings.metrics_port,
        "IMAGESVC_PROCESSOR_METRICS_PORT",
    )
    channel = open_channel(
        target(settings.cache_addresses),
        CACHE_SERVICE,
        idempotent=["GetImage", "StatImage", "GetVariant", "ListImages"],
        tls=settings.tls,
    )
    service = ProcessorService(settings, cache_service_pb2_grpc.CacheServiceStub(channel), series)
    configure_pillow(service.source_limits)  # before the first render starts a worker
    processor_service_pb2_grpc.add_ProcessorServiceServicer_to_server(service, server)
    enable_reflection(server, [SERVICE_NAME])
    # A deleted image's original goes from memory too, not only its variants.
    watcher = asyncio.create_task(service.hot.watch(service.cache, service.originals.pop))
    await server.start()
    jsonlog.lifecycle.info(
        "listening",
        extra={
            "address": settings.listen,
            "port": port,
            "workers": settings.workers,
            "metrics_port": exposed and exposed.server_port,
        },
    )
    try:
        await serve_until_signalled(server, health, [SERVICE_NAME], settings.shutdown_grace_seconds)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await service.close()
        await channel.close(None)
        metrics.stop(exposed)
