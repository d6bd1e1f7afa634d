"""Where original image bytes live: a BlobStore Protocol and its file-system backend."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

TEMP_SUFFIX = ".partial"


class BlobStore(Protocol):
    """Durable, immutable blobs under opaque keys (image ids, already validated)."""

    def new_temp(self) -> Path:
        """A fresh local path to stage an upload in; commit() or discard() must follow."""

    def commit(self, temp: Path, key: str) -> None:
        """Durably make the staged file the blob under key (blocking: run in a thread)."""

    def discard(self, temp: Path) -> None:
        """Drop a staged file that will not be committed."""

    def open(self, key: str) -> BlobReader:
        """Open a blob for reading; raise FileNotFoundError if there is none."""

    def delete(self, key: str) -> bool:
        """Remove a blob; False if it did not exist."""

    def keys(self) -> Iterator[str]:
        """Every committed key (for start-up reconciliation)."""

    def recover(self) -> int:
        """Remove staged files left by a crash; return how many."""


class BlobReader(Protocol):
    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """Blobs as files in two levels of 256 shard folders, staged in tmp/ and renamed in.

    The rename is atomic and both the file and the folders are fsync'd before commit
    returns, so after a crash a blob is either whole or absent.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._durable: set[Path] = set()
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / key

    def new_temp(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"

    def commit(self, temp: Path, key: str) -> None:
        with temp.open("rb+") as f:
            os.fsync(f.fileno())
        final = self._path(key)
        if final.parent not in self._durable:
            # The shard folders' own entries must be on disk too, whoever made them (a
            # concurrent commit, or a run that crashed before its fsync): once per run.
            with self._lock:
                if final.parent not in self._durable:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    _fsync_dir(final.parent.parent)
                    _fsync_dir(self.root)
                    self._durable.add(final.parent)
        os.replace(temp, final)
        _fsync_dir(final.parent)

    def discard(self, temp: Path) -> None:
        temp.unlink(missing_ok=True)

    def open(self, key: str) -> BlobReader:
        return self._path(key).open("rb")

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def keys(self) -> Iterator[str]:
        for shard in self.root.glob("??/??"):
            for entry in os.scandir(shard):
                if entry.is_file():
                    yield entry.name

    def recover(self) -> int:
        removed = 0
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed
