"""Every service as replicas on loopback, sharing PostgreSQL, Redis and S3 (moto): two
caches, two processors and two gateways that act as one system."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import processor_service_pb2 as ppb
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc

from tests.engines import REDIS_URL, S3Server, postgres_database, redis_prefix
from tests.support import (
    ServiceProcess,
    channel,
    collect,
    metric,
    png_bytes,
    process_request,
    sha256,
)


def engine_env(s3: S3Server, postgres_url: str, prefix: str) -> dict[str, str]:
    """What points a cache service at the shared engines."""
    return {
        **s3.env(),
        "IMAGESVC_BLOB_URL": f"s3://{s3.create_bucket()}/originals",
        "IMAGESVC_METADATA_URL": postgres_url,
        "IMAGESVC_VARIANT_CACHE_URL": REDIS_URL,
        "IMAGESVC_VARIANT_KEY_PREFIX": prefix,
    }


@dataclass
class Cluster:
    caches: list[ServiceProcess]
    processors: list[ServiceProcess]
    gateways: list[ServiceProcess]

    def stop(self) -> None:
        for server in (*self.gateways, *self.processors, *self.caches):
            server.kill()


def start_cluster(root: Path, cache_env: dict[str, str], replicas: int = 2) -> Cluster:
    """`replicas` of each service; every processor and gateway knows every cache, and
    every gateway every processor."""
    caches = [
        ServiceProcess("cache", root / f"cache{n}", cache_env).start() for n in range(replicas)
    ]
    cache_list = ",".join(c.address for c in caches)
    processors = [
        ServiceProcess("processor", root / f"processor{n}", {"IMAGESVC_CACHE_ADDRESS": cache_list})
        for n in range(replicas)
    ]
    for p in processors:
        p.start()
    upstreams = {
        "IMAGESVC_CACHE_ADDRESS": cache_list,
        "IMAGESVC_PROCESSOR_ADDRESSES": ",".join(p.address for p in processors),
    }
    gateways = [
        ServiceProcess("gateway", root / f"gateway{n}", upstreams).start() for n in range(replicas)
    ]
    return Cluster(caches, processors, gateways)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[Cluster]:
    with postgres_database() as database, redis_prefix() as prefix:
        running = start_cluster(
            tmp_path_factory.mktemp("cluster"), engine_env(s3, database, prefix)
        )
        try:
            yield running
        finally:
            running.stop()


def clients(cluster: Cluster) -> list[httpx.Client]:
    return [httpx.Client(base_url=g.url, timeout=30) for g in cluster.gateways]


def test_an_upload_through_one_gateway_reads_the_same_through_the_other(
    cluster: Cluster,
) -> None:
    first, second = clients(cluster)
    data = png_bytes(120, 80, seed=1, noise=True)
    created = first.post("/images", content=data, headers={"Content-Type": "image/png"})
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    read = second.get(f"/images/{image_id}")
    assert read.status_code == 200 and read.content == data
    assert second.get(f"/images/{image_id}/info").json() == created.json()


def test_a_variant_made_through_one_processor_is_a_hit_through_the_other(
    cluster: Cluster,
) -> None:
    first, _ = clients(cluster)
    created = first.post(
        "/images", content=png_bytes(90, 60, seed=2), headers={"Content-Type": "image/png"}
    )
    image_id = created.json()["id"]
    request = process_request(image_id, ppb.Operation(resize=ppb.Resize(width=30)))
    answers = []
    for processor in cluster.processors:
        with channel(processor.address) as ch:
            responses = list(ppb_grpc.ProcessorServiceStub(ch).Process(request, timeout=30))
        answers.append((responses[0].cache_hit, collect(responses)[1]))
    (made_hit, made), (second_hit, reused) = answers
    assert (made_hit, second_hit) == (False, True)
    assert reused == made


def renders(cluster: Cluster) -> float:
    """How many renders the cluster's processors have made between them."""
    return sum(metric(p, "imagesvc_processor_render_seconds_count") for p in cluster.processors)


def test_processors_missing_the_same_variant_render_it_once(cluster: Cluster) -> None:
    first, _ = clients(cluster)
    created = first.post(
        "/images",
        content=png_bytes(2000, 1500, seed=3, noise=True),
        headers={"Content-Type": "image/png"},
    )
    image_id = created.json()["id"]
    request = process_request(
        image_id, ppb.Operation(blur=ppb.Blur(sigma=8)), ppb.Operation(resize=ppb.Resize(width=700))
    )
    start = threading.Barrier(4)

    def ask(address: str) -> tuple[bool, str]:
        with channel(address) as ch:
            stub = ppb_grpc.ProcessorServiceStub(ch)
            start.wait()
            responses = list(stub.Process(request, timeout=60))
        return responses[0].cache_hit, sha256(collect(responses)[1])

    addresses = [p.address for p in cluster.processors] * 2
    before = renders(cluster)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(ask, addresses))
    assert len({digest for _, digest in results}) == 1
    assert renders(cluster) - before == 1


