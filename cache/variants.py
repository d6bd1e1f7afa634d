"""The variant cache: a VariantCache Protocol, a memory LRU, a disk LRU and the two tiered."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from common.lru import ImageLRU

log = logging.getLogger("variants")

# Keys become file names: only this alphabet, so no key can name a path.
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MAGIC = b"IMGSVC-VARIANT-1\n"


def valid_key(key: str) -> bool:
    return bool(_KEY.fullmatch(key))


@dataclass(frozen=True)
class VariantRecord:
    image_id: str
    key: str
    media_type: str
    width: int
    height: int
    byte_size: int
    sha256: str


@dataclass(frozen=True)
class Variant:
    record: VariantRecord
    data: bytes


class VariantCache(Protocol):
    async def get(self, image_id: str, key: str) -> Variant | None: ...
    async def put(self, variant: Variant) -> None: ...
    async def purge(self, image_id: str) -> int:
        """Drop every variant of image_id; return how many there were."""

    def held_images(self) -> set[str]:
        """Every image some variant is held for (for start-up reconciliation)."""


class MemoryLRU:
    """Least-recently-used variants in memory, within a byte budget."""

    def __init__(self, budget: int) -> None:
        self._lru: ImageLRU[Variant] = ImageLRU(budget, lambda v: len(v.data))

    @property
    def used(self) -> int:
        return self._lru.used

    def get(self, image_id: str, key: str) -> Variant | None:
        return self._lru.get(image_id, key)

    def put(self, variant: Variant) -> None:
        self._lru.put(variant.record.image_id, variant.record.key, variant)

    def purge(self, image_id: str) -> set[str]:
        return self._lru.purge(image_id)


class DiskLRU:
    """Least-recently-used variants as files, within a byte budget, surviving restarts.

    Each file holds a header line of JSON metadata and the bytes; its mtime is its
    recency, so the order is rebuilt on start. Files are written to tmp/ and renamed
    in, and the SHA-256 is checked on read, so a torn write after a crash is a miss,
    never bad bytes. The index is touched only on the event loop; file work runs in
    threads.
    """

    def __init__(self, root: Path, budget: int) -> None:
        self.root = root
        self.budget = budget
        self.tmp = root / "tmp"
        # Values are file sizes; evicted entries queue their files for deletion.
        self._lru: ImageLRU[int] = ImageLRU(budget, lambda size: size, self._evicted)
        self._victims: list[Path] = []

    @property
    def used(self) -> int:
        return self._lru.used

    def _dir(self, image_id: str) -> Path:
        return self.root / image_id[:2] / image_id

    def _path(self, image_id: str, key: str) -> Path:
        return self._dir(image_id) / key

    def _evicted(self, image_id: str, key: str) -> None:
        self._victims.append(self._path(image_id, key))

    def _take_victims(self) -> list[Path]:
        victims, self._victims = self._victims, []
        return victims

    def load(self) -> None:
        """Rebuild the index from the files on disk (blocking: call before serving)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        found: list[tuple[int, str, str, int]] = []
        for path in self.root.glob("??/*/*"):
            stat = path.stat()
            found.append((stat.st_mtime_ns, path.parent.name, path.name, stat.st_size))
        for _, image_id, key, size in sorted(found):
            if not self._lru.put(image_id, key, size):
                self._evicted(image_id, key)  # larger than the whole budget
        _unlink_all(self._take_victims())

    async def get(self, image_id: str, key: str) -> Variant | None:
        if self._lru.get(image_id, key) is None:
            return None
        variant = await asyncio.to_thread(self._read, self._path(image_id, key))
        if variant is None:
            self._lru.pop(image_id, key)
        return variant

    @staticmethod
    def _read(path: Path) -> Variant | None:
        try:
            with path.open("rb") as f:
                if f.readline() != _MAGIC:
                    raise ValueError("not a variant file")
                record = VariantRecord(**json.loads(f.readline()))
                data = f.read()
            if len(data) != record.byte_size or hashlib.sha256(data).hexdigest() != record.sha256:
                raise ValueError("variant bytes do not match their checksum")
            os.utime(path)  # recency survives a restart
            return Variant(record, data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning(
                "dropping unreadable variant file", extra={"path": str(path), "err": str(exc)}
            )
            path.unlink(missing_ok=True)
            return None

    async def put(self, variant: Variant) -> None:
        record = variant.record
        header = _MAGIC + json.dumps(asdict(record)).encode() + b"\n"
        size = len(header) + len(variant.data)
        if size > self.budget:
            return
        try:
            await asyncio.to_thread(
                self._write, self._path(record.image_id, record.key), header, variant.data
            )
        except OSError as exc:
            # A full disk, or a purge removing the folder mid-write: the memory tier
            # still has it, and a cache may always miss.
            log.warning("variant not written to disk", extra={"err": str(exc)})
            return
        self._lru.put(record.image_id, record.key, size)
        victims = self._take_victims()
        if victims:
            await asyncio.to_thread(_unlink_all, victims)

    def _write(self, path: Path, header: bytes, data: bytes) -> None:
        temp = self.tmp / f"{uuid.uuid4().hex}.partial"
        try:
            with temp.open("wb") as f:
                f.write(header)
                f.write(data)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)  # gone already when the rename happened

    async def purge(self, image_id: str) -> set[str]:
        keys = self._lru.purge(image_id)
        await asyncio.to_thread(shutil.rmtree, self._dir(image_id), ignore_errors=True)
        return keys

    def held_images(self) -> set[str]:
        return self._lru.images()


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the image's folder, once its last variant is gone


class TieredVariantCache:
    """Memory in front of disk: reads promote to memory, writes go to both."""

    def __init__(self, memory: MemoryLRU, disk: DiskLRU | None) -> None:
        self.memory = memory
        self.disk = disk
        # Counts purges, so a disk read that a purge overtook is not promoted (or served).
        self._purges = 0

    async def get(self, image_id: str, key: str) -> Variant | None:
        variant = self.memory.get(image_id, key)
        if variant is None and self.disk is not None:
            before = self._purges
            variant = await self.disk.get(image_id, key)
            if variant is not None and self._purges != before:
                return None  # maybe this image's purge: a miss is always safe
            if variant is not None:
                self.memory.put(variant)
        return variant

    def held_images(self) -> set[str]:
        """Images with variants on disk (memory is empty at start)."""
        return set() if self.disk is None else self.disk.held_images()

    async def put(self, variant: Variant) -> None:
        self.memory.put(variant)
        if self.disk is not None:
            await self.disk.put(variant)

    async def purge(self, image_id: str) -> int:
        self._purges += 1
        keys = self.memory.purge(image_id)
        if self.disk is not None:
            keys |= await self.disk.purge(image_id)
        return len(keys)
