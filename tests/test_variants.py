"""The variant cache: LRU within byte budgets, survival across restarts, purge on delete."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc

from cache.variants import Variant, VariantRecord
from cache.variants.local import DiskLRU, Leases, MemoryLRU, TieredVariantCache
from common.errors import Reason
from tests.support import ServiceProcess, channel, failure, get_variant, png_bytes, upload

IMAGE = "I" * 22


def variant(key: str, size: int, image_id: str = IMAGE) -> Variant:
    data = key.encode()[:1] * size
    record = VariantRecord(
        image_id, key, "image/webp", 10, 10, size, hashlib.sha256(data).hexdigest()
    )
    return Variant(record, data)


def test_memory_lru_evicts_least_recently_used_within_budget() -> None:
    lru = MemoryLRU(budget=3000)
    for key in "abc":
        lru.put(variant(key, 1000))
    assert lru.get(IMAGE, "a") is not None  # a is now the most recent
    lru.put(variant("d", 1000))
    assert lru.get(IMAGE, "b") is None
    assert {k for k in "acd" if lru.get(IMAGE, k)} == set("acd")
    assert lru.used == 3000
    lru.put(variant("huge", 3001))  # larger than the whole budget: not kept
    assert lru.get(IMAGE, "huge") is None and lru.used == 3000
    assert lru.purge(IMAGE) == set("acd") and lru.used == 0


def stored_keys(root: Path) -> set[str]:
    """The keys in the disk tier's file, as another process would see them."""
    with contextlib.closing(sqlite3.connect(root / "variants.db")) as db:
        return {row[0] for row in db.execute("SELECT key FROM variants")}


def test_disk_lru_evicts_within_budget_and_survives_reload(tmp_path: Path) -> None:
    async def scenario() -> None:
        entry = 1000 + 256  # payload plus the row's overhead
        disk = DiskLRU(tmp_path, budget=3 * entry)
        disk.load()
        for key in "abc":
            await disk.put(variant(key, 1000))
        assert (await disk.get(IMAGE, "c")).data == b"c" * 1000  # type: ignore[union-attr]
        await disk.flush()
        assert await disk.get(IMAGE, "a") is not None  # read back from the file
        await disk.put(variant("d", 1000))
        assert await disk.get(IMAGE, "b") is None
        assert disk.used <= disk.budget
        await disk.flush()
        assert stored_keys(tmp_path) == set("acd")
        disk.close()

        reloaded = DiskLRU(tmp_path, budget=3 * entry)
        reloaded.load()
        assert reloaded.used == disk.used
        got = await reloaded.get(IMAGE, "c")
        assert got is not None and got.data == b"c" * 1000
        # c was just read, so the oldest is now a, then d.
        await reloaded.put(variant("e", 1000))
        assert await reloaded.get(IMAGE, "a") is None
        assert await reloaded.get(IMAGE, "c") is not None
        reloaded.close()

        smaller = DiskLRU(tmp_path, budget=entry)  # a smaller budget on restart evicts
        smaller.load()
        assert stored_keys(tmp_path) == {"c"}
        smaller.close()

    asyncio.run(scenario())


def test_disk_lru_treats_damaged_bytes_as_a_miss(tmp_path: Path) -> None:
    async def scenario() -> None:
        disk = DiskLRU(tmp_path, budget=10_000)
        disk.load()
        await disk.put(variant("a", 100))
        await disk.flush()
        with contextlib.closing(sqlite3.connect(tmp_path / "variants.db")) as db:
            db.execute("UPDATE variants SET data = ? WHERE key = 'a'", (b"x" * 100,))
            db.commit()
        assert await disk.get(IMAGE, "a") is None
        await disk.flush()
        assert stored_keys(tmp_path) == set() and disk.used == 0
        disk.close()

    asyncio.run(scenario())


def test_disk_lru_serves_writes_still_queued_and_purges_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        disk = DiskLRU(tmp_path, budget=100_000)
        disk.load()
        for n in range(50):  # not waited for: read back at once, from the queue or the file
            await disk.put(variant(f"k{n}", 500))
            got = await disk.get(IMAGE, f"k{n}")
            assert got is not None and got.data == b"k" * 500
        await disk.put(variant("other", 10, image_id="J" * 22))
        assert len(await disk.purge(IMAGE)) == 50  # queued after the writes: removes them all
        assert stored_keys(tmp_path) == {"other"}
        assert await disk.get(IMAGE, "k3") is None
        disk.close()

    asyncio.run(scenario())


