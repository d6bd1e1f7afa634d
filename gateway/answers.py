"""What the gateway keeps of an answer to serve it again from memory."""

from __future__ import annotations

from dataclasses import dataclass

from common.hotcache import HotCache

MAX_ENTRY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    body: bytes
    media_type: str
    headers: dict[str, str]
    owner: str
    visibility: int


def answer_cache(budget: int) -> HotCache[Entry]:
    """Answers up to MAX_ENTRY_BYTES each, within budget bytes."""
    return HotCache(budget, lambda e: len(e.body) + 512, MAX_ENTRY_BYTES)
