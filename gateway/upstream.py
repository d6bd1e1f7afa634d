"""The gRPC channels to the cache and the processors, opened once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imageservice.v1 import (
    cache_service_pb2,
    cache_service_pb2_grpc,
    processor_service_pb2,
    processor_service_pb2_grpc,
)

from common.grpcclient import open_channel, target
from gateway.config import Settings

CACHE_SERVICE = cache_service_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name
PROCESSOR_SERVICE = processor_service_pb2.DESCRIPTOR.services_by_name["ProcessorService"].full_name


@dataclass
class Upstream:
    """Stubs for every upstream; one channel each, shared by all requests."""

    cache_channel: grpc.aio.Channel
    processor_channel: grpc.aio.Channel
    cache: cache_service_pb2_grpc.CacheServiceAsyncStub
    processor: processor_service_pb2_grpc.ProcessorServiceAsyncStub
    cache_health: health_pb2_grpc.HealthStub
    processor_health: health_pb2_grpc.HealthStub

    @classmethod
    def connect(cls, settings: Settings) -> Upstream:
        cache_channel = open_channel(
            target(settings.cache_addresses),
            CACHE_SERVICE,
            ["GetImage", "StatImage", "ListImages", "GetVariant"],
            settings.tls,
        )
        processor_channel = open_channel(
            target(settings.processor_addresses),
            PROCESSOR_SERVICE,
            ["Process"],
            settings.tls,
        )
        return cls(
            cache_channel,
            processor_channel,
            cache_service_pb2_grpc.CacheServiceStub(cache_channel),
            processor_service_pb2_grpc.ProcessorServiceStub(processor_channel),
            health_pb2_grpc.HealthStub(cache_channel),
            health_pb2_grpc.HealthStub(processor_channel),
        )

    async def close(self) -> None:
        await self.cache_channel.close(None)
        await self.processor_channel.close(None)

    async def ready(self, deadline_seconds: float) -> dict[str, str]:
        """Each upstream's health status name (SERVING when all is well)."""
        states = {}
        for name, stub in (("cache", self.cache_health), ("processor", self.processor_health)):
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=deadline_seconds)
                states[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.aio.AioRpcError as exc:
                states[name] = exc.code().name
        return states
