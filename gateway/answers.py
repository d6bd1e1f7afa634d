"""What the gateway keeps of an answer to serve it again from memory, and how it serves it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property, lru_cache

from starlette.responses import Response

from common.hotcache import HotCache

MAX_ENTRY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    body: bytes
    media_type: str
    headers: dict[str, str]
    owner: str
    visibility: int
    # Any caller who presents no credential may be given it before routing
    # (gateway/shared.py): it is public and draws no other image (a watermark's image
    # is checked on every request, as it may have gone since).
    shared: bool = False

    def served_again(self) -> dict[str, str]:
        """Its headers as served from memory."""
        if "X-Cache" not in self.headers:
            return dict(self.headers)
        return {**self.headers, "X-Cache": "HIT"}

    @cached_property
    def encoded(self) -> list[tuple[bytes, bytes]]:
        """The whole answer's headers as served from memory, encoded once: the most
        frequent answer there is, and Response would encode them on every request."""
        return Response(
            self.body, headers=self.served_again(), media_type=self.media_type
        ).raw_headers


class HeldResponse(Response):
    """A 200 whose headers were encoded when it was kept (see Entry.encoded)."""

    def __init__(self, entry: Entry) -> None:
        self.status_code = 200
        self.body = entry.body
        self.raw_headers = entry.encoded
        self.background = None


def answer_cache(budget: int) -> HotCache[Entry]:
    """Answers up to MAX_ENTRY_BYTES each, within budget bytes."""
    return HotCache(budget, lambda e: len(e.body) + 512, MAX_ENTRY_BYTES)


def answer_key(query_string: bytes, accept: str) -> str:
    """An answer's identity besides its image: the raw query, and Accept for variants
    (cheap to build, so a hit is found before any parsing; a key that was valid once
    is valid for good)."""
    if not query_string:
        return ""
    return f"{query_string.decode('latin-1')}|{_digest(accept)}"


@lru_cache(maxsize=256)
def _digest(accept: str) -> str:
    """Accept, hashed: clients send few different ones (browsers one each), and the
    hash costs as much as the rest of the key."""
    return hashlib.sha256(accept.encode("latin-1")).hexdigest()


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header matches etag (a 304 is the answer)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def from_memory(entry: Entry, method: str, if_none_match: str | None) -> Response:
    """The held answer again: a 304, a HEAD answer, or the whole body."""
    if not_modified(if_none_match, entry.headers["ETag"]):
        return Response(status_code=304, headers=entry.served_again())
    if method == "HEAD":
        headers = {**entry.served_again(), "Content-Length": str(len(entry.body))}
        return Response(headers=headers, media_type=entry.media_type)
    return HeldResponse(entry)
