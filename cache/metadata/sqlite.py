"""The MetadataStore on SQLite in WAL mode: one machine, one replica, nothing else to run."""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from cache.metadata import (
    FIELDS,
    ImageRecord,
    IntentLost,
    Page,
    page_of,
    page_query,
)
from cache.metadata.fanout import DeletionFanout
from cache.storage import StorageFull

T = TypeVar("T")

# IF NOT EXISTS throughout: a data dir made before intents existed gains the table and
# keeps its images.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    original_filename TEXT NOT NULL,
    media_type TEXT NOT NULL,
    format TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    byte_size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    owner TEXT NOT NULL,
    visibility INTEGER NOT NULL,
    blurhash TEXT NOT NULL DEFAULT '',
    thumbhash BLOB NOT NULL DEFAULT x''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS images_by_owner ON images (owner, created_ns DESC, id DESC);
-- ListImages with sha256 (a lookup by content): the same keyset order within one hash.
CREATE INDEX IF NOT EXISTS images_by_owner_sha256
    ON images (owner, sha256, created_ns DESC, id DESC);
CREATE TABLE IF NOT EXISTS intents (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('put', 'delete')),
    created_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS intents_by_age ON intents (created_ns);
"""
# Columns added since the first release, each with the definition that adds it to a
# data dir made before: its images keep what the DEFAULT says (no placeholders).
_ADDED = {
    "blurhash": "TEXT NOT NULL DEFAULT ''",
    "thumbhash": "BLOB NOT NULL DEFAULT x''",
}
_COLUMNS = ", ".join(FIELDS)
_INSERT = f"INSERT INTO images ({_COLUMNS}) VALUES ({', '.join('?' * len(FIELDS))})"


def _add_columns(db: sqlite3.Connection) -> None:
    """Give an images table made by an earlier release the columns added since."""
    have = {row[1] for row in db.execute("PRAGMA table_info(images)")}
    for name, definition in _ADDED.items():
        if name not in have:
            try:
                db.execute(f"ALTER TABLE images ADD COLUMN {name} {definition}")
            except sqlite3.OperationalError as exc:
                # Two processes opening one old data dir at once: one finds it done.
                if "duplicate column" not in str(exc):
                    raise


class SqliteMetadataStore:
    """SQLite in WAL mode, with synchronous=FULL so a commit survives power loss.

    One connection on one thread: SQLite serialises writers anyway, and a single
    thread keeps the event loop free without connection-sharing hazards. Deletions
    are announced in this process only: SQLite is one replica's store.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db = self._executor.submit(self._connect, path).result()
        # Reads by primary key take microseconds in WAL mode (they never wait for the
        # writer); a hop to the writer's thread would cost more than the read itself.
        self._reader = sqlite3.connect(path, isolation_level=None)
        self._reader.execute("PRAGMA busy_timeout=5000")
        self._fanout = DeletionFanout(live=True)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        _add_columns(db)
        return db

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            # SQLite rolls back the statement (or transaction) that found no room.
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise StorageFull("metadata", str(exc)) from exc
            raise

    async def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn's statements as one transaction, committed unless fn raises."""

        def run() -> T:
            # IMMEDIATE takes the write lock up front, so a transaction that reads
            # before writing cannot fail half-way on another process's write.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

        return await self._run(run)

    async def intend(self, image_id: str, now_ns: int) -> None:
        """Record that image_id's blob is about to be written."""
        # OR IGNORE: ids are random, so an intent already there is this upload's own
        # (kept with its first time) or a delete's, which insert then refuses.
        sql = "INSERT OR IGNORE INTO intents (id, kind, created_ns) VALUES (?, 'put', ?)"
        await self._run(lambda: self._db.execute(sql, (image_id, now_ns)))

    async def insert(self, record: ImageRecord) -> None:
        """Insert record and clear its put intent in one transaction; IntentLost if none."""
        values = tuple(getattr(record, name) for name in FIELDS)

        def insert(db: sqlite3.Connection) -> None:
            cleared = db.execute(
                "DELETE FROM intents WHERE id = ? AND kind = 'put'", (record.id,)
            ).rowcount
            if cleared == 0:
                raise IntentLost(f"image {record.id}: its upload intent was swept as stale")
            db.execute(_INSERT, values)

        await self._transaction(insert)

    async def get(self, image_id: str) -> ImageRecord | None:
        """image_id's record, or None."""
        sql = f"SELECT {_COLUMNS} FROM images WHERE id = ?"
        # fetchall, not fetchone: an unfinished statement would hold its read snapshot
        # open and keep SQLite from checkpointing the WAL.
        rows = self._reader.execute(sql, (image_id,)).fetchall()
        return ImageRecord(*rows[0]) if rows else None

    async def list(self, owner: str, page_size: int, page_token: str, sha256: str = "") -> Page:
        """owner's records, newest first, by keyset pagination on images_by_owner (with
        sha256, on images_by_owner_sha256)."""
        sql, args = page_query(_COLUMNS, owner, page_size, page_token, "?", sha256)
        rows = await self._run(lambda: self._db.execute(sql, args).fetchall())
        return page_of(rows, page_size)

    async def delete(self, image_id: str, now_ns: int) -> bool:
        """Remove the record and record a delete intent in one transaction; announce it."""

        def delete(db: sqlite3.Connection) -> bool:
            if db.execute("DELETE FROM images WHERE id = ?", (image_id,)).rowcount == 0:
                return False
            db.execute(
                "INSERT INTO intents (id, kind, created_ns) VALUES (?, 'delete', ?) "
                "ON CONFLICT (id) DO UPDATE SET kind = 'delete', created_ns = excluded.created_ns",
                (image_id, now_ns),
            )
            return True

        deleted = await self._transaction(delete)
        if deleted:
            self._fanout.publish(image_id)
        return deleted

    async def unfinished(self, stale_before_ns: int) -> builtins.list[str]:
        """Every delete intent's id, and the put intents' recorded before stale_before_ns.

        A stale put intent becomes a delete intent here, in the same transaction: an
        upload still under way then fails with IntentLost rather than inserting a
        record whose blob recovery is about to remove.
        """

        def sweep(db: sqlite3.Connection) -> builtins.list[str]:
            db.execute(
                "UPDATE intents SET kind = 'delete' WHERE kind = 'put' AND created_ns < ?",
                (stale_before_ns,),
            )
            rows = db.execute(
                "SELECT id FROM intents WHERE kind = 'delete' ORDER BY created_ns"
            ).fetchall()
            return [row[0] for row in rows]

        return await self._transaction(sweep)

    async def finish(self, image_id: str) -> None:
        """Clear image_id's intent: its blob and variants are gone."""
        sql = "DELETE FROM intents WHERE id = ?"
        await self._run(lambda: self._db.execute(sql, (image_id,)))

    def deletions(self) -> AsyncIterator[str]:
        """Ids deleted through this store from now on; DeletionsMissed if it falls behind."""
        return self._fanout.subscribe()

    async def close(self) -> None:
        """End every deletions() iterator and close the database."""
        self._fanout.close()
        self._reader.close()
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)
