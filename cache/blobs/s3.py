"""Blobs on S3-compatible object storage, through obstore (signing, retries, multipart)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING

import obstore
from obstore.exceptions import BaseError, PreconditionError
from obstore.store import S3Store

from cache.blobs import BlobNotFound
from cache.storage import StorageUnavailable

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

# S3's smallest part but the last. Memory per upload is about (UPLOAD_CONCURRENCY + 1)
# parts: one filling while the others are on the wire.
PART_BYTES = 5 * 1024 * 1024
UPLOAD_CONCURRENCY = 2
# How much of the staged file is read (in a thread) per step of an upload.
READ_BYTES = 1024 * 1024
# A download asks for about this much (whole chunks, at least one) per ranged GET and
# fetches the next range while the current one drains: memory is two ranges. Each request
# is short, so a timeout bounds one range, never a whole download a slow client drains.
RANGE_BYTES = 1024 * 1024

# A dead endpoint must fail a call in seconds (the caller answers 503 and the client
# retries), not hang it for obstore's defaults (30 s per try, 10 retries over 3 minutes).
RETRIES: RetryConfig = {
    "max_retries": 2,
    "retry_timeout": timedelta(seconds=5),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1)},
}


def _s3_store(bucket: str, prefix: str, uploads: bool) -> S3Store:
    # Two clients because reqwest's read_timeout also runs while a request body is sent:
    # on the upload client it would fail every part a slow link takes seconds to send.
    # Uploads get a minute per part instead; small requests and ranges fail a stall fast.
    options: ClientConfig = {"connect_timeout": "2s", "timeout": "60s" if uploads else "20s"}
    if not uploads:
        options["read_timeout"] = "5s"
    # obstore reads the endpoint from AWS_ENDPOINT_URL but refuses http:// unless told.
    if os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options["allow_http"] = True
    return S3Store(bucket, prefix=prefix or None, client_options=options, retry_config=RETRIES)


def _detail(error: BaseException) -> str:
    # obstore's messages carry a multi-line debug dump after the first line.
    lines = str(error).splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def _engine() -> Iterator[None]:
    """Turns what S3 (or the way to it) did wrong into StorageUnavailable."""
    try:
        yield
    # obstore raises the builtin FileNotFoundError for a 404; where a caller has not
    # made it BlobNotFound first, the bucket itself is missing.
    except (BaseError, FileNotFoundError) as error:
        raise StorageUnavailable("S3", _detail(error)) from error


class S3Blob:
    """One object, read in ranged GETs pinned to the ETag it had when opened."""

    def __init__(self, store: S3Store, key: str, size: int, etag: str | None) -> None:
        self._store = store
        self._key = key
        self._etag = etag
        self.size = size

    async def _range(self, start: int, end: int) -> memoryview:
        with _engine():
            try:
                result = await obstore.get_async(
                    self._store,
                    self._key,
                    options={"range": (start, end), "if_match": self._etag},
                )
                data = memoryview(await result.bytes_async())
            except (FileNotFoundError, PreconditionError):
                # Deleted (or, were keys reused, replaced) since it was opened.
                raise BlobNotFound(self._key) from None
        if len(data) != end - start:
            raise StorageUnavailable("S3", f"asked for {end - start} bytes, got {len(data)}")
        return data

    async def chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        """The bytes from the start, chunk_size at a time."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        span = chunk_size * max(1, RANGE_BYTES // chunk_size)
        start = 0
        ahead: asyncio.Task[memoryview] | None = None
        if self.size:
            ahead = asyncio.ensure_future(self._range(0, min(span, self.size)))
        try:
            while ahead is not None:
                data = await ahead
                ahead = None
                start += len(data)
                if start < self.size:
                    ahead = asyncio.ensure_future(self._range(start, min(start + span, self.size)))
                for offset in range(0, len(data), chunk_size):
                    yield bytes(data[offset : offset + chunk_size])
        finally:
            if ahead is not None:
                ahead.cancel()
                # Retrieve its outcome so a failed prefetch is not logged as unobserved.
                await asyncio.gather(ahead, return_exceptions=True)

    async def close(self) -> None:
        """Nothing is held between ranges."""


async def _parts(staged: IO[bytes], size: int) -> AsyncIterator[bytes]:
    """The staged file in READ_BYTES pieces, read in a thread; refuses a short file."""
    sent = 0
    while piece := await asyncio.to_thread(staged.read, READ_BYTES):
        sent += len(piece)
        yield piece
    if sent != size:
        # A put must never complete with other bytes than were staged and validated.
        raise OSError(f"staged file changed while uploading: {size} bytes became {sent}")


class S3BlobStore:
    """Blobs as objects under an optional prefix of one bucket.

    Endpoint, credentials and region come from the standard AWS_* variables, which obstore
    reads; plain HTTP is allowed only when AWS_ENDPOINT_URL itself says http://. A blob
    appears whole when its single PUT or its multipart upload completes, never before; an
    upload that fails is aborted, so nothing is readable under its key.
    """

    def __init__(self, bucket: str, prefix: str, staging: Path) -> None:
        self.staging = staging
        self.staging.mkdir(parents=True, exist_ok=True)
        self._store = _s3_store(bucket, prefix, uploads=False)
        self._uploads = _s3_store(bucket, prefix, uploads=True)

    async def put(self, key: str, staged: Path) -> None:
        """Upload the staged file as key's object: one PUT, or a multipart upload past a part."""
        f = await asyncio.to_thread(staged.open, "rb")
        try:
            size = os.fstat(f.fileno()).st_size
            with _engine():
                await obstore.put_async(
                    self._uploads,
                    key,
                    _parts(f, size),
                    use_multipart=size > PART_BYTES,
                    chunk_size=PART_BYTES,
                    max_concurrency=UPLOAD_CONCURRENCY,
                )
        finally:
            f.close()

    async def open(self, key: str) -> S3Blob:
        """key's object, open for reading; BlobNotFound if there is none."""
        with _engine():
            try:
                meta = await obstore.head_async(self._store, key)
            except FileNotFoundError:
                raise BlobNotFound(key) from None
        return S3Blob(self._store, key, meta["size"], meta["e_tag"])

    async def delete(self, key: str) -> None:
        """Remove key's object; S3 answers a delete of nothing with success."""
        with _engine():
            await obstore.delete_async(self._store, key)

    async def close(self) -> None:
        """obstore's client holds only pooled connections, dropped with it."""
