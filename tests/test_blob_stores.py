"""The BlobStore contract, run against every backend: files, and S3 on moto's server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PosixPath
from typing import Any

import boto3
import pytest

from cache.backends import open_blob_store, s3_location
from cache.blobs import Blob, BlobNotFound, BlobStore
from cache.blobs.files import FileBlobStore
from cache.blobs.s3 import PART_BYTES, S3BlobStore
from cache.storage import StorageUnavailable
from common.env import ConfigError
from tests.engines import S3_CREDENTIALS, Cutoff, S3Server
from tests.support import ROOT, free_port

MiB = 1024 * 1024


@dataclass(frozen=True)
class Backend:
    """One kind of store, on a location of this test's own."""

    kind: str
    url: str
    staging: Path
    env: dict[str, str]

    def open(self) -> BlobStore:
        return open_blob_store(self.url, self.staging)


def s3_backend_on(s3: S3Server, staging: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """A fresh bucket; the AWS_* variables point this process's clients at moto."""
    env = s3.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Backend("s3", f"s3://{s3.create_bucket()}/images", staging, env)


@pytest.fixture(params=["file", "s3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    if request.param == "file":
        return Backend("file", f"file://{tmp_path / 'blobs'}", tmp_path / "staging", {})
    return s3_backend_on(request.getfixturevalue("s3"), tmp_path / "staging", monkeypatch)


@pytest.fixture
def s3_backend(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    return s3_backend_on(s3, tmp_path / "staging", monkeypatch)


@pytest.fixture
def s3_client(s3: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_REGION"],
    )


def payload(size: int) -> bytes:
    """Bytes in which every 8-byte word differs, so a misplaced range or part shows."""
    return b"".join(n.to_bytes(8, "big") for n in range(size // 8 + 1))[:size]


def stage(store: BlobStore, data: bytes) -> Path:
    path = store.staging / uuid.uuid4().hex
    path.write_bytes(data)
    return path


async def read_all(blob: Blob, chunk_size: int) -> list[bytes]:
    return [chunk async for chunk in blob.chunks(chunk_size)]


def new_key() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize("size", [0, 1, 300 * 1024, 12 * MiB + 12345])
def test_round_trip_in_chunks_of_the_size_asked(backend: Backend, size: int) -> None:
    data = payload(size)

    async def main() -> None:
        store = backend.open()
        key = new_key()
        await store.put(key, stage(store, data))
        blob = await store.open(key)
        try:
            assert blob.size == size
            for chunk_size in (64 * 1024, 100_000, 16 * MiB):
                chunks = await read_all(blob, chunk_size)
                assert b"".join(chunks) == data
                assert all(len(c) == chunk_size for c in chunks[:-1])
                assert all(0 < len(c) <= chunk_size for c in chunks)
        finally:
            await blob.close()
            await store.close()

    asyncio.run(main())


def test_large_s3_blob_goes_up_in_several_parts(s3_backend: Backend, s3_client: Any) -> None:
    data = payload(12 * MiB + 1)
    key = new_key()

    async def main() -> None:
        store = s3_backend.open()
        await store.put(key, stage(store, data))

    asyncio.run(main())
    bucket, prefix = s3_location(s3_backend.url)
    head = s3_client.head_object(Bucket=bucket, Key=f"{prefix}/{key}")
    # A multipart object's ETag ends with its part count; a single PUT's has none.
    parts = -(-len(data) // PART_BYTES)
    assert parts >= 3
    assert head["ETag"].strip('"').endswith(f"-{parts}")
    assert head["ContentLength"] == len(data)


def test_missing_key_is_blob_not_found(backend: Backend) -> None:
    async def main() -> None:
        store = backend.open()
        with pytest.raises(BlobNotFound):
            await store.open(new_key())

    asyncio.run(main())


def test_delete_removes_and_is_idempotent(backend: Backend) -> None:
    async def main() -> None:
        store = backend.open()
        key, other = new_key(), new_key()
        await store.put(key, stage(store, b"one"))
        await store.put(other, stage(store, b"two"))
        await store.delete(key)
        with pytest.raises(BlobNotFound):
            await store.open(key)
        await store.delete(key)
        await store.delete(new_key())
        kept = await store.open(other)
        assert b"".join(await read_all(kept, 1024)) == b"two"
        await kept.close()

    asyncio.run(main())


class FailingFile(io.FileIO):
    """A file whose reads fail with EIO (or, if `short`, end) once `limit` bytes are read."""

    limit = 0
    short = False

    def _past_limit(self) -> bool:
        if self.tell() < self.limit:
            return False
        if self.short:
            return True
        raise OSError(5, "Input/output error (injected)")

    def readinto(self, buffer: Any) -> int:
        return 0 if self._past_limit() else super().readinto(buffer)

    def read(self, size: int | None = -1) -> bytes:
        return b"" if self._past_limit() else super().read(size)


class FailingPath(PosixPath):
    """A staged path whose file stops reading after `limit` bytes."""

    limit = 0
    short = False

    def open(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = FailingFile(self, mode.replace("b", ""))
        f.limit, f.short = self.limit, self.short
        return f


def test_a_put_whose_staged_read_fails_midway_leaves_nothing(backend: Backend) -> None:
    data = payload(14 * MiB)

    async def main() -> bytes | None:
        store = backend.open()
        key = new_key()
        staged = FailingPath(stage(store, data))
        # Past two whole parts, so some have gone up when the read fails.
        staged.limit = 2 * PART_BYTES + MiB
        try:
            await store.put(key, staged)
        except (OSError, StorageUnavailable):
            with pytest.raises(BlobNotFound):
                await store.open(key)
            return None
        blob = await store.open(key)
        whole = b"".join(await read_all(blob, MiB))
        await blob.close()
        return whole

    outcome = asyncio.run(main())
    if backend.kind == "s3":
        # The S3 store reads the staged file; the file store only renames it in, so its
        # put never meets the failure and the blob it leaves is the whole file.
        assert outcome is None
    else:
        assert outcome == data


def test_s3_failed_upload_is_aborted(s3_backend: Backend, s3_client: Any) -> None:
    data = payload(14 * MiB)

    async def main() -> None:
        store = s3_backend.open()
        staged = FailingPath(stage(store, data))
        staged.limit = 2 * PART_BYTES + MiB
        with pytest.raises(OSError, match="injected"):
            await store.put(new_key(), staged)

    asyncio.run(main())
    bucket, _ = s3_location(s3_backend.url)
    # Parts of an upload neither completed nor aborted would linger (and be billed).
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_a_staged_file_that_ends_early_is_refused(s3_backend: Backend) -> None:
    data = payload(2 * MiB)

    async def main() -> None:
        store = s3_backend.open()
        key = new_key()
        # Shorter than it said it was: a put must not store a truncated original.
        staged = FailingPath(stage(store, data))
        staged.limit, staged.short = MiB, True
        with pytest.raises(OSError, match="changed while uploading"):
            await store.put(key, staged)
        with pytest.raises(BlobNotFound):
            await store.open(key)

    asyncio.run(main())


def test_s3_a_blob_deleted_while_open_reads_as_not_found(s3_backend: Backend) -> None:
    data = payload(3 * MiB)

    async def main() -> None:
        store = s3_backend.open()
        key = new_key()
        await store.put(key, stage(store, data))
        blob = await store.open(key)
        await store.delete(key)
        with pytest.raises(BlobNotFound):
            await read_all(blob, 256 * 1024)

    asyncio.run(main())


def test_s3_dead_endpoint_is_storage_unavailable_within_seconds(
    s3_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")

    async def main() -> None:
        store = s3_backend.open()
        small, large = stage(store, b"x" * 1000), stage(store, payload(12 * MiB))
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "put": lambda: store.put(new_key(), small),
            "put multipart": lambda: store.put(new_key(), large),
            "open": lambda: store.open(new_key()),
            "delete": lambda: store.delete(new_key()),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as caught:
                await call()
            elapsed = time.monotonic() - started
            assert elapsed < 5, (name, elapsed)
            assert caught.value.engine == "S3"
            assert "\n" not in str(caught.value)

    asyncio.run(main())


def test_s3_engine_dying_mid_read_is_storage_unavailable(
    s3: S3Server, s3_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(3 * MiB)

    async def main(relay: Cutoff) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", relay.via(s3.endpoint))
        store = s3_backend.open()
        key = new_key()
        await store.put(key, stage(store, data))
        blob = await store.open(key)
        chunks = blob.chunks(256 * 1024)
        assert len(await anext(chunks)) == 256 * 1024
        relay.cut()
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            async for _ in chunks:
                pass
        assert time.monotonic() - started < 5

    with Cutoff.to(s3.endpoint) as relay:
        asyncio.run(main(relay))


def test_s3_engine_dying_mid_upload_leaves_nothing(
    s3: S3Server, s3_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(14 * MiB)
    key = new_key()

    async def main(relay: Cutoff) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", relay.via(s3.endpoint))
        store = s3_backend.open()
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await store.put(key, stage(store, data))
        assert time.monotonic() - started < 10
        assert relay.upstream_bytes > PART_BYTES + 2 * MiB  # the cut it failed for
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
        with pytest.raises(BlobNotFound):
            await s3_backend.open().open(key)

    # Cut once the first part and some of the second have gone through.
    with Cutoff.to(s3.endpoint, cut_after=PART_BYTES + 2 * MiB) as relay:
        asyncio.run(main(relay))


def test_s3_a_slow_upload_is_not_cut_short(
    s3: S3Server, s3_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sending takes about 6 s: longer than a stalled read may last, which is no stall.
    data = payload(3 * MiB)
    key = new_key()

    async def main(relay: Cutoff) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", relay.via(s3.endpoint))
        store = s3_backend.open()
        started = time.monotonic()
        await store.put(key, stage(store, data))
        assert time.monotonic() - started > 5  # slow indeed
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
        blob = await s3_backend.open().open(key)
        assert b"".join(await read_all(blob, MiB)) == data

    with Cutoff.to(s3.endpoint, upstream_rate=512 * 1024) as relay:
        asyncio.run(main(relay))


def test_s3_prefix_places_objects_under_it(s3_backend: Backend, s3_client: Any) -> None:
    key = new_key()

    async def main() -> None:
        store = s3_backend.open()
        await store.put(key, stage(store, b"under the prefix"))

    asyncio.run(main())
    bucket, prefix = s3_location(s3_backend.url)
    listed = s3_client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"{prefix}/{key}"]


# Run in a process of its own, whose peak resident memory is reset once everything is
# warm: obstore's buffers live in Rust's allocator, which tracemalloc does not see.
MEMORY_SCRIPT = """
import asyncio, hashlib, json, os, re, sys
from pathlib import Path
from cache.backends import open_blob_store

def status(field):
    found = re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text())
    return int(found[1]) * 1024

async def main(url, staging, size):
    store = open_blob_store(url, Path(staging))
    digest = hashlib.sha256()
    big = store.staging / "big"
    with big.open("wb") as f:
        for n in range(size // (1 << 20)):
            piece = hashlib.sha256(n.to_bytes(4, "big")).digest() * (1 << 15)
            digest.update(piece)
            f.write(piece)
    warm = store.staging / "warm"
    warm.write_bytes(b"w" * 300_000)
    await store.put("warm", warm)
    blob = await store.open("warm")
    async for _ in blob.chunks(262144):
        pass
    await blob.close()
    Path("/proc/self/clear_refs").write_text("5")
    baseline = status("VmRSS")
    await store.put("big", big)
    blob = await store.open("big")
    back = hashlib.sha256()
    async for chunk in blob.chunks(262144):
        back.update(chunk)
    await blob.close()
    same = back.digest() == digest.digest()
    print(json.dumps({"peak": status("VmHWM") - baseline, "same": same}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_memory_per_transfer_is_a_few_chunks_not_the_blob(backend: Backend) -> None:
    size = 64 * MiB
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, backend.url, str(backend.staging), str(size)],
        cwd=ROOT,
        env={**os.environ, **backend.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["same"]
    # An S3 upload holds about three 5 MiB parts (16 MiB measured), a download a few
    # ranges of 1 MiB; a store that held the whole blob would pass 64 MiB.
    assert result["peak"] < 24 * MiB, result


def test_blob_urls_pick_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    staging = tmp_path / "staging"
    files = open_blob_store(f"file://{tmp_path / 'blobs'}", staging)
    assert isinstance(files, FileBlobStore)
    assert files.staging == tmp_path / "blobs" / "tmp"
    s3 = open_blob_store("s3://my-bucket.example/a/b/", staging)
    assert isinstance(s3, S3BlobStore)
    assert s3.staging == staging
    assert staging.is_dir()
    assert s3_location("s3://my-bucket.example") == ("my-bucket.example", "")
    assert s3_location("s3://my-bucket.example/") == ("my-bucket.example", "")
    assert s3_location("s3://abc/a/b/") == ("abc", "a/b")


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///images",
        "s3://ab",
        "s3://Upper-Case",
        "s3://under_score",
        "s3://-starts-with-hyphen",
        "s3://key:secret@bucket",
        "s3://bucket:9000",
        "s3://bucket?region=eu",
        "s3://bucket/a//b",
        "s3://bucket/a/../b",
        "ftp://bucket",
        "file://",
        "bucket",
    ],
)
def test_bad_blob_urls_are_config_errors(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="IMAGESVC_BLOB_URL"):
        open_blob_store(url, tmp_path)


def test_config_errors_say_what_is_supported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"s3://BUCKET\[/PREFIX\]"):
        open_blob_store("s3://x", tmp_path)
    with pytest.raises(ConfigError, match=r"file:///path or s3://BUCKET\[/PREFIX\]"):
        open_blob_store("gs://bucket", tmp_path)
