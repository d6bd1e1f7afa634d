"""The variant cache: rendered variants by (image id, key), and leases to render them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

# Keys are ids in URLs, logs and storage keys: a short, plain alphabet.
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


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
    """A cache, so losing an entry is always allowed: a backend that fails makes get a
    miss, put a no-op and claim a grant, never an error. Only purge raises, so that a
    delete it could not finish is retried."""

    # True when every cache replica sees the same entries (a shared engine); False when
    # each holds its own, and so must purge its own when another replica deletes.
    shared: bool

    async def get(self, image_id: str, key: str) -> Variant | None: ...

    async def put(self, variant: Variant) -> None:
        """Keep variant, and end the render lease on its key."""

    async def purge(self, image_id: str) -> int:
        """Drop every variant of image_id, without scanning others; return how many."""

    async def claim(self, image_id: str, key: str, seconds: float) -> bool:
        """Take the lease to render key for `seconds`; False while someone else holds it."""

    async def close(self) -> None:
        """Finish pending writes (at shutdown)."""
