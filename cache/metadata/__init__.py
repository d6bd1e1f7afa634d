"""Image metadata: records, page tokens, and the MetadataStore Protocol its backends implement."""

from __future__ import annotations

import base64
import builtins
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


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
    # Placeholders of the upright first frame (cache/placeholders.py); empty for an
    # image stored before they were made, or one none could be made of.
    blurhash: str = ""
    thumbhash: bytes = b""


FIELDS = tuple(ImageRecord.__dataclass_fields__)


@dataclass(frozen=True)
class Page:
    records: list[ImageRecord]
    next_token: str


class InvalidPageToken(ValueError):
    """The page token was not one this store issued."""


class IntentLost(RuntimeError):
    """An upload's intent was swept as stale before its record was inserted."""


class DeletionsMissed(RuntimeError):
    """The store lost track of deletions for a while: some may never be announced."""


class MetadataStore(Protocol):
    """Records, and the intents that make crash recovery look only at unfinished work.

    An upload records an intent before its blob is written and clears it in the same
    transaction that inserts its record; a delete removes the record and records an
    intent in one transaction, cleared once the blob and variants are gone. Recovery
    finishes what `unfinished` returns, so it never lists every image.
    """

    async def intend(self, image_id: str, now_ns: int) -> None:
        """Record that image_id's blob is about to be written."""

    async def insert(self, record: ImageRecord) -> None:
        """Make record visible and clear its intent, in one transaction; IntentLost if
        the intent is gone (swept as stale), and then nothing is inserted."""

    async def get(self, image_id: str) -> ImageRecord | None: ...

    async def list(self, owner: str, page_size: int, page_token: str) -> Page:
        """owner's records, newest first, by keyset pagination on an index."""

    async def delete(self, image_id: str, now_ns: int) -> bool:
        """Remove the record and record an intent to remove its blob and variants, in one
        transaction, announced to every replica's `deletions`; False if there was none."""

    async def unfinished(self, stale_before_ns: int) -> builtins.list[str]:
        """Ids whose work a crash may have cut short: every delete's, and the uploads'
        recorded before stale_before_ns (later ones may still be under way)."""

    async def finish(self, image_id: str) -> None:
        """Clear image_id's intent: its blob and variants are gone."""

    def deletions(self) -> AsyncIterator[str]:
        """Ids deleted through any replica from this call on, as they are deleted; raises
        DeletionsMissed when some may have been missed (the caller starts again)."""

    async def close(self) -> None: ...


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


def page_query(
    columns: str, owner: str, page_size: int, page_token: str, mark: str
) -> tuple[str, tuple[object, ...]]:
    """The SQL and arguments of one page of owner's records, newest first, by keyset
    pagination on (owner, created_ns DESC, id DESC); mark is the driver's placeholder.

    One more row than the page is asked for: `page_of` tells from it whether more follow.
    """
    where = f"owner = {mark}"
    args: tuple[object, ...] = (owner,)
    if page_token:
        created, after = decode_token(page_token)
        where += f" AND (created_ns, id) < ({mark}, {mark})"
        args += (created, after)
    sql = (
        f"SELECT {columns} FROM images WHERE {where} ORDER BY created_ns DESC, id DESC LIMIT {mark}"
    )
    return sql, (*args, page_size + 1)


def page_of(rows: Sequence[Sequence[Any]], page_size: int) -> Page:
    """The page that rows (from `page_query`) make, with the token of the next, if any."""
    records = [ImageRecord(*row) for row in rows[:page_size]]
    more = len(rows) > page_size
    return Page(records, encode_token(records[-1].created_ns, records[-1].id) if more else "")


def _id_bytes(image_id: str) -> bytes:
    return base64.urlsafe_b64decode(image_id + "==")
