"""The embedded variant cache: a memory LRU over a disk LRU, each replica holding its own."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from cache.variants import Variant, VariantRecord
from common.lru import ImageLRU

log = logging.getLogger("variants")


class MemoryLRU:
    """Least-recently-used variants in memory, within a byte budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.evictions = 0  # read by the metrics (cache/metrics.py)
        self._lru: ImageLRU[Variant] = ImageLRU(budget, lambda v: len(v.data), self._evicted)

    def _evicted(self, image_id: str, key: str) -> None:
        self.evictions += 1

    @property
    def used(self) -> int:
        return self._lru.used

    def get(self, image_id: str, key: str) -> Variant | None:
        return self._lru.get(image_id, key)

    def put(self, variant: Variant) -> None:
        self._lru.put(variant.record.image_id, variant.record.key, variant)

    def purge(self, image_id: str) -> set[str]:
        return self._lru.purge(image_id)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS variants (
    image_id TEXT NOT NULL,
    key TEXT NOT NULL,
    record TEXT NOT NULL,
    data BLOB NOT NULL,
    used INTEGER NOT NULL,
    UNIQUE (image_id, key)
);
"""
# Bytes a row costs beyond its data, roughly: the record's JSON and SQLite's own keeping.
_ROW_OVERHEAD = 256
_QUEUED_PRUNE = 64


class DiskLRU:
    """Least-recently-used variants in one SQLite file, within a byte budget.

    Not a file per variant: creating a file cost 0.5-1 ms of CPU on the development
    machine's disk, a third of the cache service's work per stored variant, where an
    insert costs tens of microseconds. Writes are queued, in order, to one thread and
    not waited for (a variant is served from the queue until written), so a purge
    queued after a write always removes it; a purge itself is waited for. Each row
    keeps a recency counter, so the order survives restarts, and the SHA-256 is
    checked on read, so damaged bytes are a miss, never served. The index is touched
    only on the event loop.
    """

    def __init__(self, root: Path, budget: int) -> None:
        self.root = root
        self.budget = budget
        self.evictions = 0  # to stay within the budget; read by the metrics
        self.path = root / "variants.db"
        # Values are row sizes; evicted entries are deleted from the file.
        self._lru: ImageLRU[int] = ImageLRU(budget, lambda size: size, self._over_budget)
        # Variants not yet known to be written, with their write; pruned as puts come,
        # not by a callback per write (each would wake the event loop).
        self._queued: dict[tuple[str, str], tuple[Variant, Future[None]]] = {}
        self._clock = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="variants")
        self._reading = threading.Lock()

    @property
    def used(self) -> int:
        return self._lru.used

    def load(self) -> None:
        """Open the file and rebuild the index from it (blocking: call before serving)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._db = self._writer.submit(self._connect).result()
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        rows = self._reader.execute(
            "SELECT image_id, key, length(data), used FROM variants ORDER BY used"
        ).fetchall()
        for image_id, key, size, used in rows:
            self._clock = max(self._clock, used)
            if not self._lru.put(image_id, key, size + _ROW_OVERHEAD):
                self._evicted(image_id, key)  # larger than the whole budget
        self._writer.submit(lambda: None).result()  # evictions a smaller budget made

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # A cache: a power cut may lose the last writes, never the file's consistency.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA secure_delete=FAST")  # a purged image's bytes do not linger
        db.executescript(_SCHEMA)
        return db

    def _write(self, sql: str, args: tuple[object, ...]) -> Future[None]:
        def run() -> None:
            try:
                self._db.execute(sql, args)
            except sqlite3.Error as exc:
                # A full disk, say: the memory tier still has it, and a cache may miss.
                log.warning("variant not written to disk", extra={"err": str(exc)})
                raise

        return self._writer.submit(run)

    def _over_budget(self, image_id: str, key: str) -> None:
        self.evictions += 1
        self._evicted(image_id, key)

    def _evicted(self, image_id: str, key: str) -> None:
        self._queued.pop((image_id, key), None)
        self._write("DELETE FROM variants WHERE image_id = ? AND key = ?", (image_id, key))

    async def get(self, image_id: str, key: str) -> Variant | None:
        if self._lru.get(image_id, key) is None:
            return None
        queued = self._queued.get((image_id, key))
        if queued is not None:
            if not self._forget_if_written((image_id, key)):
                return queued[0]
            if queued[1].exception() is not None:
                return None  # its write failed
        variant = await asyncio.to_thread(self._read, image_id, key)
        if variant is None:
            if self._lru.pop(image_id, key) is not None:
                self._evicted(image_id, key)
            return None
        self._clock += 1
        self._write(
            "UPDATE variants SET used = ? WHERE image_id = ? AND key = ?",
            (self._clock, image_id, key),
        )
        return variant

    def _read(self, image_id: str, key: str) -> Variant | None:
        with self._reading:
            # fetchall: an unfinished statement would hold its snapshot and block checkpoints.
            rows = self._reader.execute(
                "SELECT record, data FROM variants WHERE image_id = ? AND key = ?",
                (image_id, key),
            ).fetchall()
        if not rows:
            return None
        try:
            record = VariantRecord(**json.loads(rows[0][0]))
            data = bytes(rows[0][1])
            if len(data) != record.byte_size or hashlib.sha256(data).hexdigest() != record.sha256:
                raise ValueError("variant bytes do not match their checksum")
        except (ValueError, TypeError) as exc:
            log.warning("dropping an unreadable variant", extra={"key": key, "err": str(exc)})
            return None
        return Variant(record, data)

    async def put(self, variant: Variant) -> None:
        record = variant.record
        ident = (record.image_id, record.key)
        if not self._lru.put(*ident, len(variant.data) + _ROW_OVERHEAD):
            return
        self._clock += 1
        written = self._write(
            "INSERT OR REPLACE INTO variants (image_id, key, record, data, used) "
            "VALUES (?, ?, ?, ?, ?)",
            (*ident, json.dumps(asdict(record)), variant.data, self._clock),
        )
        self._queued[ident] = (variant, written)
        if len(self._queued) > _QUEUED_PRUNE:
            self._prune()

    def _prune(self) -> None:
        for ident in list(self._queued):
            self._forget_if_written(ident)

    def _forget_if_written(self, ident: tuple[str, str]) -> bool:
        """Drop a queued variant once its write has ended (and the index entry, if the
        write failed); False while it is still queued."""
        if not self._queued[ident][1].done():
            return False
        _, written = self._queued.pop(ident)
        if written.exception() is not None:
            self._lru.pop(*ident)
        return True

    async def purge(self, image_id: str) -> set[str]:
        keys = self._lru.purge(image_id)
        for key in keys:
            self._queued.pop((image_id, key), None)
        deleted = self._write("DELETE FROM variants WHERE image_id = ?", (image_id,))
        with contextlib.suppress(sqlite3.Error):
            await asyncio.wrap_future(deleted)
        return keys

    async def flush(self) -> None:
        """Wait until every queued write is in the file."""
        await asyncio.wrap_future(self._writer.submit(lambda: None))

    def close(self) -> None:
        """Finish the queued writes and close the file."""
        self._writer.submit(self._db.close)
        self._writer.shutdown(wait=True)
        self._reader.close()