def test_disk_lru_forgets_a_variant_whose_write_failed(tmp_path: Path) -> None:
    async def scenario() -> None:
        disk = DiskLRU(tmp_path, budget=100_000)
        disk.load()
        await disk.flush()
        disk._db.close()  # every write fails from now on, as on a full disk
        await disk.put(variant("a", 100))
        await disk.flush()
        assert await disk.get(IMAGE, "a") is None
        assert disk.used == 0
        disk.close()

    asyncio.run(scenario())


def test_tiered_cache_promotes_from_disk_and_purges_both(tmp_path: Path) -> None:
    async def scenario() -> None:
        disk = DiskLRU(tmp_path, budget=100_000)
        disk.load()
        tiers = TieredVariantCache(MemoryLRU(budget=1500), disk)
        await tiers.put(variant("a", 1000))
        await tiers.put(variant("b", 1000))  # memory holds only b now
        assert tiers.memory.get(IMAGE, "a") is None
        assert await tiers.get(IMAGE, "a") is not None  # from disk ...
        assert tiers.memory.get(IMAGE, "a") is not None  # ... and promoted
        await tiers.put(variant("z", 10, image_id="J" * 22))
        assert await tiers.purge(IMAGE) == 2
        assert await tiers.get(IMAGE, "a") is None and await tiers.get(IMAGE, "b") is None
        assert await tiers.get("J" * 22, "z") is not None
        await tiers.close()

    asyncio.run(scenario())


def test_leases_stay_within_their_limit_dropping_expired_then_oldest() -> None:
    async def scenario() -> None:
        leases = Leases(limit=3)
        assert leases.claim(IMAGE, "a", 60)
        assert leases.claim(IMAGE, "short", 0.01)
        assert leases.claim(IMAGE, "b", 60)
        # scenario: the short lease runs out
        await asyncio.sleep(0.02)
        assert leases.claim(IMAGE, "c", 60)  # room made by the expired one, not the oldest
        assert len(leases) == 3 and not leases.claim(IMAGE, "a", 60)
        assert leases.claim(IMAGE, "d", 60)  # none expired: the oldest, a, goes
        assert len(leases) == 3
        assert leases.claim(IMAGE, "a", 60)
        assert not leases.claim(IMAGE, "c", 60) and not leases.claim(IMAGE, "d", 60)

    asyncio.run(scenario())


def put_variant(
    stub: pb_grpc.CacheServiceStub, image_id: str, key: str, data: bytes
) -> pb.PutVariantResponse:
    def requests() -> Iterator[pb.PutVariantRequest]:
        header = pb.PutVariantHeader(
            image_id=image_id, key=key, media_type="image/png", width=3, height=4
        )
        yield pb.PutVariantRequest(header=header)
        for start in range(0, len(data), 100_000):
            yield pb.PutVariantRequest(chunk=data[start : start + 100_000])

    response: pb.PutVariantResponse = stub.PutVariant(requests(), timeout=30)
    return response


@pytest.fixture
def small_cache(tmp_path: Path) -> Iterator[ServiceProcess]:
    env = {"IMAGESVC_VARIANT_MEMORY_BYTES": "250000", "IMAGESVC_VARIANT_DISK_BYTES": "350000"}
    server = ServiceProcess("cache", tmp_path / "data", env).start()
    yield server
    server.kill()


