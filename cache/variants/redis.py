"""Variants on Redis: one store every cache replica shares, evicted by Redis's own LRU.

Keys, after the configured prefix P, with the image id in braces so that everything of
one image hashes to one Redis Cluster slot:

    P{IMAGE}:v:KEY       hash: `record` (the VariantRecord as JSON) and `data` (the bytes)
    P{IMAGE}:keys        set: every KEY put for IMAGE, so a purge needs no SCAN
    P{IMAGE}:lease:KEY   string, SET NX PX: the render lease (its value names the holder)

A variant is served only while its image's set names it: if Redis evicts the set
before the variants, a purge could no longer find them, so they must not be served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
from dataclasses import asdict

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache.storage import StorageUnavailable
from cache.variants import Variant, VariantRecord

log = logging.getLogger("variants")

CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 1.0
# After Redis fails to answer, calls skip it for this long (a miss, a no-op, a grant)
# rather than each waiting out its own timeout; the first call after it tries again.
DOWN_FOR = 1.0
# Checksums of larger variants are computed off the event loop (about 1 ms per MiB).
_HASH_INLINE_BYTES = 1 << 20

# Atomic, so a put cannot slip between reading the set and deleting it. Counts the
# variants that were still there: those Redis evicted are not counted.
_PURGE = """
local removed = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    removed = removed + redis.call('DEL', ARGV[1] .. key)
end
redis.call('DEL', KEYS[1])
return removed
"""


class RedisVariantCache:
    """Variants in Redis under a key prefix; Redis down or slow is a miss, never an error,
    except for purge, which raises StorageUnavailable so that the delete is retried."""

    shared = True

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        down_for: float = DOWN_FOR,
    ) -> None:
        self.prefix = prefix
        self.down_for = down_for
        # One immediate retry on a broken connection (a pooled one Redis closed when it
        # restarted), none on a timeout: a slow Redis costs one timeout, not several.
        # Options in the URL's query (?socket_timeout=2) override these.
        self._client = Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=read_timeout,
            retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
        )
        self._purge = self._client.register_script(_PURGE)
        self._holder = f"{socket.gethostname()}:{os.getpid()}".encode()
        self._down_until = 0.0  # on the event loop's clock
        self._down = False

    def _variant_key(self, image_id: str, key: str) -> str:
        return f"{self.prefix}{{{image_id}}}:v:{key}"

    def _index_key(self, image_id: str) -> str:
        return f"{self.prefix}{{{image_id}}}:keys"

    def _lease_key(self, image_id: str, key: str) -> str:
        return f"{self.prefix}{{{image_id}}}:lease:{key}"

    async def get(self, image_id: str, key: str) -> Variant | None:
        """The variant; None if absent, evicted, damaged, or Redis does not answer."""
        if self._skipping():
            return None
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(self._variant_key(image_id, key), ["record", "data"])
                pipe.sismember(self._index_key(image_id), key)
                (record, data), indexed = await pipe.execute()
        except RedisError as exc:
            self._failed("get", exc)
            return None
        self._answered()
        if record is None or data is None or not indexed:
            return None
        return await _checked(image_id, key, record, data)

    async def put(self, variant: Variant) -> None:
        """Keep variant, name it in its image's set and end its render lease, at once."""
        if self._skipping():
            return
        record = variant.record
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(
                    self._variant_key(record.image_id, record.key),
                    mapping={"record": json.dumps(asdict(record)), "data": variant.data},
                )
                pipe.sadd(self._index_key(record.image_id), record.key)
                pipe.delete(self._lease_key(record.image_id, record.key))
                await pipe.execute()
        except RedisError as exc:
            self._failed("put", exc)
            return
        self._answered()

    async def purge(self, image_id: str) -> int:
        """Drop every variant of image_id; StorageUnavailable if Redis does not answer."""
        if self._skipping():
            raise StorageUnavailable("Redis", "it failed to answer a moment ago")
        try:
            removed = await self._purge(
                keys=[self._index_key(image_id)], args=[self._variant_key(image_id, "")]
            )
        except RedisError as exc:
            self._failed("purge", exc)
            raise StorageUnavailable("Redis", str(exc)) from exc
        self._answered()
        return int(removed)

    async def claim(self, image_id: str, key: str, seconds: float) -> bool:
        """Take the lease to render key for `seconds`; granted when Redis does not answer."""
        if self._skipping():
            return True
        try:
            taken = await self._client.set(
                self._lease_key(image_id, key),
                self._holder,
                nx=True,
                px=max(1, round(seconds * 1000)),
            )
        except RedisError as exc:
            # Better that replicas render the same variant twice than none render it.
            self._failed("claim", exc)
            return True
        self._answered()
        return bool(taken)

    async def close(self) -> None:
        """Close the connections (writes are never left pending)."""
        await self._client.aclose()

    def _skipping(self) -> bool:
        return asyncio.get_running_loop().time() < self._down_until

    def _failed(self, action: str, exc: RedisError) -> None:
        if not isinstance(exc, RedisConnectionError | RedisTimeoutError):
            # Redis answered, with a refusal (out of memory under noeviction, say).
            log.warning("Redis refused a variant %s", action, extra={"err": str(exc)})
            return
        self._down_until = asyncio.get_running_loop().time() + self.down_for
        if not self._down:
            self._down = True
            log.warning(
                "Redis does not answer: variants miss until it does", extra={"err": str(exc)}
            )

    def _answered(self) -> None:
        if self._down:
            self._down = False
            log.info("Redis answers again")


async def _checked(image_id: str, key: str, raw_record: bytes, data: bytes) -> Variant | None:
    """The stored variant if its record parses, names it, and matches its bytes."""
    try:
        record = VariantRecord(**json.loads(raw_record))
        if (record.image_id, record.key) != (image_id, key) or len(data) != record.byte_size:
            raise ValueError("the record does not describe these bytes")
        if len(data) > _HASH_INLINE_BYTES:
            digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        else:
            digest = hashlib.sha256(data).hexdigest()
        if digest != record.sha256:
            raise ValueError("variant bytes do not match their checksum")
    except (ValueError, TypeError) as exc:
        # A re-render overwrites it; until then it is a miss, never served.
        log.warning("ignoring an unreadable variant", extra={"key": key, "err": str(exc)})
        return None
    return Variant(record, data)
