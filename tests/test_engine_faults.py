"""An engine that stops answering (the network to it cut, for real): Redis down is only
misses; PostgreSQL or S3 down is a 503 with Retry-After and nothing half-visible; all
comes back without a restart once the engine answers again."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc

from tests.engines import REDIS_URL, Cutoff, S3Server, postgres_database, redis_prefix
from tests.support import ServiceProcess, channel, is_problem, png_bytes, start_all, wait_for


@dataclass
class Stack:
    http: httpx.Client
    servers: tuple[ServiceProcess, ServiceProcess, ServiceProcess]
    postgres: Cutoff
    s3: Cutoff
    redis: Cutoff
    prefix: str
    env: dict[str, str]  # the cache's, through the relays
    direct_postgres: str  # the database's own URL, not through the relay

    def upload(self, seed: int) -> httpx.Response:
        data = png_bytes(30, 20, seed=seed)
        return self.http.post("/images", content=data, headers={"Content-Type": "image/png"})

    def listed(self) -> set[str]:
        answer = self.http.get("/images", params={"limit": 100})
        assert answer.status_code == 200, answer.text
        return {image["id"] for image in answer.json()["images"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[Stack]:
    with postgres_database() as database, redis_prefix() as prefix:
        pg, s3_relay, redis_relay = (
            Cutoff.to(database),
            Cutoff.to(s3.endpoint),
            Cutoff.to(REDIS_URL),
        )
        env = {
            **s3.env(),
            "AWS_ENDPOINT_URL": s3_relay.via(s3.endpoint),
            "IMAGESVC_BLOB_URL": f"s3://{s3.create_bucket()}",
            "IMAGESVC_METADATA_URL": pg.via(database),
            "IMAGESVC_VARIANT_CACHE_URL": redis_relay.via(REDIS_URL),
            "IMAGESVC_VARIANT_KEY_PREFIX": prefix,
        }
        servers = start_all(tmp_path_factory.mktemp("faults"), env)
        try:
            with httpx.Client(base_url=servers[2].url, timeout=30) as http:
                yield Stack(http, servers, pg, s3_relay, redis_relay, prefix, env, database)
        finally:
            for server in servers:
                server.kill()
            for cutoff in (pg, s3_relay, redis_relay):
                cutoff.close()


def eventually(check: Callable[[], object], what: str = "recovery") -> None:
    wait_for(check, what, timeout=15, every=0.1)


def unavailable(response: httpx.Response) -> None:
    is_problem(response, 503)
    assert int(response.headers["retry-after"]) > 0


def test_postgresql_down_is_a_503_and_recovers_without_a_restart(stack: Stack) -> None:
    kept = stack.upload(1).json()["id"]
    before = stack.listed()
    stack.postgres.cut()
    try:
        unavailable(stack.upload(2))
        unavailable(stack.http.get(f"/images/{kept}"))
        unavailable(stack.http.get("/images"))
    finally:
        stack.postgres.restore()
    eventually(lambda: stack.upload(3).status_code == 201)
    # The pool replaces its broken connections one by one as they are asked for.
    eventually(lambda: stack.http.get(f"/images/{kept}").status_code == 200)
    # The upload refused while PostgreSQL was away is nowhere to be seen.
    assert len(stack.listed() - before) == 1
    assert all(server.running for server in stack.servers)


def test_s3_down_is_a_503_and_recovers_without_a_restart(stack: Stack) -> None:
    kept = stack.upload(10).json()["id"]
    before = stack.listed()
    stack.s3.cut()
    try:
        unavailable(stack.upload(11))
        unavailable(stack.http.get(f"/images/{kept}"))
        # Metadata needs no blob.
        assert stack.http.get(f"/images/{kept}/info").status_code == 200
    finally:
        stack.s3.restore()
    eventually(lambda: stack.upload(12).status_code == 201)
    eventually(lambda: stack.http.get(f"/images/{kept}").status_code == 200)
    assert len(stack.listed() - before) == 1


def variant_keys(prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return list(client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        client.close()


def stored_variants(prefix: str, image_id: str) -> int:
    """How many variants of image_id Redis holds (keys `PREFIX{ID}:v:KEY`)."""
    return sum(1 for key in variant_keys(prefix) if f"{{{image_id}}}:v:".encode() in key)


def test_redis_down_is_only_misses(stack: Stack) -> None:
    image_id = stack.upload(20).json()["id"]
    doomed = stack.upload(21).json()["id"]
    assert stack.http.get(f"/images/{doomed}?w=5").status_code == 200
    eventually(lambda: stored_variants(stack.prefix, doomed) == 1, "its variant in Redis")
    stack.redis.cut()
    try:
        for width in (11, 12, 11):
            answer = stack.http.get(f"/images/{image_id}?w={width}")
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        # A delete still deletes; the variants' cleanup waits for Redis.
        assert stack.http.delete(f"/images/{doomed}").status_code == 204
        assert stack.http.get(f"/images/{doomed}?w=5").status_code == 404
    finally:
        stack.redis.restore()
    # Its variant is still in Redis until recovery comes round: never served, while the
    # cache skips Redis (for 1 s after a failure) nor once it uses Redis again.
    assert stored_variants(stack.prefix, doomed) == 1
    before = len(variant_keys(stack.prefix))
    widths = iter(range(13, 1000))

    def stored_again() -> bool:
        assert stack.http.get(f"/images/{doomed}?w=5").status_code == 404
        # A new variant each time: Redis is used again once it is seen to answer (the
        # processor stores what it made after answering, so a poll sees the one before).
        assert stack.http.get(f"/images/{image_id}?w={next(widths)}").status_code == 200
        return len(variant_keys(stack.prefix)) > before

    wait_for(stored_again, "a variant stored in Redis again", timeout=15, every=0.2)
    assert stack.http.get(f"/images/{doomed}?w=5").status_code == 404


def test_deletions_are_followed_again_after_postgresql_comes_back(
    stack: Stack, tmp_path: Path
) -> None:
    """A second cache replica, on a line to PostgreSQL of its own, takes the deletes: they
    reach the stack's gateway (which watches the first replica only) through NOTIFY, once
    the first replica's line is back, without a restart."""
    other = ServiceProcess(
        "cache",
        tmp_path / "other",
        {**stack.env, "IMAGESVC_METADATA_URL": stack.direct_postgres},
    ).start()
    seeds = iter(range(300, 400))

    def served_from_memory() -> float:
        metrics = stack.http.get("/metrics").text
        line = 'imagesvc_variant_cache_total{result="gateway"}'
        return sum(float(row.split()[-1]) for row in metrics.splitlines() if row.startswith(line))

    def deleted_elsewhere_is_gone_here() -> bool:
        image_id = stack.upload(next(seeds)).json()["id"]
        assert stack.http.get(f"/images/{image_id}?w=9").status_code == 200
        before = served_from_memory()
        assert stack.http.get(f"/images/{image_id}?w=9").status_code == 200
        if served_from_memory() == before:
            return False  # the gateway keeps nothing while its watch is refused
        with channel(other.address) as ch:
            pb_grpc.CacheServiceStub(ch).DeleteImage(pb.DeleteImageRequest(id=image_id))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if stack.http.get(f"/images/{image_id}?w=9").status_code == 404:
                return True
            time.sleep(0.02)
        return False

    try:
        eventually(deleted_elsewhere_is_gone_here)  # the gateway watches (after the tests above)
        stack.postgres.cut()
        time.sleep(0.5)  # scenario: an outage of half a second
        stack.postgres.restore()
        eventually(lambda: stack.upload(next(seeds)).status_code == 201)
        eventually(deleted_elsewhere_is_gone_here)
    finally:
        other.kill()


def test_the_relays_really_cut(tmp_path: Path) -> None:
    """The fault is real: nothing gets through a cut relay, and all does once restored."""
    with Cutoff.to(REDIS_URL) as cutoff:
        client = redis.Redis(port=cutoff.port, socket_timeout=1, socket_connect_timeout=1)
        idle = socket.create_connection(("127.0.0.1", cutoff.port), timeout=2)
        try:
            assert client.ping()
            idle.sendall(b"PING\r\n")
            assert idle.recv(64) == b"+PONG\r\n"
            cutoff.cut()
            with pytest.raises(ConnectionResetError):
                idle.recv(64)  # reset at once, though it was waiting, not sending
            with pytest.raises(redis.ConnectionError):
                client.ping()
            cutoff.restore()
            assert client.ping()
        finally:
            client.close()
            idle.close()
