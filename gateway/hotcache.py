"""Recent HTTP answers for images and variants, in memory, dropped the moment an image is.

Originals and variants never change under their URL, so the only way an answer goes
stale is a delete. Each gateway process watches the cache service's deletions
(WatchDeletions) and serves from memory only while that watch is connected: when it
breaks, everything held is forgotten until it is back. Ids are never reused, so a
deleted id is remembered and never cached again, which closes the race with a request
that was already in flight when the delete happened.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc

from common.lru import ByteLRU

log = logging.getLogger("gateway.hotcache")

MAX_ENTRY_BYTES = 1024 * 1024
DELETED_IDS = 100_000


@dataclass(frozen=True)
class Entry:
    body: bytes
    media_type: str
    headers: dict[str, str]
    owner: str
    visibility: int


class HotCache:
    """An LRU of answers keyed by (image id, request), purged by image id."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.connected = False
        self._lru: ByteLRU[tuple[str, str], Entry] = ByteLRU(
            budget, lambda e: len(e.body) + 512, self._unindex
        )
        self._by_image: dict[str, set[str]] = {}
        self._deleted: ByteLRU[str, bool] = ByteLRU(DELETED_IDS, lambda _: 1)

    @property
    def enabled(self) -> bool:
        return self.budget > 0 and self.connected

    def get(self, image_id: str, request_key: str) -> Entry | None:
        if not self.enabled:
            return None
        return self._lru.get((image_id, request_key))

    def put(self, image_id: str, request_key: str, entry: Entry) -> None:
        if not self.enabled or len(entry.body) > MAX_ENTRY_BYTES or image_id in self._deleted:
            return
        if self._lru.put((image_id, request_key), entry):
            self._by_image.setdefault(image_id, set()).add(request_key)

    def forget(self, image_id: str) -> None:
        self._deleted.put(image_id, True)
        for request_key in self._by_image.pop(image_id, set()):
            self._lru.pop((image_id, request_key))

    def clear(self) -> None:
        for image_id in list(self._by_image):
            for request_key in self._by_image.pop(image_id):
                self._lru.pop((image_id, request_key))

    def _unindex(self, ident: tuple[str, str]) -> None:
        keys = self._by_image.get(ident[0])
        if keys is not None:
            keys.discard(ident[1])
            if not keys:
                del self._by_image[ident[0]]

    async def watch(self, cache: pb_grpc.CacheServiceAsyncStub) -> None:
        """Follow deletions for as long as the gateway runs (a lifespan task)."""
        if self.budget <= 0:
            return
        backoff = 0.2
        while True:
            stream = cache.WatchDeletions(pb.WatchDeletionsRequest())
            try:
                await stream.wait_for_connection()
                self.connected = True
                backoff = 0.2
                async for event in stream:
                    self.forget(event.image_id)
            except grpc.aio.AioRpcError as exc:
                log.warning("deletion watch broken", extra={"code": exc.code().name})
            finally:
                self.connected = False
                self.clear()
                stream.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
