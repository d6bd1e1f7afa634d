"""Clients of every replica: one target for a list or a DNS name, connections that age out
(so replicas added later are found) without cutting calls, and watches that survive it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc

from common.env import ConfigError, Env
from common.grpcclient import addresses, open_channel, target
from common.grpcserver import create_server
from common.hotcache import HotCache
from gateway.config import Settings as GatewaySettings
from processor.config import Settings as ProcessorSettings

CACHE_SERVICE = pb.DESCRIPTOR.services_by_name["CacheService"].full_name
AGE = 0.5  # seconds: short, so a test sees several connections age out


def test_one_target_for_every_replica() -> None:
    assert target(["cache:50051"]) == "dns:///cache:50051"
    assert target(["127.0.0.1:50051"]) == "dns:///127.0.0.1:50051"
    assert target(["dns:///cache:50051"]) == "dns:///cache:50051"
    assert target(["127.0.0.1:50051", "127.0.0.1:50061"]) == "ipv4:127.0.0.1:50051,127.0.0.1:50061"
    assert target(["[::1]:50051", "[::1]:50061"]) == "ipv6:[::1]:50051,[::1]:50061"
    for bad in (["cache:1", "cache:2"], ["127.0.0.1:1", "[::1]:2"], ["127.0.0.1", "10.0.0.1"]):
        with pytest.raises(ValueError, match="IP:port"):
            target(bad)


def test_both_services_read_the_cache_replicas_as_a_list() -> None:
    env = Env({"IMAGESVC_CACHE_ADDRESS": " 127.0.0.1:50051, 127.0.0.1:50061 "})
    for settings in (GatewaySettings.from_env(env), ProcessorSettings.from_env(env)):
        assert settings.cache_addresses == ("127.0.0.1:50051", "127.0.0.1:50061")
    assert ProcessorSettings.from_env(Env({})).cache_addresses == ("127.0.0.1:50051",)
    assert GatewaySettings.from_env(Env({})).processor_addresses == ("127.0.0.1:50052",)
    for name in ("CACHE_ADDRESS", "PROCESSOR_ADDRESSES"):
        with pytest.raises(ConfigError, match=f"IMAGESVC_{name} names no address"):
            addresses(Env({f"IMAGESVC_{name}": " , "}), name, "x:1")
        # gRPC would accept the setting and fail every call; refused at start instead.
        with pytest.raises(ConfigError, match=f"IMAGESVC_{name}=a:1,b:1: a list takes IP:port"):
            GatewaySettings.from_env(Env({f"IMAGESVC_{name}": "a:1,b:1"}))


class _Peers:
    """A raw unary method answering the caller's address as the server sees it (a new
    connection has a new port), and a server stream of `count` messages, one every 0.2 s."""

    @staticmethod
    async def peer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return context.peer().encode()

    @staticmethod
    async def slow(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        for n in range(int(request)):
            await asyncio.sleep(0.2)
            yield str(n).encode()

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            "test.Peers",
            {
                "Peer": grpc.unary_unary_rpc_method_handler(self.peer),
                "Slow": grpc.unary_stream_rpc_method_handler(self.slow),
            },
        )


async def _serving(
    grace: float | None, test: Callable[[grpc.aio.Channel, grpc.aio.Server], Awaitable[None]]
) -> None:
    server, _ = create_server(AGE, grace)
    server.add_generic_rpc_handlers((_Peers().handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(target([f"127.0.0.1:{port}"]), "test.Peers", ["Peer"], None)
    try:
        await test(channel, server)
    finally:
        await channel.close(None)
        await server.stop(None)


def test_connections_age_out_and_no_call_fails_for_it() -> None:
    async def test(channel: grpc.aio.Channel, server: grpc.aio.Server) -> None:
        peer = channel.unary_unary("/test.Peers/Peer", None, None)
        seen = set()
        deadline = time.monotonic() + 6 * AGE
        while time.monotonic() < deadline:
            seen.add(await peer(b"", timeout=5))  # raises if any call fails
            await asyncio.sleep(0.01)
        # Each new connection is where the client resolves the name again.
        assert len(seen) >= 3, seen

    asyncio.run(_serving(None, test))


def test_a_stream_open_when_its_connection_ages_out_finishes() -> None:
    async def test(channel: grpc.aio.Channel, server: grpc.aio.Server) -> None:
        stream = channel.unary_stream("/test.Peers/Slow", None, None)
        received = [m async for m in stream(b"15", timeout=30)]  # 3 s: six times the age
        assert received == [str(n).encode() for n in range(15)]

    asyncio.run(_serving(None, test))


class _Deletions:
    """The cache service's WatchDeletions alone: announces each id deleted to every
    watcher."""

    def __init__(self) -> None:
        self.watchers: set[asyncio.Queue[str]] = set()

    def delete(self, image_id: str) -> None:
        for queue in self.watchers:
            queue.put_nowait(image_id)

    async def watch(
        self, request: pb.WatchDeletionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchDeletionsResponse]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self.watchers.add(queue)
        await context.send_initial_metadata(())
        try:
            while True:
                yield pb.WatchDeletionsResponse(image_id=await queue.get())
        finally:
            self.watchers.discard(queue)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        method = grpc.unary_stream_rpc_method_handler(
            self.watch,
            request_deserializer=pb.WatchDeletionsRequest.FromString,
            response_serializer=pb.WatchDeletionsResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(CACHE_SERVICE, {"WatchDeletions": method})


async def _until(condition: Callable[[], object], seconds: float = 5.0) -> None:
    """Return once condition() is true; fail after `seconds`."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"not within {seconds} s")