def test_variants_over_grpc_evict_survive_restart_and_purge(small_cache: ServiceProcess) -> None:
    with channel(small_cache.address) as ch:
        stub = pb_grpc.CacheServiceStub(ch)
        image_id = upload(stub, png_bytes(20, 20)).id
        blobs = {k: bytes([n]) * 100_000 for n, k in enumerate(["k1", "k2", "k3", "k4"])}
        for key in ("k1", "k2", "k3"):
            meta = put_variant(stub, image_id, key, blobs[key]).variant
            assert meta.byte_size == 100_000 and meta.width == 3
        assert get_variant(stub, image_id, "k1") == blobs["k1"]  # k2 is now the oldest
        put_variant(stub, image_id, "k4", blobs["k4"])
        assert get_variant(stub, image_id, "k2") is None
        for key in ("k1", "k3", "k4"):
            assert get_variant(stub, image_id, key) == blobs[key]

    assert small_cache.terminate() == 0
    small_cache.start()
    with channel(small_cache.address) as ch:
        stub = pb_grpc.CacheServiceStub(ch)
        for key in ("k1", "k3", "k4"):
            assert get_variant(stub, image_id, key) == blobs[key]
        deleted = stub.DeleteImage(pb.DeleteImageRequest(id=image_id))
        assert deleted.purged_variants == 3
        for key in blobs:
            assert get_variant(stub, image_id, key) is None
        assert not stored_keys(small_cache.data_dir / "variants")


def test_put_variant_refusals(stub: pb_grpc.CacheServiceStub) -> None:
    image_id = upload(stub, png_bytes(5, 5)).id
    for key in ("", "../../etc", "a/b", "k" * 129):
        error = failure(put_variant, stub, image_id, key, b"x")
        assert (error.reason, error.metadata["field"]) == (Reason.INVALID_ARGUMENT, "key")
    error = failure(put_variant, stub, image_id, "k", b"")
    assert error.reason == Reason.INVALID_ARGUMENT
    assert get_variant(stub, image_id, "k") is None
    answers = list(stub.GetVariant(pb.GetVariantRequest(image_id=image_id, key="nope")))
    assert [a.WhichOneof("payload") for a in answers] == ["miss"]


def test_a_variant_of_an_unknown_image_is_refused(stub: pb_grpc.CacheServiceStub) -> None:
    unknown = "B" * 22
    assert failure(put_variant, stub, unknown, "k", b"x").reason == Reason.IMAGE_NOT_FOUND


def test_a_variant_read_claims_the_render_on_a_miss(stub: pb_grpc.CacheServiceStub) -> None:
    image_id = upload(stub, png_bytes(9, 8)).id

    def miss(claim: bool) -> pb.VariantMiss:
        request = pb.GetVariantRequest(image_id=image_id, key="absent", claim=claim)
        (answer,) = list(stub.GetVariant(request))
        assert answer.WhichOneof("payload") == "miss"
        return answer.miss

    assert not miss(claim=False).claimed  # asked for nothing
    assert miss(claim=True).claimed  # the lease is this caller's
    assert not miss(claim=True).claimed  # held by the first: another renders it
    put_variant(stub, image_id, "absent", b"made")  # storing it ends the lease
    assert get_variant(stub, image_id, "absent") == b"made"


def test_a_variant_miss_says_whether_the_image_exists(stub: pb_grpc.CacheServiceStub) -> None:
    image_id = upload(stub, png_bytes(6, 6)).id
    answers = list(stub.GetVariant(pb.GetVariantRequest(image_id=image_id, key="absent")))
    assert [a.WhichOneof("payload") for a in answers] == ["miss"]
    error = failure(stub.GetVariant, pb.GetVariantRequest(image_id="C" * 22, key="absent"))
    assert error.reason == Reason.IMAGE_NOT_FOUND


def test_a_variant_over_the_limit_is_refused(tmp_path: Path) -> None:
    server = ServiceProcess("cache", tmp_path, {"IMAGESVC_MAX_VARIANT_BYTES": "1000"}).start()
    try:
        with channel(server.address) as ch:
            stub = pb_grpc.CacheServiceStub(ch)
            image_id = upload(stub, png_bytes(5, 5)).id
            put_variant(stub, image_id, "fits", b"1" * 1000)
            error = failure(put_variant, stub, image_id, "big", b"3" * 1001)
            assert (error.code, error.reason) == (
                grpc.StatusCode.OUT_OF_RANGE,
                Reason.PAYLOAD_TOO_LARGE,
            )
            assert get_variant(stub, image_id, "fits") == b"1" * 1000
            assert get_variant(stub, image_id, "big") is None
    finally:
        server.kill()
