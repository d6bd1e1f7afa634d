"""Crashes and shutdowns of a real cache process: nothing acknowledged is lost or torn."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc

from tests.support import ServiceProcess, channel, download, png_bytes, sha256, upload_requests


def all_images(stub: pb_grpc.CacheServiceStub) -> list[str]:
    return [m.id for m in stub.ListImages(pb.ListImagesRequest(page_size=1000)).images]


def test_sigkill_mid_upload_loses_no_acknowledged_image(tmp_path: Path) -> None:
    server = ServiceProcess("cache", tmp_path / "data").start()
    payloads = [png_bytes(300, 300, noise=True) for _ in range(4)]  # ~270 KB each
    sent_shas = {sha256(p) for p in payloads}
    acknowledged: dict[str, str] = {}
    stop = threading.Event()

    def uploader() -> None:
        with channel(server.address) as ch:
            stub = pb_grpc.CacheServiceStub(ch)
            i = 0
            while not stop.is_set():
                data = payloads[i % len(payloads)]
                i += 1
                try:
                    # Pauses between chunks keep an upload in flight at any moment.
                    meta = stub.PutImage(upload_requests(data, pause=0.002), timeout=10).image
                except grpc.RpcError:
                    return
                acknowledged[meta.id] = meta.sha256

    threads = [threading.Thread(target=uploader) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) >= 12

    server.start()
    try:
        with channel(server.address) as ch:
            stub = pb_grpc.CacheServiceStub(ch)
            for image_id, digest in acknowledged.items():
                meta, data = download(stub, image_id)
                assert sha256(data) == digest == meta.sha256
            listed = all_images(stub)
            assert set(acknowledged) <= set(listed)
            for image_id in listed:  # the rest committed without the ack reaching us: whole too
                meta, data = download(stub, image_id)
                assert sha256(data) == meta.sha256 and meta.sha256 in sent_shas
        assert not list((server.data_dir / "blobs" / "tmp").iterdir())
        blobs = {p.name for p in (server.data_dir / "blobs").glob("??/??/*")}
        assert blobs == set(listed)
    finally:
        server.terminate()


def test_start_removes_leftovers_of_a_crash(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServiceProcess("cache", data_dir).start()
    server.terminate()
    staged = data_dir / "blobs" / "tmp" / "deadbeef.partial"
    staged.write_bytes(b"half an image")
    orphan = data_dir / "blobs" / "AB" / "CD" / ("ABCD" + "x" * 18)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"a blob whose metadata never committed")
    deleted = "ZZ" + "q" * 20  # its delete crashed after the metadata went
    variants_db = data_dir / "variants" / "variants.db"
    with contextlib.closing(sqlite3.connect(variants_db)) as db:
        db.execute(
            "INSERT INTO variants (image_id, key, record, data, used) VALUES (?, ?, '{}', ?, 1)",
            (deleted, "somekey", b"variant bytes of a deleted image"),
        )
        db.commit()
    server.start()
    try:
        assert not staged.exists() and not orphan.exists()
        with contextlib.closing(sqlite3.connect(variants_db)) as db:
            assert not db.execute(
                "SELECT * FROM variants WHERE image_id = ?", (deleted,)
            ).fetchall()
        assert any(e.get("msg") == "recovered after a crash" for e in server.log_entries())
    finally:
        server.terminate()


def test_sigterm_lets_in_flight_calls_finish_and_reports_not_serving(tmp_path: Path) -> None:
    server = ServiceProcess("cache", tmp_path / "data", {"IMAGESVC_SHUTDOWN_GRACE_SECONDS": "20"})
    server.start()
    data = png_bytes(400, 400, noise=True)
    statuses: list[int] = []
    watching = threading.Event()
    with channel(server.address) as ch:
        stub = pb_grpc.CacheServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)

        def watch() -> None:
            try:
                for update in health.Watch(health_pb2.HealthCheckRequest(service="")):
                    statuses.append(update.status)
                    watching.set()
            except grpc.RpcError:
                pass

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert watching.wait(10)

        def slow_upload() -> Iterator[pb.PutImageRequest]:
            for n, message in enumerate(upload_requests(data)):
                if n == 1:
                    assert server.proc is not None
                    server.proc.send_signal(signal.SIGTERM)
                time.sleep(0.1)
                yield message

        meta = stub.PutImage(slow_upload(), timeout=30).image
        assert meta.sha256 == sha256(data)
        assert server.proc is not None
        assert server.proc.wait(30) == 0
        watcher.join(10)
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    server.start()
    try:
        with channel(server.address) as ch:
            assert download(pb_grpc.CacheServiceStub(ch), meta.id)[1] == data
    finally:
        server.terminate()