async def _watching(grace: float | None) -> tuple[int, list[float], list[str]]:
    """A hot cache watching a server whose connections age out every AGE seconds, for
    5 AGEs: how often it was emptied, how long each reconnection of the watch took, and
    the ids the watch passed on of one deleted at the end."""
    deletions = _Deletions()
    server, _ = create_server(AGE, grace)
    server.add_generic_rpc_handlers((deletions.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(target([f"127.0.0.1:{port}"]), "x", [], None)
    hot: HotCache[bytes] = HotCache(1 << 20, len, 1 << 20)
    forgotten: list[str] = []
    watch = asyncio.create_task(hot.watch(pb_grpc.CacheServiceStub(channel), forgotten.append))
    gaps: list[float] = []
    try:
        await _until(lambda: hot.connected)
        down_since = None
        deadline = time.monotonic() + 5 * AGE
        while time.monotonic() < deadline:
            if not hot.connected and down_since is None:
                down_since = time.monotonic()
            elif hot.connected and down_since is not None:
                gaps.append(time.monotonic() - down_since)
                down_since = None
            await asyncio.sleep(0.005)
        # Again if the watch it went to was cut first (a finite grace cuts every 0.7 s).
        for _ in range(3):
            await _until(lambda: hot.connected and deletions.watchers)
            deletions.delete("gone")
            with contextlib.suppress(AssertionError):
                await _until(lambda: forgotten, 0.3)
                break
        emptied = hot.generation  # before the watch is stopped, which empties it too
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await channel.close(None)
        await server.stop(None)
    return emptied, gaps, forgotten


def test_a_deletion_watch_is_never_cut_by_its_connection_aging_out() -> None:
    emptied, gaps, forgotten = asyncio.run(_watching(grace=None))
    # Connected throughout: the hot cache was never emptied.
    assert (gaps, emptied) == ([], 0)
    assert set(forgotten) == {"gone"}


def test_a_watch_cut_by_a_finite_grace_reconnects_promptly() -> None:
    # Why the servers' grace is unlimited: a finite one ends every watch, and each end
    # empties the watcher's hot cache. The watch itself comes back at once, though.
    emptied, gaps, forgotten = asyncio.run(_watching(grace=0.2))
    assert gaps and emptied >= len(gaps)
    assert max(gaps) < 1.0, gaps
    assert set(forgotten) == {"gone"}


def test_calls_go_round_the_replicas_that_say_they_are_serving() -> None:
    async def test() -> None:
        servers = []
        for _ in range(2):
            server, health = create_server()
            port = server.add_insecure_port("127.0.0.1:0")

            async def answer(
                request: bytes, context: grpc.aio.ServicerContext[Any, Any], port: int = port
            ) -> bytes:
                return str(port).encode()

            method = grpc.unary_unary_rpc_method_handler(answer)
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler("test.Which", {"Port": method}),)
            )
            await server.start()
            servers.append((server, health, port))
        (_, draining, left), (_, serving, right) = servers
        await draining.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await serving.set("", health_pb2.HealthCheckResponse.SERVING)
        channel = open_channel(
            target([f"127.0.0.1:{left}", f"127.0.0.1:{right}"]), "test.Which", [], None
        )
        which = channel.unary_unary("/test.Which/Port", None, None)
        try:
            # Up but draining (as a replica told to stop is, while its calls finish):
            # left out of the rotation.
            assert {await which(b"", timeout=5) for _ in range(20)} == {str(right).encode()}
            # Serving again: back in it.
            await draining.set("", health_pb2.HealthCheckResponse.SERVING)
            answered: set[bytes] = set()
            deadline = time.monotonic() + 5
            while len(answered) < 2 and time.monotonic() < deadline:
                answered.add(await which(b"", timeout=5))
            assert answered == {str(left).encode(), str(right).encode()}
        finally:
            await channel.close(None)
            for server, _, _ in servers:
                await server.stop(None)

    asyncio.run(test())