class Leases:
    """Render leases of one process: (image id, key) to when the lease runs out, on the
    event loop's monotonic clock.

    Bounded by `limit`: past it, expired leases go first, then the oldest taken. Losing
    a lease early costs at most a second render of one variant, never a wrong answer.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._until: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def claim(self, image_id: str, key: str, seconds: float) -> bool:
        """Take the lease on key for `seconds`; False while an unexpired one is held."""
        now = asyncio.get_running_loop().time()
        ident = (image_id, key)
        held = self._until.get(ident)
        if held is not None and held > now:
            return False
        self._until.pop(ident, None)  # re-inserted last, so dict order stays oldest first
        if len(self._until) >= self.limit:
            self._make_room(now)
        self._until[ident] = now + seconds
        return True

    def release(self, image_id: str, key: str) -> None:
        self._until.pop((image_id, key), None)

    def _make_room(self, now: float) -> None:
        for ident, until in list(self._until.items()):
            if until <= now:
                del self._until[ident]
        while len(self._until) >= self.limit:
            del self._until[next(iter(self._until))]


class TieredVariantCache:
    """Memory in front of disk: reads promote to memory, writes go to both."""

    # Each replica keeps its own tiers, so each must purge its own on a delete.
    shared = False

    def __init__(self, memory: MemoryLRU, disk: DiskLRU | None) -> None:
        self.memory = memory
        self.disk = disk
        self.leases = Leases()
        # Counts purges, so a disk read that a purge overtook is not promoted (or served).
        self._purges = 0

    async def get(self, image_id: str, key: str) -> Variant | None:
        """The variant, from memory or else disk; None for a miss."""
        variant = self.memory.get(image_id, key)
        if variant is None and self.disk is not None:
            before = self._purges
            variant = await self.disk.get(image_id, key)
            if variant is not None and self._purges != before:
                return None  # maybe this image's purge: a miss is always safe
            if variant is not None:
                self.memory.put(variant)
        return variant

    async def put(self, variant: Variant) -> None:
        """Keep variant in both tiers, and end the render lease on its key."""
        self.leases.release(variant.record.image_id, variant.record.key)
        self.memory.put(variant)
        if self.disk is not None:
            await self.disk.put(variant)

    async def purge(self, image_id: str) -> int:
        """Drop every variant of image_id from both tiers; return how many there were."""
        self._purges += 1
        keys = self.memory.purge(image_id)
        if self.disk is not None:
            keys |= await self.disk.purge(image_id)
        return len(keys)

    async def claim(self, image_id: str, key: str, seconds: float) -> bool:
        """Take the lease to render key for `seconds`; False while it is held."""
        return self.leases.claim(image_id, key, seconds)

    async def close(self) -> None:
        """Finish the disk tier's queued writes and close its file."""
        if self.disk is not None:
            await asyncio.to_thread(self.disk.close)
