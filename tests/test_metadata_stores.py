"""The MetadataStore contract, once per engine (SQLite in a file, PostgreSQL in a database of
its own), then what only PostgreSQL has: replicas, migrations, and its failures."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cache.backends import open_metadata_store, postgres_url
from cache.metadata import (
    DeletionsMissed,
    ImageRecord,
    IntentLost,
    InvalidPageToken,
    MetadataStore,
    Page,
    encode_token,
)
from cache.metadata.fanout import DeletionFanout
from cache.metadata.migrate import migrate, migrations
from cache.metadata.postgres import CALL_TIMEOUT, PostgresMetadataStore
from cache.metadata.sqlite import SqliteMetadataStore
from cache.storage import StorageUnavailable
from common.env import ConfigError
from common.ids import new_image_id
from tests.engines import Cutoff, postgres_database
from tests.support import free_port

MINUTE_NS = 60 * 10**9


def record(owner: str = "", created_ns: int = 0, **changes: Any) -> ImageRecord:
    base = ImageRecord(
        id=new_image_id(),
        original_filename="cat.jpg",
        media_type="image/jpeg",
        format="JPEG",
        width=4000,
        height=3000,
        frames=1,
        byte_size=2_018_972,
        sha256="ab" * 32,
        created_ns=created_ns or time.time_ns(),
        owner=owner,
        visibility=0,
    )
    return replace(base, **changes)


async def stored(store: MetadataStore, rec: ImageRecord) -> ImageRecord:
    """rec, uploaded as the service does it: intent first, then the record."""
    await store.intend(rec.id, rec.created_ns)
    await store.insert(rec)
    return rec


async def next_id(deletions: AsyncIterator[str], seconds: float = 5) -> str:
    return await asyncio.wait_for(anext(deletions), seconds)


@dataclass(frozen=True)
class Engine:
    name: str
    url: str

    async def open(self) -> MetadataStore:
        return await open_metadata_store(self.url)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A store's URL on an empty database of the test's own."""
    if request.param == "sqlite":
        yield Engine("sqlite", f"sqlite://{tmp_path / 'metadata.db'}")
    else:
        with postgres_database() as url:
            yield Engine("postgresql", url)