def warm(clients: list[httpx.Client], image_id: str) -> None:
    """Every gateway holds the image and a variant of it in memory."""
    for client in clients:
        for _ in range(2):  # the second read is served from the gateway's hot copy
            assert client.get(f"/images/{image_id}?w=32").status_code == 200
            assert client.get(f"/images/{image_id}").status_code == 200


def gone_everywhere_within_a_second(clients: list[httpx.Client], image_id: str) -> None:
    deleted = time.monotonic()
    for client in clients:
        while any(
            client.get(path).status_code != 404
            for path in (f"/images/{image_id}", f"/images/{image_id}?w=32")
        ):
            assert time.monotonic() - deleted < 1.0, "a gateway still serves a deleted image"
            time.sleep(0.02)


def test_a_delete_through_one_gateway_is_seen_by_both_within_a_second(cluster: Cluster) -> None:
    first, second = clients(cluster)
    created = first.post(
        "/images", content=png_bytes(64, 64, seed=4), headers={"Content-Type": "image/png"}
    )
    image_id = created.json()["id"]
    warm([first, second], image_id)
    assert second.delete(f"/images/{image_id}").status_code == 204
    gone_everywhere_within_a_second([first, second], image_id)


def test_a_delete_through_either_cache_replica_reaches_every_gateway(cluster: Cluster) -> None:
    """Each gateway watches one cache replica: deleting through each in turn, at least
    one delete reaches a gateway through the other replica (PostgreSQL's NOTIFY)."""
    gateways = clients(cluster)
    for seed, cache in enumerate(cluster.caches):
        created = gateways[0].post(
            "/images",
            content=png_bytes(64, 64, seed=40 + seed),
            headers={"Content-Type": "image/png"},
        )
        image_id = created.json()["id"]
        warm(gateways, image_id)
        with channel(cache.address) as ch:
            pb_grpc.CacheServiceStub(ch).DeleteImage(pb.DeleteImageRequest(id=image_id))
        gone_everywhere_within_a_second(gateways, image_id)


def test_killing_a_cache_replica_mid_storm_loses_no_acknowledged_upload(
    tmp_path: Path, s3: S3Server
) -> None:
    with postgres_database() as database, redis_prefix() as prefix:
        running = start_cluster(tmp_path, engine_env(s3, database, prefix))
        try:
            gateways = clients(running)
            victim = running.caches[0]
            results: list[tuple[int, str, bytes]] = []
            lock = threading.Lock()

            def upload(n: int) -> None:
                if n == 60:
                    victim.proc.kill()  # type: ignore[union-attr]
                data = png_bytes(40, 30, seed=1000 + n)
                response = gateways[n % 2].post(
                    "/images", content=data, headers={"Content-Type": "image/png"}
                )
                image_id = response.json().get("id", "") if response.status_code == 201 else ""
                with lock:
                    results.append((response.status_code, image_id, data))

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(upload, range(200)))
            statuses = [status for status, _, _ in results]
            assert set(statuses) <= {201, 503}, statuses
            # Only calls in flight on the dead replica (or sent before the channel saw
            # it die) may fail; everything after goes to the live one.
            assert statuses.count(503) <= 16, statuses
            assert all(status == 201 for status in statuses[-100:])
            for status, image_id, data in results:
                if status == 201:
                    read = gateways[0].get(f"/images/{image_id}")
                    assert read.status_code == 200 and read.content == data
        finally:
            running.stop()


def test_replicas_serve_the_same_list(cluster: Cluster) -> None:
    first, second = clients(cluster)
    ids = [
        first.post(
            "/images", content=png_bytes(10, 10, seed=50 + n), headers={"Content-Type": "image/png"}
        ).json()["id"]
        for n in range(3)
    ]
    listed = [
        [image["id"] for image in client.get("/images", params={"limit": 100}).json()["images"]]
        for client in (first, second)
    ]
    assert listed[0] == listed[1]
    assert set(ids) <= set(listed[0])


def test_calls_are_spread_over_every_cache_replica(cluster: Cluster) -> None:
    first, _ = clients(cluster)
    for n in range(8):
        first.post(
            "/images", content=png_bytes(8, 8, seed=80 + n), headers={"Content-Type": "image/png"}
        )
    for cache in cluster.caches:
        calls = "imagesvc_grpc_server_handled_total"
        assert metric(cache, calls, service="imageservice.v1.CacheService", method="PutImage")
