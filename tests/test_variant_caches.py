"""Every VariantCache keeps one contract: the embedded tiers and Redis alike.

Redis runs on the machine (tests/engines.py); each test keeps its keys under a prefix of
its own, inside the session's, which is removed after the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from redis.asyncio.connection import SSLConnection

from cache.backends import open_variant_cache
from cache.config import Settings
from cache.storage import StorageUnavailable
from cache.variants import Variant, VariantCache, VariantRecord
from cache.variants.local import TieredVariantCache
from cache.variants.redis import RedisVariantCache
from common.env import ConfigError, Env
from tests.engines import REDIS_URL, Cutoff
from tests.support import free_port

T = TypeVar("T")


def new_id() -> str:
    """A fresh image id, shaped like the service's (22 characters of base64url)."""
    return secrets.token_urlsafe(16)


def variant(image_id: str, key: str, data: bytes) -> Variant:
    digest = hashlib.sha256(data).hexdigest()
    return Variant(VariantRecord(image_id, key, "image/webp", 4, 3, len(data), digest), data)


def settings(data_dir: Path, url: str, prefix: str | None = None) -> Settings:
    env = {"IMAGESVC_DATA_DIR": str(data_dir), "IMAGESVC_VARIANT_CACHE_URL": url}
    if prefix is not None:
        env["IMAGESVC_VARIANT_KEY_PREFIX"] = prefix
    return Settings.from_env(Env(env))


@dataclass
class Engine:
    """How to open one kind of cache, and to damage what it stored behind its back."""

    name: str
    url: str
    prefix: str
    data_dir: Path

    @property
    def shared(self) -> bool:
        return self.name == "redis"

    def open(self) -> VariantCache:
        return open_variant_cache(settings(self.data_dir, self.url, self.prefix))

    async def damage(self, cache: VariantCache, stored: Variant) -> VariantCache:
        """Flip the stored bytes of `stored`; return the cache to read it back from."""
        damaged = bytes(b ^ 0xFF for b in stored.data)
        record = stored.record
        if self.name == "redis":
            with contextlib.closing(redis.Redis.from_url(REDIS_URL)) as raw:
                name = f"{self.prefix}{{{record.image_id}}}:v:{record.key}"
                assert raw.hset(name, "data", damaged) == 0  # overwrote, did not add
            return cache
        # The disk tier's file, read again after a restart (memory starts empty).
        await cache.close()
        with contextlib.closing(sqlite3.connect(self.data_dir / "variants" / "variants.db")) as db:
            changed = db.execute(
                "UPDATE variants SET data = ? WHERE image_id = ? AND key = ?",
                (damaged, record.image_id, record.key),
            ).rowcount
            db.commit()
        assert changed == 1
        return self.open()


