"""Image metadata: a MetadataStore Protocol and its SQLite (WAL) backend."""

from __future__ import annotations

import asyncio
import base64
import re
import sqlite3
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ImageRecord:
    """One stored original as the metadata store keeps it."""

    id: str
    original_filename: str
    media_type: str
    format: str
    width: int
    height: int
    frames: int
    byte_size: int
    sha256: str
    created_ns: int
    owner: str
    visibility: int


@dataclass(frozen=True)
class Page:
    records: list[ImageRecord]
    next_token: str


class InvalidPageToken(ValueError):
    """The page token was not one this store issued."""


class MetadataStore(Protocol):
    async def insert(self, record: ImageRecord) -> None: ...
    async def get(self, image_id: str) -> ImageRecord | None: ...
    async def list(self, owner: str, page_size: int, page_token: str) -> Page: ...
    async def delete(self, image_id: str) -> bool: ...
    async def missing(self, image_ids: Collection[str]) -> set[str]:
        """Those of image_ids that have no record."""

    async def close(self) -> None: ...


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
    visibility INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS images_by_owner ON images (owner, created_ns DESC, id DESC);
"""
_COLUMNS = ", ".join(ImageRecord.__dataclass_fields__)


# A page token is the last record's (created_ns, id) as 8 + 16 bytes in URL-safe base64:
# always 32 characters, and any 32 such characters are a position in the list, so the
# shape alone (which OpenAPI can state) says whether a token is valid. A made-up one
# only moves the caller about their own list.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def encode_token(created_ns: int, image_id: str) -> str:
    raw = created_ns.to_bytes(8, "big", signed=True) + _id_bytes(image_id)
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str) -> tuple[int, str]:
    if not _TOKEN.fullmatch(token):
        raise InvalidPageToken("the page token is not valid")
    raw = base64.urlsafe_b64decode(token)
    image_id = base64.urlsafe_b64encode(raw[8:]).decode().rstrip("=")
    return int.from_bytes(raw[:8], "big", signed=True), image_id


def _id_bytes(image_id: str) -> bytes:
    return base64.urlsafe_b64decode(image_id + "==")


class SqliteMetadataStore:
    """SQLite in WAL mode, with synchronous=FULL so a commit survives power loss.

    One connection on one thread: SQLite serialises writers anyway, and a single
    thread keeps the event loop free without connection-sharing hazards.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db = self._executor.submit(self._connect, path).result()
        # Reads by primary key take microseconds in WAL mode (they never wait for the
        # writer); a hop to the writer's thread would cost more than the read itself.
        self._reader = sqlite3.connect(path, isolation_level=None)
        self._reader.execute("PRAGMA busy_timeout=5000")

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        return db

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def insert(self, record: ImageRecord) -> None:
        values = tuple(getattr(record, name) for name in ImageRecord.__dataclass_fields__)
        placeholders = ", ".join("?" * len(values))
        sql = f"INSERT INTO images ({_COLUMNS}) VALUES ({placeholders})"
        await self._run(lambda: self._db.execute(sql, values))

    async def get(self, image_id: str) -> ImageRecord | None:
        sql = f"SELECT {_COLUMNS} FROM images WHERE id = ?"
        # fetchall, not fetchone: an unfinished statement would hold its read snapshot
        # open and keep SQLite from checkpointing the WAL.
        rows = self._reader.execute(sql, (image_id,)).fetchall()
        row = rows[0] if rows else None
        return None if row is None else ImageRecord(*row)

    async def list(self, owner: str, page_size: int, page_token: str) -> Page:
        if page_token:
            created, after = decode_token(page_token)
            sql = (
                f"SELECT {_COLUMNS} FROM images WHERE owner = ? AND (created_ns, id) < (?, ?) "
                "ORDER BY created_ns DESC, id DESC LIMIT ?"
            )
            args: tuple[object, ...] = (owner, created, after, page_size + 1)
        else:
            sql = (
                f"SELECT {_COLUMNS} FROM images WHERE owner = ? "
                "ORDER BY created_ns DESC, id DESC LIMIT ?"
            )
            args = (owner, page_size + 1)
        rows = await self._run(lambda: self._db.execute(sql, args).fetchall())
        records = [ImageRecord(*row) for row in rows[:page_size]]
        more = len(rows) > page_size
        token = encode_token(records[-1].created_ns, records[-1].id) if more else ""
        return Page(records, token)

    async def delete(self, image_id: str) -> bool:
        sql = "DELETE FROM images WHERE id = ?"
        cursor = await self._run(lambda: self._db.execute(sql, (image_id,)))
        return cursor.rowcount > 0

    async def missing(self, image_ids: Collection[str]) -> set[str]:
        def query() -> set[str]:
            found: set[str] = set()
            ids = list(image_ids)
            for start in range(0, len(ids), 500):
                batch = ids[start : start + 500]
                marks = ", ".join("?" * len(batch))
                sql = f"SELECT id FROM images WHERE id IN ({marks})"
                found.update(row[0] for row in self._db.execute(sql, batch))
            return set(ids) - found

        return await self._run(query)

    async def close(self) -> None:
        self._reader.close()
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)
