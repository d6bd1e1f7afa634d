"""Blobs as files on a local file system: fsync'd, then renamed into place."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from cache.blobs import BlobNotFound
from cache.storage import StorageFull, is_full


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlob:
    """One blob file, open for reading; reads run in threads so the loop never blocks."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        """The bytes from the start, chunk_size at a time."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        offset = 0
        # pread, not read: each call of chunks() starts over, whatever another did.
        while offset < self.size:
            chunk = await asyncio.to_thread(os.pread, self._fd, chunk_size, offset)
            if not chunk:
                break
            offset += len(chunk)
            yield chunk

    async def close(self) -> None:
        """Release the file."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class FileBlobStore:
    """Blobs as files in two levels of 256 shard folders, staged in root/tmp and renamed in.

    Staging on the same file system makes put a rename, which is atomic; the file and the
    folders are fsync'd before put returns, so after a crash a blob is whole or absent.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / "tmp"
        self.staging.mkdir(parents=True, exist_ok=True)
        self._durable: set[Path] = set()
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / key

    async def put(self, key: str, staged: Path) -> None:
        """Durably move the staged file in as key's blob."""
        await asyncio.to_thread(self._put, key, staged)

    def _put(self, key: str, staged: Path) -> None:
        try:
            self._commit(key, staged)
        except OSError as exc:
            if is_full(exc):
                # A rename never half-happens: the blob is whole in place, or absent.
                raise StorageFull("blob", str(exc)) from exc
            raise

    def _commit(self, key: str, staged: Path) -> None:
        with staged.open("rb+") as f:
            os.fsync(f.fileno())
        final = self._path(key)
        if final.parent not in self._durable:
            # The shard folders' own entries must be on disk too, whoever made them (a
            # concurrent put, or a run that crashed before its fsync): once per run.
            with self._lock:
                if final.parent not in self._durable:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    _fsync_dir(final.parent.parent)
                    _fsync_dir(self.root)
                    self._durable.add(final.parent)
        os.replace(staged, final)
        _fsync_dir(final.parent)

    async def open(self, key: str) -> FileBlob:
        """key's blob, open for reading; BlobNotFound if there is none."""
        return await asyncio.to_thread(self._open, key)

    def _open(self, key: str) -> FileBlob:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        try:
            return FileBlob(fd, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise

    async def delete(self, key: str) -> None:
        """Remove key's blob, if there is one."""
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    async def close(self) -> None:
        """Nothing to release: every blob is closed by its reader."""
