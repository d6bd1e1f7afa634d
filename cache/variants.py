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
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from common.lru import ByteLRU

log = logging.getLogger("variants")

# Keys become file names: only this alphabet, so no key can name a path.
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MAGIC = b"IMGSVC-VARIANT-1\n"


def valid_key(key: str) -> bool:
    return bool(_KEY.match(key))


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


class MemoryLRU:
    """Least-recently-used variants in memory, within a byte budget."""

    def __init__(self, budget: int) -> None:
        self._lru: ByteLRU[tuple[str, str], Variant] = ByteLRU(
            budget, lambda v: len(v.data), self._unindex
        )
        self._by_image: dict[str, set[str]] = {}

    @property
    def used(self) -> int:
        return self._lru.used

    def get(self, image_id: str, key: str) -> Variant | None:
        return self._lru.get((image_id, key))

    def put(self, variant: Variant) -> None:
        ident = (variant.record.image_id, variant.record.key)
        if self._lru.put(ident, variant):
            self._by_image.setdefault(ident[0], set()).add(ident[1])

    def keys_of(self, image_id: str) -> set[str]:
        return set(self._by_image.get(image_id, ()))

    def purge(self, image_id: str) -> set[str]:
        keys = self.keys_of(image_id)
        for key in keys:
            self._lru.pop((image_id, key))
            self._unindex((image_id, key))
        return keys

    def _unindex(self, ident: tuple[str, str]) -> None:
        keys = self._by_image.get(ident[0])
        if keys is not None:
            keys.discard(ident[1])
            if not keys:
                del self._by_image[ident[0]]


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
        self.used = 0
        self.tmp = root / "tmp"
        self._index: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._by_image: dict[str, set[str]] = {}

    def _dir(self, image_id: str) -> Path:
        return self.root / image_id[:2] / image_id

    def _path(self, image_id: str, key: str) -> Path:
        return self._dir(image_id) / key

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
            self._remember(image_id, key, size)
        for path in self._evict():
            path.unlink(missing_ok=True)

    def _remember(self, image_id: str, key: str, size: int) -> None:
        self._forget((image_id, key))
        self._index[(image_id, key)] = size
        self._by_image.setdefault(image_id, set()).add(key)
        self.used += size

    def _forget(self, ident: tuple[str, str]) -> None:
        size = self._index.pop(ident, None)
        if size is None:
            return
        self.used -= size
        keys = self._by_image[ident[0]]
        keys.discard(ident[1])
        if not keys:
            del self._by_image[ident[0]]

    def _evict(self) -> list[Path]:
        victims = []
        while self.used > self.budget and self._index:
            ident = next(iter(self._index))
            self._forget(ident)
            victims.append(self._path(*ident))
        return victims

    def keys_of(self, image_id: str) -> set[str]:
        return set(self._by_image.get(image_id, ()))

    async def get(self, image_id: str, key: str) -> Variant | None:
        ident = (image_id, key)
        if ident not in self._index:
            return None
        variant = await asyncio.to_thread(self._read, self._path(image_id, key))
        if variant is None:
            self._forget(ident)
        elif ident in self._index:
            self._index.move_to_end(ident)
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
        await asyncio.to_thread(
            self._write, self._path(record.image_id, record.key), header, variant.data
        )
        self._remember(record.image_id, record.key, size)
        victims = self._evict()
        if victims:
            await asyncio.to_thread(_unlink_all, victims)

    def _write(self, path: Path, header: bytes, data: bytes) -> None:
        temp = self.tmp / f"{uuid.uuid4().hex}.partial"
        with temp.open("wb") as f:
            f.write(header)
            f.write(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, path)

    async def purge(self, image_id: str) -> set[str]:
        keys = self.keys_of(image_id)
        for key in keys:
            self._forget((image_id, key))
        await asyncio.to_thread(shutil.rmtree, self._dir(image_id), ignore_errors=True)
        return keys


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

    async def get(self, image_id: str, key: str) -> Variant | None:
        variant = self.memory.get(image_id, key)
        if variant is None and self.disk is not None:
            variant = await self.disk.get(image_id, key)
            if variant is not None:
                self.memory.put(variant)
        return variant

    async def put(self, variant: Variant) -> None:
        self.memory.put(variant)
        if self.disk is not None:
            await self.disk.put(variant)

    async def purge(self, image_id: str) -> int:
        keys = self.memory.purge(image_id)
        if self.disk is not None:
            keys |= await self.disk.purge(image_id)
        return len(keys)
