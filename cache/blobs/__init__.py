"""Where original image bytes live: the BlobStore Protocol its backends implement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol


class BlobNotFound(Exception):
    """There is no blob under the key asked for."""


class Blob(Protocol):
    """One stored blob, open for reading."""

    size: int

    def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        """The blob's bytes in order, at most chunk_size at a time (memory: a few chunks)."""

    async def close(self) -> None: ...


class BlobStore(Protocol):
    """Durable, immutable blobs under opaque keys (image ids, already validated).

    An upload is staged as a local file in `staging` first (the cache validates it
    there), then put; put returns only once the blob is durable, and a crash during it
    leaves the whole blob or none readable under the key.
    """

    staging: Path

    async def put(self, key: str, staged: Path) -> None:
        """Durably store the staged file as key's blob; the caller unlinks staged after."""

    async def open(self, key: str) -> Blob:
        """key's blob, open for reading; BlobNotFound if there is none."""

    async def delete(self, key: str) -> None:
        """Remove key's blob; nothing happens if there is none."""

    async def close(self) -> None: ...
