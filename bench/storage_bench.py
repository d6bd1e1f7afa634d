"""Each storage engine against the embedded default it replaces, at the backend Protocols.

In process and async, as the cache service calls them, so the figures are the engines'
own cost and nothing of gRPC's: blobs (S3 on moto's server against files), metadata
(PostgreSQL against SQLite) and variants (Redis against the memory + disk tiers). Each
engine is timed in blocks alternating with its baseline in the same run; ratio =
engine time / baseline time (above 1: the engine is slower).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import charts
from bench.timing import AsyncOp, interleaved_async_ms
from cache.blobs import BlobStore
from cache.blobs.files import FileBlobStore
from cache.blobs.s3 import S3BlobStore
from cache.metadata import ImageRecord, MetadataStore
from cache.metadata.postgres import PostgresMetadataStore
from cache.metadata.sqlite import SqliteMetadataStore
from cache.variants import Variant, VariantCache, VariantRecord
from cache.variants.local import DiskLRU, MemoryLRU, TieredVariantCache
from cache.variants.redis import RedisVariantCache
from common.ids import new_image_id
from tests.engines import REDIS_URL, postgres_database, redis_prefix, s3_server

KiB = 1024
MiB = 1024 * KiB
CHUNK = 256 * KiB  # the service's default stream chunk
# (label, bytes, timed calls per backend and op): fewer of the large ones, which take
# long enough that a few already give a steady median.
SIZES = [("100 KiB", 100 * KiB, 120), ("10 MiB", 10 * MiB, 15)]
METADATA_RUNS = 300
OWNER = "bench-owner"
PAGE = 50  # ListImages' default page size


@dataclass(frozen=True)
class Row:
    """One op of one size: the baseline's median ms and each engine's, by name."""

    kind: str
    size: str
    op: str
    times: dict[str, float]


async def _compare(
    kind: str, size: str, ops: dict[str, dict[str, AsyncOp]], runs: int
) -> list[Row]:
    """Time every backend's version of each op (backends in the order given, the first
    being the baseline), op by op."""
    rows = []
    for op, by_backend in ops.items():
        record = charts.recorder(f"{kind}, {size}: {op}", *by_backend)
        times = await interleaved_async_ms(list(by_backend.values()), runs, record=record)
        rows.append(Row(kind, size, op, dict(zip(by_backend, times, strict=True))))
    return rows


def _blob_ops(store: BlobStore, data: bytes) -> dict[str, AsyncOp]:
    keys: dict[int, str] = {}

    async def stage(i: int) -> None:
        # Staged files the last put left (S3 copies them; the caller removes them).
        for old in store.staging.glob("bench-*"):
            old.unlink()
        keys[i] = new_image_id()
        await asyncio.to_thread((store.staging / f"bench-{i}").write_bytes, data)

    async def put(i: int) -> None:
        await store.put(keys[i], store.staging / f"bench-{i}")

    async def get(i: int) -> None:
        blob = await store.open(keys[i])
        try:
            got = 0
            async for chunk in blob.chunks(CHUNK):
                got += len(chunk)
            assert got == len(data)
        finally:
            await blob.close()

    async def stat(i: int) -> None:
        blob = await store.open(keys[i])
        assert blob.size == len(data)
        await blob.close()

    return {
        "put": AsyncOp(put, prepare=stage),
        "get": AsyncOp(get),
        "stat": AsyncOp(stat),
    }


async def blob_rows(root: Path) -> list[Row]:
    """Files (the default) against S3 on moto's standalone server."""
    with s3_server(root) as s3:
        os.environ.update(s3.env())  # obstore reads the endpoint and keys from there
        files = FileBlobStore(root / "blobs")
        bucket = S3BlobStore(s3.create_bucket(), "", root / "s3-staging")
        rows = []
        try:
            for label, size, runs in SIZES:
                data = os.urandom(size)
                ops = {"file": _blob_ops(files, data), "S3 (moto)": _blob_ops(bucket, data)}
                by_op = {op: {name: ops[name][op] for name in ops} for op in ("put", "get", "stat")}
                rows += await _compare("blobs", label, by_op, runs)
        finally:
            await files.close()
            await bucket.close()
        return rows


def _record(image_id: str) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        original_filename="photo.jpg",
        media_type="image/jpeg",
        format="JPEG",
        width=1200,
        height=800,
        frames=1,
        byte_size=100 * KiB,
        sha256="0" * 64,
        created_ns=time.time_ns(),
        owner=OWNER,
        visibility=1,
    )


def _metadata_ops(store: MetadataStore) -> dict[str, AsyncOp]:
    ids: dict[int, str] = {}

    async def insert(i: int) -> None:
        ids[i] = new_image_id()
        # An upload's two writes: the intent before its blob, the record after.
        await store.intend(ids[i], time.time_ns())
        await store.insert(_record(ids[i]))

    async def get(i: int) -> None:
        assert await store.get(ids[i]) is not None

    async def first_page(i: int) -> None:
        page = await store.list(OWNER, PAGE, "")
        assert page.records

    return {
        "insert": AsyncOp(insert),
        "get": AsyncOp(get),
        f"list {PAGE}": AsyncOp(first_page),
    }


async def metadata_rows(root: Path) -> list[Row]:
    """SQLite (the default) against PostgreSQL, per record (records are small)."""
    with postgres_database() as url:
        sqlite = SqliteMetadataStore(root / "metadata.db")
        postgres = await PostgresMetadataStore.open(url)
        try:
            ops = {"SQLite": _metadata_ops(sqlite), "PostgreSQL": _metadata_ops(postgres)}
            by_op = {op: {name: ops[name][op] for name in ops} for op in ops["SQLite"]}
            return await _compare("metadata", "record", by_op, METADATA_RUNS)
        finally:
            await sqlite.close()
            await postgres.close()


def _variant_ops(cache: VariantCache, image_id: str, data: bytes) -> dict[str, AsyncOp]:
    digest = hashlib.sha256(data).hexdigest()

    def variant(i: int) -> Variant:
        key = f"w300-q{i + 10}"
        return Variant(
            VariantRecord(image_id, key, "image/jpeg", 300, 200, len(data), digest), data
        )

    async def put(i: int) -> None:
        await cache.put(variant(i))

    async def get(i: int) -> None:
        assert await cache.get(image_id, variant(i).record.key) is not None

    return {"put": AsyncOp(put), "get": AsyncOp(get)}


@contextlib.asynccontextmanager
async def _variant_caches(root: Path, prefix: str) -> AsyncIterator[dict[str, VariantCache]]:
    disk = DiskLRU(root / "variants", 2048 * MiB)
    await asyncio.to_thread(disk.load)
    # The disk tier alone: a memory tier too small to hold any variant sends every get
    # to disk, which is where a tiered cache's misses in memory go.
    disk_only = DiskLRU(root / "variants-disk", 2048 * MiB)
    await asyncio.to_thread(disk_only.load)
    caches: dict[str, VariantCache] = {
        "memory+disk": TieredVariantCache(MemoryLRU(256 * MiB), disk),
        "memory": TieredVariantCache(MemoryLRU(256 * MiB), None),
        "disk tier": TieredVariantCache(MemoryLRU(1), disk_only),
        "Redis": RedisVariantCache(REDIS_URL, prefix),
    }
    try:
        yield caches
    finally:
        for cache in caches.values():
            await cache.close()


async def variant_rows(root: Path) -> list[Row]:
    """The memory + disk tiers (the default) against Redis; memory or disk alone too."""
    rows = []
    with redis_prefix() as prefix:
        async with _variant_caches(root, prefix) as caches:
            for label, size, runs in SIZES:
                data = os.urandom(size)
                ids = {name: new_image_id() for name in caches}
                ops = {name: _variant_ops(c, ids[name], data) for name, c in caches.items()}
                by_op = {op: {name: ops[name][op] for name in ops} for op in ("put", "get")}
                rows += await _compare("variants", label, by_op, runs)
                for name, cache in caches.items():  # the shared Redis does not evict: keep it small
                    await cache.purge(ids[name])
    return rows


def report(rows: Sequence[Row]) -> None:
    print(
        "storage: median ms per operation at the backend Protocols (in process, async);"
        " ratio = engine / embedded default, measured in the same run (> 1: slower)"
    )
    print(f"{'':>9} {'size':>8} {'op':>8} {'backend':>12} {'ms':>9} {'ratio':>8}")
    for row in rows:
        base_name, base = next(iter(row.times.items()))
        for name, ms in row.times.items():
            ratio = "baseline" if name == base_name else f"{ms / base:.2f}x"
            line = f"{row.kind:>9} {row.size:>8} {row.op:>8} {name:>12} {ms:>9.3f} {ratio:>8}"
            disk = row.times.get("disk tier")
            if name == "Redis" and disk:
                # What a get missing memory reads instead: the like-for-like figure, since
                # the default's puts do not wait for the disk and its gets hit memory.
                line += f"  ({ms / disk:.2f}x the disk tier)"
            print(line)


async def run() -> None:
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-") as tmp:
        root = Path(tmp)
        rows = await blob_rows(root)
        rows += await metadata_rows(root)
        rows += await variant_rows(root)
    report(rows)


def main() -> None:
    asyncio.run(run())
