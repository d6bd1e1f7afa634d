"""In-memory copies of what belongs to an image, dropped the moment the image is deleted.

Originals and variants never change under an id, so the only way a copy goes stale is a
delete. A HotCache follows the cache service's WatchDeletions stream and serves only
while that stream is connected: when it breaks, everything held is forgotten until it is
back. Ids are never reused, so a deleted id is remembered and never cached again, which
closes the race with a request that was already in flight when the delete happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc

from common.lru import ByteLRU, ImageLRU

log = logging.getLogger("hotcache")

V = TypeVar("V")
DELETED_IDS = 100_000


class HotCache(Generic[V]):
    """An LRU keyed by (image id, key) within a byte budget, purged by image id."""

    def __init__(self, budget: int, size: Callable[[V], int], max_entry: int) -> None:
        self.budget = budget
        self.max_entry = max_entry
        self.connected = False
        # Bumped whenever everything is forgotten: an answer fetched before that moment
        # may belong to an image deleted while the watch was down, so it is not kept.
        self.generation = 0
        self._size = size
        self._lru: ImageLRU[V] = ImageLRU(budget, size)
        self._deleted: ByteLRU[str, bool] = ByteLRU(DELETED_IDS, lambda _: 1)

    @property
    def enabled(self) -> bool:
        return self.budget > 0 and self.connected

    def get(self, image_id: str, key: str) -> V | None:
        if not self.enabled:
            return None
        return self._lru.get(image_id, key)

    def put(self, image_id: str, key: str, value: V, generation: int) -> None:
        """Keep value, unless the cache was emptied since `generation` was read."""
        if (
            not self.enabled
            or generation != self.generation
            or self._size(value) > self.max_entry
            or image_id in self._deleted
        ):
            return
        self._lru.put(image_id, key, value)

    def forget(self, image_id: str) -> None:
        self._deleted.put(image_id, True)
        self._lru.purge(image_id)

    def clear(self) -> None:
        self.generation += 1
        self._lru.clear()

    async def watch(
        self,
        cache: pb_grpc.CacheServiceAsyncStub,
        also_forget: Callable[[str], object] | None = None,
    ) -> None:
        """Follow deletions for as long as the process runs (a background task); each
        deleted id is also passed to also_forget, for other copies the caller holds
        (which need the watch even when this cache holds nothing)."""
        if self.budget <= 0 and also_forget is None:
            return
        backoff = 0.2
        while True:
            # Waits quietly for a cache service that is not up yet (all services start
            # at once under `make run`) or is coming back; a broken watch is a warning.
            stream = cache.WatchDeletions(pb.WatchDeletionsRequest(), wait_for_ready=True)
            try:
                await stream.wait_for_connection()
                self.connected = True
                backoff = 0.2
                async for event in stream:
                    self.forget(event.image_id)
                    if also_forget is not None:
                        also_forget(event.image_id)
            except grpc.aio.AioRpcError as exc:
                log.warning("deletion watch broken", extra={"code": exc.code().name})
            finally:
                self.connected = False
                self.clear()
                stream.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