@pytest.fixture(params=["tiered", "redis"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "redis":
        session_prefix: str = request.getfixturevalue("redis_key_prefix")
        return Engine("redis", REDIS_URL, f"{session_prefix}{new_id()}:", tmp_path)
    return Engine("tiered", f"memory://{tmp_path / 'variants'}", "unused:", tmp_path)


@pytest.fixture
def redis_engine(redis_key_prefix: str, tmp_path: Path) -> Engine:
    return Engine("redis", REDIS_URL, f"{redis_key_prefix}{new_id()}:", tmp_path)


def run(engine: Engine, scenario: Callable[[VariantCache], Awaitable[None]]) -> None:
    """Run scenario on a freshly opened cache, closed afterwards."""

    async def main() -> None:
        cache = engine.open()
        try:
            await scenario(cache)
        finally:
            await cache.close()

    asyncio.run(main())


def test_a_put_variant_is_got_back_whole(engine: Engine) -> None:
    image = new_id()

    async def scenario(cache: VariantCache) -> None:
        assert cache.shared is engine.shared
        stored = variant(image, "k1", b"\x00variant bytes" * 1000)
        assert await cache.get(image, "k1") is None
        await cache.put(stored)
        assert await cache.get(image, "k1") == stored
        assert await cache.get(image, "k2") is None
        assert await cache.get(new_id(), "k1") is None
        replaced = variant(image, "k1", b"another rendering")
        await cache.put(replaced)
        assert await cache.get(image, "k1") == replaced

    run(engine, scenario)


def test_purge_drops_that_image_only_and_counts(engine: Engine) -> None:
    image, other = new_id(), new_id()

    async def scenario(cache: VariantCache) -> None:
        for key in ("a", "b", "c"):
            await cache.put(variant(image, key, key.encode() * 100))
        await cache.put(variant(other, "a", b"kept"))
        assert await cache.purge(image) == 3
        for key in ("a", "b", "c"):
            assert await cache.get(image, key) is None
        assert await cache.get(other, "a") == variant(other, "a", b"kept")
        assert await cache.purge(image) == 0
        assert await cache.purge(new_id()) == 0
        await cache.put(variant(image, "a", b"after the purge"))  # the image may fill again
        assert await cache.get(image, "a") is not None

    run(engine, scenario)


def test_a_lease_is_held_until_it_expires(engine: Engine) -> None:
    image = new_id()

    async def scenario(cache: VariantCache) -> None:
        assert await cache.claim(image, "k", 0.3)
        assert not await cache.claim(image, "k", 0.3)
        assert await cache.claim(image, "other", 0.3)  # leases are per key ...
        assert await cache.claim(new_id(), "k", 0.3)  # ... and per image
        # scenario: the 0.3 s leases run out
        await asyncio.sleep(0.35)
        assert await cache.claim(image, "k", 30)
        assert not await cache.claim(image, "k", 30)

    run(engine, scenario)


def test_a_put_ends_the_lease_on_its_key(engine: Engine) -> None:
    image = new_id()

    async def scenario(cache: VariantCache) -> None:
        assert await cache.claim(image, "k", 30)
        assert await cache.claim(image, "j", 30)
        await cache.put(variant(image, "k", b"rendered"))
        assert await cache.claim(image, "k", 30)
        assert not await cache.claim(image, "j", 30)  # only its own key's lease

    run(engine, scenario)


def test_damaged_bytes_are_a_miss(engine: Engine) -> None:
    image = new_id()

    async def scenario() -> None:
        cache = engine.open()
        stored = variant(image, "k", b"the rendered variant" * 50)
        await cache.put(stored)
        assert await cache.get(image, "k") == stored
        cache = await engine.damage(cache, stored)
        try:
            assert await cache.get(image, "k") is None
            await cache.put(stored)  # a new rendering replaces it
            assert await cache.get(image, "k") == stored
        finally:
            await cache.close()

    asyncio.run(scenario())


def raw_redis() -> contextlib.closing[redis.Redis]:
    return contextlib.closing(redis.Redis.from_url(REDIS_URL))


def test_redis_key_layout(redis_engine: Engine) -> None:
    image, prefix = new_id(), redis_engine.prefix

    async def scenario(cache: VariantCache) -> None:
        assert await cache.claim(image, "k", 30)
        with raw_redis() as raw:
            assert raw.pttl(f"{prefix}{{{image}}}:lease:k") > 25_000
        await cache.put(variant(image, "k", b"bytes"))
        with raw_redis() as raw:
            assert sorted(raw.scan_iter(match=f"{prefix}*")) == [
                f"{prefix}{{{image}}}:keys".encode(),
                f"{prefix}{{{image}}}:v:k".encode(),
            ]
            assert raw.smembers(f"{prefix}{{{image}}}:keys") == {b"k"}
            assert raw.hget(f"{prefix}{{{image}}}:v:k", "data") == b"bytes"
        await cache.purge(image)
        with raw_redis() as raw:
            assert list(raw.scan_iter(match=f"{prefix}*")) == []

    run(redis_engine, scenario)


def test_a_variant_redis_evicted_is_a_miss_and_purge_still_works(redis_engine: Engine) -> None:
    image, prefix = new_id(), redis_engine.prefix

    async def scenario(cache: VariantCache) -> None:
        await cache.put(variant(image, "a", b"a"))
        await cache.put(variant(image, "b", b"b"))
        with raw_redis() as raw:
            assert raw.delete(f"{prefix}{{{image}}}:v:a") == 1  # as allkeys-lru would
        assert await cache.get(image, "a") is None
        assert await cache.get(image, "b") is not None
        assert await cache.purge(image) == 1  # what was still there
        assert await cache.get(image, "b") is None
        with raw_redis() as raw:
            assert raw.exists(f"{prefix}{{{image}}}:keys") == 0

    run(redis_engine, scenario)


def test_a_variant_whose_image_set_redis_evicted_is_never_served(redis_engine: Engine) -> None:
    image, prefix = new_id(), redis_engine.prefix

    async def scenario(cache: VariantCache) -> None:
        await cache.put(variant(image, "a", b"a"))
        with raw_redis() as raw:
            assert raw.delete(f"{prefix}{{{image}}}:keys") == 1
        # A purge could no longer find it, so it must not be served.
        assert await cache.get(image, "a") is None
        await cache.put(variant(image, "a", b"a"))  # a re-render names it again
        assert await cache.get(image, "a") is not None
        assert await cache.purge(image) == 1

    run(redis_engine, scenario)


async def timed(call: Awaitable[T], within: float) -> T:
    start = time.monotonic()
    result = await call
    assert time.monotonic() - start < within
    return result


def test_redis_refusing_connections_is_a_miss_a_noop_and_a_grant() -> None:
    async def scenario() -> None:
        # down_for=0: every call goes to the dead endpoint, none skips it.
        cache = RedisVariantCache(f"redis://127.0.0.1:{free_port()}/0", "p:", down_for=0)
        image = new_id()
        try:
            assert await timed(cache.get(image, "k"), 1.5) is None
            await timed(cache.put(variant(image, "k", b"x")), 1.5)
            assert await timed(cache.claim(image, "k", 30), 1.5)
            assert await timed(cache.claim(image, "k", 30), 1.5)  # granted to everyone
            with pytest.raises(StorageUnavailable, match="Redis"):
                await timed(cache.purge(image), 1.5)
        finally:
            await cache.close()

    asyncio.run(scenario())


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


def test_a_redis_that_does_not_answer_costs_one_timeout_then_is_skipped() -> None:
    async def scenario(port: int) -> None:
        cache = RedisVariantCache(f"redis://127.0.0.1:{port}/0", "p:", down_for=1.0)
        image = new_id()
        try:
            start = time.monotonic()
            assert await cache.get(image, "k") is None
            assert 0.9 < time.monotonic() - start < 2  # the read timeout, once
            # Within the next second no call waits for Redis.
            await timed(cache.put(variant(image, "k", b"x")), 0.1)
            assert await timed(cache.claim(image, "k", 30), 0.1)
            with pytest.raises(StorageUnavailable, match="Redis"):
                await timed(cache.purge(image), 0.1)
            assert await timed(cache.get(image, "k"), 0.1) is None
            # scenario: the second for which the cache skips Redis passes
            await asyncio.sleep(1.0)
            start = time.monotonic()  # then it is tried again
            with pytest.raises(StorageUnavailable, match="Redis"):
                await cache.purge(image)
            assert 0.9 < time.monotonic() - start < 2
        finally:
            await cache.close()

    with silent_server() as port:
        asyncio.run(scenario(port))


def test_a_redis_cache_recovers_by_itself_when_redis_returns(redis_key_prefix: str) -> None:
    image = new_id()
    stored = variant(image, "k", b"rendered while Redis was back")

    async def scenario(relay: Cutoff) -> None:
        relay.cut()  # Redis away from the start
        prefix = f"{redis_key_prefix}{new_id()}:"
        cache = RedisVariantCache(relay.via(REDIS_URL), prefix, down_for=0.2)
        try:
            assert await cache.get(image, "k") is None  # nothing there yet
            with pytest.raises(StorageUnavailable):
                await cache.purge(image)
            relay.restore()
            # scenario: the 0.2 s for which the cache skips Redis passes
            await asyncio.sleep(0.25)
            assert await cache.claim(image, "k", 30)
            assert not await cache.claim(image, "k", 30)  # a real lease again
            await cache.put(stored)
            assert await cache.get(image, "k") == stored
            relay.cut()  # and away again: its pooled connection is broken
            assert await timed(cache.get(image, "k"), 1.5) is None
            # scenario: Redis stays away a while
            await asyncio.sleep(0.25)
            relay.restore()
            # scenario: the 0.2 s for which the cache skips Redis passes
            await asyncio.sleep(0.25)
            assert await cache.get(image, "k") == stored
            assert await cache.purge(image) == 1
        finally:
            await cache.close()

    with Cutoff.to(REDIS_URL) as relay:
        asyncio.run(scenario(relay))


def test_the_variant_cache_url_picks_the_engine(tmp_path: Path) -> None:
    async def opened(url: str, prefix: str | None = None) -> VariantCache:
        cache = open_variant_cache(settings(tmp_path, url, prefix))
        await cache.close()
        return cache

    async def scenario() -> None:
        memory_only = await opened("memory://")
        assert isinstance(memory_only, TieredVariantCache) and memory_only.disk is None
        tiered = await opened(f"memory://{tmp_path / 'v'}")
        assert isinstance(tiered, TieredVariantCache) and tiered.disk is not None
        assert tiered.disk.root == tmp_path / "v"
        plain = await opened("redis://127.0.0.1:6379/0")
        assert isinstance(plain, RedisVariantCache) and plain.prefix == "imagesvc:"
        tls = await opened("rediss://cache.internal:6380/2", prefix="tenant-a:")
        assert isinstance(tls, RedisVariantCache) and tls.prefix == "tenant-a:"
        pool = tls._client.connection_pool
        assert pool.connection_class is SSLConnection
        assert (pool.connection_kwargs["host"], pool.connection_kwargs["port"]) == (
            "cache.internal",
            6380,
        )
        assert pool.connection_kwargs["db"] == 2
        assert isinstance(await opened("redis://localhost"), RedisVariantCache)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "url",
    [
        "redis://",
        "redis://:6379/0",
        "redis://127.0.0.1:port/0",
        "redis://127.0.0.1:70000/0",
        "redis://127.0.0.1:0/0",
        "redis://127.0.0.1:6379/zero",
        "redis://127.0.0.1:6379/0?socket_timeout=soon",
        "unix:///run/redis.sock",
        "memcached://127.0.0.1:11211",
    ],
)
def test_a_bad_variant_cache_url_is_refused_naming_the_variable(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="IMAGESVC_VARIANT_CACHE_URL"):
        open_variant_cache(settings(tmp_path, url))


def test_a_refused_redis_url_does_not_show_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        open_variant_cache(settings(tmp_path, "redis://app:s3cret@127.0.0.1:6379/nope"))
    assert "s3cret" not in str(refused.value) and "app:***@" in str(refused.value)
