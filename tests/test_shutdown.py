"""SIGTERM under load: what is in flight finishes, and replicas restart one at a time
without failing a request."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imageservice.v1 import processor_service_pb2 as ppb
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc

from tests.support import (
    CHUNK,
    ServiceProcess,
    bytes_requests,
    channel,
    collect,
    free_port,
    metric,
    open_image,
    png_bytes,
    start_all,
    wait_for,
)

METHOD_CALLS = "imagesvc_grpc_server_handled_total"

PACE = 0.1  # seconds between a slow client's pieces


def test_a_slow_upload_in_flight_when_the_gateway_is_stopped_completes(tmp_path: Path) -> None:
    cache, processor, gateway = start_all(tmp_path)
    data = png_bytes(300, 300, noise=True)
    try:

        def slow_body() -> Iterator[bytes]:
            for n, start in enumerate(range(0, len(data), 16 * 1024)):
                if n == 2:
                    assert gateway.proc is not None
                    gateway.proc.send_signal(signal.SIGTERM)
                time.sleep(PACE)
                yield data[start : start + 16 * 1024]

        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            response = http.post(
                "/images", content=slow_body(), headers={"content-type": "image/png"}
            )
        assert response.status_code == 201, response.text
        assert gateway.proc is not None and gateway.proc.wait(30) == 0
        # Stored whole, and nothing new is taken: the gateway is gone.
        gateway.start()
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            assert http.get(f"/images/{response.json()['id']}").content == data
    finally:
        for server in (gateway, processor, cache):
            server.kill()


def test_a_render_in_flight_when_the_processor_is_stopped_completes(tmp_path: Path) -> None:
    cache, processor, gateway = start_all(tmp_path)
    data = png_bytes(600, 400, noise=True)
    try:

        def slow_requests() -> Iterator[ppb.ProcessBytesRequest]:
            for n, message in enumerate(bytes_requests(data, format=ppb.OUTPUT_FORMAT_PNG)):
                if n == 2:
                    assert processor.proc is not None
                    processor.proc.send_signal(signal.SIGTERM)
                time.sleep(PACE)
                yield message

        assert len(data) > 2 * CHUNK  # the signal comes before the last piece
        with channel(processor.address) as ch:
            stub = ppb_grpc.ProcessorServiceStub(ch)
            meta, body = collect(stub.ProcessBytes(slow_requests(), timeout=30))
        assert open_image(body).size == (600, 400) and meta.byte_size == len(body)
        assert processor.proc is not None and processor.proc.wait(30) == 0
    finally:
        for server in (gateway, processor, cache):
            server.kill()


def renders(server: ServiceProcess) -> int:
    """How many Process calls server has answered (its metrics count each call)."""
    return int(metric(server, METHOD_CALLS, method="Process"))


def renders_past(server: ServiceProcess, count: int) -> bool:
    return renders(server) > count


def serving(server: ServiceProcess) -> bool:
    with channel(server.address) as ch:
        try:
            answer = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def test_restarting_processor_replicas_one_at_a_time_fails_no_request(tmp_path: Path) -> None:
    cache = ServiceProcess("cache", tmp_path / "c").start()
    processors = [
        ServiceProcess(
            "processor",
            tmp_path / f"p{n}",
            {
                "IMAGESVC_CACHE_ADDRESS": cache.address,
                "IMAGESVC_PROCESSOR_LISTEN": f"127.0.0.1:{free_port()}",
            },
        ).start()
        for n in range(2)
    ]
    gateway = ServiceProcess(
        "gateway",
        tmp_path / "g",
        {
            "IMAGESVC_CACHE_ADDRESS": cache.address,
            "IMAGESVC_PROCESSOR_ADDRESSES": ",".join(p.address for p in processors),
        },
    ).start()
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            posted = http.post(
                "/images?visibility=public",
                content=png_bytes(1000, 1000, seed=3),
                headers={"content-type": "image/png"},
            )
            assert posted.status_code == 201, posted.text
            image_id = posted.json()["id"]

        def load(offset: int) -> None:
            # Every request a different size, so each is a render (no copy anywhere).
            n = offset
            with httpx.Client(base_url=gateway.url, timeout=30) as http:
                while not stop.is_set():
                    n += 2
                    params: dict[str, str | int] = {
                        "w": n % 997 + 1,
                        "h": n // 997 % 997 + 1,
                        "fit": "fill",
                    }
                    try:
                        response = http.get(f"/images/{image_id}", params=params)
                    except httpx.HTTPError as exc:
                        failures.append(f"{params}: {exc!r}")
                        continue
                    if response.status_code != 200:
                        failures.append(f"{params}: {response.status_code} {response.text}")
                    answered[0] += 1

        threads = [threading.Thread(target=load, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for replica in processors:
            wait_for(partial(renders_past, replica, 4), "renders on both replicas", 60)
        for replica in processors:
            before = answered[0]
            assert replica.terminate() == 0
            replica.start()
            wait_for(partial(serving, replica), "replica healthy again", 60)
            # Back in the gateway's rotation before the other one goes.
            served = renders(replica)
            wait_for(partial(renders_past, replica, served), "use of the replica again", 60)
            assert answered[0] > before  # the load went on meanwhile
        stop.set()
        for thread in threads:
            thread.join(60)
        assert failures == []
    finally:
        stop.set()
        for server in (gateway, *processors, cache):
            server.kill()
