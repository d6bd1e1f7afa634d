"""Crashes and shutdowns of a real cache process: nothing acknowledged is lost or torn."""

from __future__ import annotations

import contextlib
import os
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

from cache.service import STALE_SECONDS
from tests.support import (
    ServiceProcess,
    channel,
    download,
    png_bytes,
    sha256,
    upload_requests,
    wait_for,
)


def all_images(stub: pb_grpc.CacheServiceStub) -> list[str]:
    return [m.id for m in stub.ListImages(pb.ListImagesRequest(page_size=1000)).images]


def age_leftovers(data_dir: Path, seconds: float = STALE_SECONDS + 60) -> None:
    """Make what a crash left (upload intents, staged files) look `seconds` old, as it
    would be by the time recovery may take it for a crash's (not another upload's)."""
    with contextlib.closing(sqlite3.connect(data_dir / "metadata.db")) as db:
        db.execute("UPDATE intents SET created_ns = created_ns - ?", (int(seconds * 1e9),))
        db.commit()
    for staged in (data_dir / "blobs" / "tmp").iterdir():
        stat = staged.stat()
        os.utime(staged, (stat.st_atime - seconds, stat.st_mtime - seconds))


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
    wait_for(lambda: len(acknowledged) >= 12, "12 acknowledged uploads", timeout=30, every=0.01)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) >= 12

    age_leftovers(server.data_dir)
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
        # Recovery runs in the background: whatever the crash left goes soon after.
        blobs_dir = server.data_dir / "blobs"
        wait_for(lambda: not list((blobs_dir / "tmp").iterdir()), "an empty staging folder")
        wait_for(
            lambda: {p.name for p in blobs_dir.glob("??/??/*")} == set(listed),
            "exactly the listed blobs",
        )
    finally:
        server.terminate()


def test_recovery_finishes_only_unfinished_intents(tmp_path: Path) -> None:
    """Start-up looks at intents, never at every blob: a crashed upload's blob goes once
    its intent is stale (another replica may still be writing a fresh one), a crashed
    delete's blob and variants at once, and nothing else is touched."""
    data_dir = tmp_path / "data"
    server = ServiceProcess("cache", data_dir).start()
    with channel(server.address) as ch:
        kept = pb_grpc.CacheServiceStub(ch).PutImage(upload_requests(png_bytes(9, 9))).image.id
    server.terminate()

    def blob(image_id: str) -> Path:
        path = data_dir / "blobs" / image_id[:2] / image_id[2:4] / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"bytes of " + image_id.encode())
        return path

    crashed_put, fresh_put, crashed_delete = ("AB" + c * 20 for c in "xyz")
    stale_ns = time.time_ns() - int((STALE_SECONDS + 60) * 1e9)
    with contextlib.closing(sqlite3.connect(data_dir / "metadata.db")) as db:
        db.executemany(
            "INSERT INTO intents (id, kind, created_ns) VALUES (?, ?, ?)",
            [
                (crashed_put, "put", stale_ns),
                (fresh_put, "put", time.time_ns()),
                (crashed_delete, "delete", time.time_ns()),
            ],
        )
        db.commit()
    paths = {image_id: blob(image_id) for image_id in (crashed_put, fresh_put, crashed_delete)}
    variants_db = data_dir / "variants" / "variants.db"
    with contextlib.closing(sqlite3.connect(variants_db)) as db:
        db.execute(
            "INSERT INTO variants (image_id, key, record, data, used) VALUES (?, ?, '{}', ?, 1)",
            (crashed_delete, "somekey", b"variant bytes of a deleted image"),
        )
        db.commit()
    old_staged = data_dir / "blobs" / "tmp" / "deadbeef.partial"
    old_staged.write_bytes(b"half an image")
    os.utime(old_staged, (time.time() - STALE_SECONDS - 60,) * 2)
    new_staged = data_dir / "blobs" / "tmp" / "cafe.partial"
    new_staged.write_bytes(b"an upload under way, of another replica")

    server.start()
    try:
        wait_for(
            lambda: not paths[crashed_put].exists() and not old_staged.exists(),
            "the crashed put's files swept",
        )
        assert not paths[crashed_delete].exists()
        assert paths[fresh_put].exists() and new_staged.exists()
        with contextlib.closing(sqlite3.connect(variants_db)) as db:
            assert not db.execute(
                "SELECT * FROM variants WHERE image_id = ?", (crashed_delete,)
            ).fetchall()
        with contextlib.closing(sqlite3.connect(data_dir / "metadata.db")) as db:
            left = db.execute("SELECT id FROM intents").fetchall()
        assert left == [(fresh_put,)]
        with channel(server.address) as ch:
            assert download(pb_grpc.CacheServiceStub(ch), kept)[1]
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