def run(engine: Engine, scenario: Callable[[MetadataStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = await engine.open()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_insert_then_get_returns_every_field(engine: Engine) -> None:
    async def scenario(store: MetadataStore) -> None:
        rec = record(
            owner="ölaf@例え.jp",
            original_filename="Ünïcødé 猫 🐈.jpg",
            byte_size=5 * 2**30,  # past 32 bits
            visibility=1,
            frames=12,
            blurhash="LEHV6nWB2yk8pyo0adR*.7kCMdnj",
            # Raw bytes, any of them: a NUL, a byte that is no UTF-8, the longest hash.
            thumbhash=bytes([0x00, 0xFF, 0x80, 0x1F, 0x27]) + bytes(range(20)),
        )
        await stored(store, rec)
        assert await store.get(rec.id) == rec
        assert (await store.list(rec.owner, 5, "")).records == [rec]
        assert await store.get(new_image_id()) is None

        # An image none could be made of keeps empty ones.
        bare = await stored(store, record(blurhash="", thumbhash=b""))
        got = await store.get(bare.id)
        assert got is not None
        assert (got.blurhash, got.thumbhash) == ("", b"")

    run(engine, scenario)


def test_insert_without_intent_is_refused_and_stores_nothing(engine: Engine) -> None:
    async def scenario(store: MetadataStore) -> None:
        rec = record()
        with pytest.raises(IntentLost):
            await store.insert(rec)
        assert await store.get(rec.id) is None
        assert (await store.list("", 10, "")).records == []

    run(engine, scenario)


def test_list_is_the_owners_newest_first_across_pages(engine: Engine) -> None:
    async def scenario(store: MetadataStore) -> None:
        now = time.time_ns()
        # Three share a timestamp: the id breaks the tie, bytewise, on every engine.
        mine = [await stored(store, record("ann", now + i // 3)) for i in range(8)]
        for i in range(3):
            await stored(store, record("bob", now + 100 + i))
        expected = sorted(mine, key=lambda r: (r.created_ns, r.id), reverse=True)
        seen: list[ImageRecord] = []
        token = ""
        pages = 0
        while True:
            page = await store.list("ann", 3, token)
            pages += 1
            seen += page.records
            token = page.next_token
            if not token:
                break
        assert seen == expected
        assert pages == 3
        assert await store.list("carol", 3, "") == Page([], "")

    run(engine, scenario)


def test_list_by_sha256_finds_the_owners_images_of_those_bytes_on_an_index(
    engine: Engine,
) -> None:
    async def scenario(store: MetadataStore) -> None:
        cat, dog = "ca" * 32, "d0" * 32
        mine = [await stored(store, record("ann", 1000 + i, sha256=cat)) for i in range(5)]
        await stored(store, record("ann", 2000, sha256=dog))
        await stored(store, record("bob", 3000, sha256=cat))  # bob's bytes are no answer
        seen: list[ImageRecord] = []
        token = ""
        while True:
            page = await store.list("ann", 2, token, cat)
            seen += page.records
            token = page.next_token
            if not token:
                break
        assert seen == mine[::-1]
        assert [r.sha256 for r in (await store.list("ann", 9, "", dog)).records] == [dog]
        assert (await store.list("carol", 9, "", cat)).records == []
        assert (await store.list("ann", 9, "", "ee" * 32)).records == []
        assert len((await store.list("ann", 9, "")).records) == 6  # no filter: all of ann's

    run(engine, scenario)
    query = "SELECT * FROM images WHERE owner = 'ann' AND sha256 = 'x' ORDER BY created_ns DESC"
    if engine.name == "sqlite":
        path = engine.url.removeprefix("sqlite://")
        with contextlib.closing(sqlite3.connect(path)) as db:
            plan = " ".join(str(row) for row in db.execute(f"EXPLAIN QUERY PLAN {query}"))
        assert "images_by_owner_sha256" in plan
    else:
        with psycopg.connect(engine.url) as conn:
            names = [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes")]
        assert "images_by_owner_sha256" in names


def test_page_tokens_not_of_the_store_shape_are_refused(engine: Engine) -> None:
    async def scenario(store: MetadataStore) -> None:
        await stored(store, record("ann", 1000))
        for token in ("nope", "x" * 31, "!" * 32):
            with pytest.raises(InvalidPageToken):
                await store.list("ann", 5, token)
        # A well-formed token is a position: past everything, or before everything.
        later = encode_token(2000, new_image_id())
        assert [r.created_ns for r in (await store.list("ann", 5, later)).records] == [1000]
        earlier = encode_token(10, new_image_id())
        assert (await store.list("ann", 5, earlier)).records == []

    run(engine, scenario)


def test_delete_removes_the_record_once(engine: Engine) -> None:
    async def scenario(store: MetadataStore) -> None:
        rec = await stored(store, record("ann"))
        kept = await stored(store, record("ann"))
        assert await store.delete(rec.id, time.time_ns()) is True
        assert await store.delete(rec.id, time.time_ns()) is False
        assert await store.delete(new_image_id(), time.time_ns()) is False
        assert await store.get(rec.id) is None
        assert (await store.list("ann", 10, "")).records == [kept]

    run(engine, scenario)


def test_intents_say_what_recovery_must_finish(engine: Engine) -> None:
    async def scenario(store: MetadataStore) -> None:
        t = 1000 * MINUTE_NS
        uploading = new_image_id()
        await store.intend(uploading, t)
        done = await stored(store, record(created_ns=t))
        assert await store.unfinished(t + 100 * MINUTE_NS) == [uploading]
        await store.finish(uploading)

        late = new_image_id()
        await store.intend(late, t)
        assert await store.delete(done.id, t + 60 * MINUTE_NS)
        # A delete's intent at any age; an upload's only once stale.
        assert await store.unfinished(t - 15 * MINUTE_NS) == [done.id]
        assert sorted(await store.unfinished(t + 15 * MINUTE_NS)) == sorted([late, done.id])
        # Swept as stale: the upload may no longer insert its record...
        with pytest.raises(IntentLost):
            await store.insert(record(id=late, created_ns=t))
        assert await store.get(late) is None
        # ...and stays unfinished until recovery says its blob is gone.
        assert sorted(await store.unfinished(0)) == sorted([late, done.id])
        await store.finish(late)
        await store.finish(done.id)
        await store.finish(new_image_id())  # nothing to clear: no error
        assert await store.unfinished(t + 1000 * MINUTE_NS) == []

    run(engine, scenario)


def test_every_deletions_iterator_sees_every_later_delete(engine: Engine) -> None:
    async def scenario(store: MetadataStore) -> None:
        recs = [await stored(store, record()) for _ in range(3)]
        first, second = store.deletions(), store.deletions()
        assert await store.delete(new_image_id(), time.time_ns()) is False  # not announced
        await store.delete(recs[0].id, time.time_ns())
        await store.delete(recs[1].id, time.time_ns())
        for deletions in (first, second):
            assert [await next_id(deletions), await next_id(deletions)] == [
                recs[0].id,
                recs[1].id,
            ]
        third = store.deletions()
        await store.delete(recs[2].id, time.time_ns())
        for deletions in (first, second, third):
            assert await next_id(deletions) == recs[2].id

    run(engine, scenario)


def test_closing_the_store_ends_its_deletions(engine: Engine) -> None:
    async def main() -> None:
        store = await engine.open()
        deletions = store.deletions()
        waiting = asyncio.ensure_future(anext(deletions))
        # scenario: a waiter (most often) already waiting as the store closes; either way it ends
        await asyncio.sleep(0.05)
        await store.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 5)

    asyncio.run(main())


def test_an_existing_sqlite_file_keeps_its_images_and_gains_intents_and_placeholders(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metadata.db"
    old = record("ann", 1000)  # without placeholders, as every image was then
    # The schema as it was before intents.
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            "CREATE TABLE images (id TEXT PRIMARY KEY, original_filename TEXT NOT NULL, "
            "media_type TEXT NOT NULL, format TEXT NOT NULL, width INTEGER NOT NULL, "
            "height INTEGER NOT NULL, frames INTEGER NOT NULL, byte_size INTEGER NOT NULL, "
            "sha256 TEXT NOT NULL, created_ns INTEGER NOT NULL, owner TEXT NOT NULL, "
            "visibility INTEGER NOT NULL) WITHOUT ROWID;"
            "CREATE INDEX images_by_owner ON images (owner, created_ns DESC, id DESC);"
        )
        db.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", astuple(old)[:12])

    async def main() -> None:
        store = SqliteMetadataStore(path)
        try:
            assert await store.get(old.id) == old  # empty placeholders
            new = await stored(store, record("ann", 2000, blurhash="L00000", thumbhash=b"\x01"))
            assert (await store.list("ann", 5, "")).records == [new, old]
        finally:
            await store.close()
        # Opened again (the columns are there now), and by two at once: nothing to add.
        again = [SqliteMetadataStore(path), SqliteMetadataStore(path)]
        try:
            assert await again[0].get(new.id) == new
        finally:
            for store in again:
                await store.close()

    asyncio.run(main())


def test_images_stored_before_placeholders_have_empty_ones_after_the_migration() -> None:
    old = record("ann", 1000)

    async def main(url: str) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for migration in migrations():
                if migration.name in ("images", "intents"):  # the schema before 0003
                    await conn.execute(migration.sql.encode())
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (1, 'images')")
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (2, 'intents')"
            )
            await conn.execute(
                "INSERT INTO images VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                astuple(old)[:12],
            )
        store = await open_metadata_store(url)
        try:
            assert await store.get(old.id) == old  # empty placeholders
            new = await stored(store, record("ann", 2000, blurhash="L00000", thumbhash=b"\x01"))
            assert (await store.list("ann", 5, "")).records == [new, old]
        finally:
            await store.close()

    with postgres_database() as url:
        asyncio.run(main(url))


def test_a_consumer_too_far_behind_is_cut_off() -> None:
    async def main() -> None:
        fanout = DeletionFanout(live=True, backlog=2)
        slow, fast = fanout.subscribe(), fanout.subscribe()
        for image_id in "abc":
            fanout.publish(image_id)
            assert await next_id(fast) == image_id
        with pytest.raises(DeletionsMissed):
            await next_id(slow)
        fanout.publish("d")  # the slow one is no longer fed, and stays cut off
        assert await next_id(fast) == "d"
        with pytest.raises(DeletionsMissed):
            await next_id(slow)

    asyncio.run(main())


def test_a_lost_source_cuts_consumers_off_and_refuses_new_ones_until_it_is_back() -> None:
    async def main() -> None:
        fanout = DeletionFanout(live=True)
        before = fanout.subscribe()
        waiting = asyncio.ensure_future(anext(before))
        # scenario: one turn of the loop, so the consumer is waiting as the source is lost
        await asyncio.sleep(0)
        fanout.lost()
        with pytest.raises(DeletionsMissed):
            await asyncio.wait_for(waiting, 5)
        # Made while the source is down: it would hear nothing, so it is told at once,
        # and its consumer (a cache replica) refuses watchers until one lasts.
        during = fanout.subscribe()
        with pytest.raises(DeletionsMissed):
            await asyncio.wait_for(anext(during), 5)
        fanout.connected()
        after = fanout.subscribe()
        fanout.publish("x")
        assert await next_id(after) == "x"

    asyncio.run(main())


# PostgreSQL only.


def test_deletions_reach_another_replica(postgres_url: str) -> None:
    async def main() -> None:
        one, two = await open_metadata_store(postgres_url), await open_metadata_store(postgres_url)
        try:
            rec = await stored(one, record("ann"))
            assert await two.get(rec.id) == rec
            deletions = two.deletions()
            assert await one.delete(rec.id, time.time_ns())
            assert await next_id(deletions) == rec.id
            assert await two.get(rec.id) is None
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


def test_replicas_starting_together_migrate_once() -> None:
    async def main(url: str) -> None:
        stores = await asyncio.gather(*(open_metadata_store(url) for _ in range(4)))
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                cursor = await conn.execute("SELECT version FROM schema_migrations ORDER BY 1")
                versions = [row[0] for row in await cursor.fetchall()]
                assert versions == [m.version for m in migrations()]
                assert await migrate(conn) == []  # idempotent
            await stored(stores[3], record())
        finally:
            for store in stores:
                await store.close()

    with postgres_database() as url:
        asyncio.run(main(url))


def test_migrations_are_numbered_once_and_shipped_with_the_package() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert {m.name for m in found} >= {"images", "intents", "placeholders", "images_by_sha256"}


def test_metadata_urls_are_checked_before_connecting(tmp_path: Path) -> None:
    for url in (
        "mysql://db.example/images",
        "sqlite://",
        "postgresql://u@db.example:port/images",
        "postgresql://u@db.example:5432",
        "postgresql:///images",
        "postgresql://u@db.example/images?bogus=1",
    ):
        with pytest.raises(ConfigError, match="IMAGESVC_METADATA_URL"):
            asyncio.run(open_metadata_store(url))
    with pytest.raises(ConfigError) as refused:
        postgres_url("postgresql://u:s3cret@db.example:port/images")
    assert "s3cret" not in str(refused.value)
    assert postgres_url("postgres://u@db.example/images") == "postgres://u@db.example/images"

    async def opened(url: str) -> type[object]:
        store = await open_metadata_store(url)
        await store.close()
        return type(store)

    assert asyncio.run(opened(f"sqlite://{tmp_path}/m.db")) is SqliteMetadataStore
    with postgres_database() as url:
        assert url.startswith("postgresql://")
        short = "postgres://" + url.removeprefix("postgresql://")
        assert asyncio.run(opened(short)) is PostgresMetadataStore


def test_postgres_down_at_start_fails_clearly_and_soon() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as failed:
        asyncio.run(
            open_metadata_store(f"postgresql://postgres@127.0.0.1:{port}/db", start_timeout=1)
        )
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}/db" in failed.value.detail
    assert failed.value.engine == "PostgreSQL"


def test_postgres_lost_then_back_is_unavailable_then_used_again(postgres_url: str) -> None:
    async def main(relay: Cutoff) -> None:
        store = await open_metadata_store(relay.via(postgres_url))
        try:
            rec = await stored(store, record())
            deletions = store.deletions()
            relay.cut()

            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await store.get(rec.id)
            assert time.monotonic() - started < CALL_TIMEOUT + 1
            with pytest.raises(DeletionsMissed):
                await next_id(deletions)

            relay.restore()
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert await store.get(rec.id) == rec
                    break
                except StorageUnavailable:
                    assert time.monotonic() < deadline, "the pool did not reconnect"
                    await asyncio.sleep(0.2)
            # Made while the listener may still be reconnecting: once it is back, a
            # fresh iterator hears deletes again.
            while True:
                deletions = store.deletions()
                assert await store.delete(rec.id, time.time_ns())
                try:
                    assert await next_id(deletions, 10) == rec.id
                    break
                except DeletionsMissed:
                    assert time.monotonic() < deadline, "the listener did not reconnect"
                    rec = await stored(store, record())
        finally:
            await store.close()

    with Cutoff.to(postgres_url) as relay:
        asyncio.run(main(relay))
