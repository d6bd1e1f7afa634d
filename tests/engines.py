"""The real engines tests run against: a moto S3 server, PostgreSQL and Redis.

PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) run on every machine
this project is tested on (`.ci/run` starts them); moto's S3 server is started here. Each
test run gets its own database, key prefix and bucket, and removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import redis

from tests.support import free_port

POSTGRES_ADMIN_URL = os.environ.get(
    "IMAGESVC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("IMAGESVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Credentials moto accepts; only the endpoint differs from a real deployment.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}
# Each engine's port where its URL names none.
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432, "redis": 6379}


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database of its own; yields its URL and drops it afterwards."""
    name = unique("imagesvc_test_")
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_prefix() -> Iterator[str]:
    """A key prefix of its own on the shared Redis; its keys are removed afterwards."""
    prefix = unique("imagesvc-test-") + ":"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on a loopback port."""

    endpoint: str

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def create_bucket(self) -> str:
        """A new, empty bucket's name."""
        import boto3  # moto's own dependency; the service itself never uses boto

        name = unique("imagesvc-test-")
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_CREDENTIALS["AWS_REGION"],
        )
        client.create_bucket(Bucket=name)
        return name


@contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """moto's standalone server (`moto[server]`), stopped afterwards."""
    port = free_port()
    log = (log_dir / "moto.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
        env={**os.environ, **S3_CREDENTIALS},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        yield S3Server(endpoint)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


class Cutoff:
    """The tests' one TCP relay in front of an engine, to cause real network faults there:
    cut() resets every relayed connection and refuses new ones, restore() relays again on
    the same port. For engines shared with other tests, which must not be stopped.

    It runs an event loop of its own in a thread, so sync and async tests use it alike and
    a reset happens at once, whatever the relayed connections are waiting for.

    cut_after: once this many bytes have gone upstream since the last restore, it cuts,
    the next ones not sent (an engine dying mid-request). upstream_rate: upstream bytes a
    second, for each connection (a slow client).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        cut_after: int | None = None,
        upstream_rate: int | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.cut_after = cut_after
        self.upstream_rate = upstream_rate
        self.upstream_bytes = 0  # since the last restore
        self._epoch = 0  # counts cuts: a connection accepted before the last one is dropped
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.restore()

    @classmethod
    def to(cls, url: str, **options: int | None) -> Cutoff:
        """A relay to the engine at url (http, postgresql, redis; its scheme's port if none)."""
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        return cls(parts.hostname or "127.0.0.1", port, **options)

    def via(self, url: str) -> str:
        """url (credentials, path and all), reaching its engine through this relay."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        address = f"127.0.0.1:{self.port}"
        return parts._replace(
            netloc=f"{credentials}@{address}" if credentials else address
        ).geturl()

    def restore(self) -> None:
        """Accept and relay connections again, on the same port."""
        self._call(self._listen())

    def cut(self) -> None:
        """Reset every relayed connection and refuse new ones; returns once they are gone."""
        self._call(self._cut())

    def close(self) -> None:
        """Cut for good and stop the relay's thread."""
        if self._loop.is_closed():
            return
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Cutoff:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, work: Coroutine[None, None, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        epoch = self._epoch
        self.upstream_bytes = 0
        self._server = await asyncio.start_server(
            lambda reader, writer: self._relay(reader, writer, epoch), "127.0.0.1", self.port
        )

    async def _cut(self) -> None:
        self._reset()
        # The relays end once their sockets are gone; none is left for the loop to cancel.
        await asyncio.gather(*self._relays, return_exceptions=True)

    def _reset(self) -> None:
        self._epoch += 1
        if self._server is not None:
            self._server.close()  # its listening socket at once: new connections are refused
            self._server = None
        for writer in self._writers:
            abort(writer)
        self._writers.clear()

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, epoch: int
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        mine = {writer}
        try:
            if epoch != self._epoch:  # accepted just before a cut
                abort(writer)
                return
            self._writers.add(writer)
            try:
                connecting = asyncio.open_connection(*self.target)
                up_reader, up_writer = await asyncio.wait_for(connecting, 5)
            except OSError:  # the engine refused or did not answer: so does the relay
                abort(writer)
                return
            mine.add(up_writer)
            if epoch != self._epoch:  # cut while connecting (the client's side is reset)
                abort(up_writer)
                return
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, upstream=True),
                self._pipe(up_reader, writer, upstream=False),
            )
        finally:
            self._writers -= mine
            self._relays.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream:
                    if self.upstream_rate:
                        await asyncio.sleep(len(data) / self.upstream_rate)
                    self.upstream_bytes += len(data)
                    if self.cut_after is not None and self.upstream_bytes > self.cut_after:
                        self._reset()
                        return
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (linger 0), as when the engine's host goes away."""
    with contextlib.suppress(OSError):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
