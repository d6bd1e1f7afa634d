"""How the cache service's start-up and metadata reads grow with the number of images.

Stores of 0, 1k, 10k and 100k images are filled straight through SQL (COPY into
PostgreSQL, one executemany transaction into SQLite: the records an upload would
write, without the uploads), then served by the real cache service process:

- start-up: spawn to the "listening" line, and to the first successful StatImage, at
  10k and 100k images against the empty store, each backend in the same run;
- reads: StatImage (a random image each call) and ListImages' first page for the
  owner of every image, through gRPC, at 100k images against 1k.

Both should be flat: start-up never lists images (recovery looks only at unfinished
work, in the background) and both reads are index lookups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import image_pb2

from bench import charts
from bench.timing import interleaved_ms
from cache.metadata import FIELDS
from cache.metadata.postgres import PostgresMetadataStore
from cache.metadata.sqlite import SqliteMetadataStore
from tests.engines import postgres_database
from tests.support import ROOT

OWNER = "bench-owner"
STARTUP_SIZES = (0, 10_000, 100_000)
READ_SIZES = (1_000, 100_000)
SPAWNS = 12  # per backend and size, in rounds over the sizes
READ_RUNS = 300
Row = tuple[str | int | bytes, ...]


def records(n: int) -> list[Row]:
    """n image records of one owner, public, in FIELDS order, a nanosecond apart."""
    base = time.time_ns() - n
    return [
        (
            secrets.token_urlsafe(16),
            "photo.jpg",
            "image/jpeg",
            "JPEG",
            1200,
            800,
            1,
            102_400,
            "0" * 64,
            base + i,
            OWNER,
            image_pb2.VISIBILITY_PUBLIC,
            "",  # no placeholders, like an image stored before they were made
            b"",
        )
        for i in range(n)
    ]


def fill_sqlite(path: Path, rows: list[Row]) -> str:
    """A SQLite store holding rows; its URL."""
    asyncio.run(SqliteMetadataStore(path).close())  # the store's own schema
    db = sqlite3.connect(path)
    with db:  # one transaction
        marks = ", ".join("?" * len(FIELDS))
        db.executemany(f"INSERT INTO images ({', '.join(FIELDS)}) VALUES ({marks})", rows)
    db.close()
    return f"sqlite://{path}"


def fill_postgres(url: str, rows: list[Row]) -> str:
    """The database at url, migrated and holding rows; url."""

    async def migrate() -> None:
        await (await PostgresMetadataStore.open(url)).close()

    asyncio.run(migrate())
    with psycopg.connect(url, autocommit=True) as db:
        with db.cursor().copy(f"COPY images ({', '.join(FIELDS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        db.execute("ANALYZE images")  # plans as a long-running database would have them
    return url


class Cache:
    """`python -m cache` on a metadata store, timed from spawn to listening."""

    def __init__(self, metadata_url: str, data_dir: Path) -> None:
        env = {
            **os.environ,
            "IMAGESVC_DATA_DIR": str(data_dir),
            "IMAGESVC_METADATA_URL": metadata_url,
            "IMAGESVC_CACHE_LISTEN": "127.0.0.1:0",
            # Only start and stop lines (always logged): nothing else to read through.
            "IMAGESVC_LOG_LEVEL": "WARNING",
        }
        self.spawned = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cache"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        lines: list[bytes] = []
        # Read the log as it comes (no polling), so the time is the line's own.
        for line in self.proc.stderr:
            lines.append(line)
            if line.startswith(b"{") and json.loads(line).get("msg") == "listening":
                self.listening = time.perf_counter()
                self.address = f"127.0.0.1:{json.loads(line)['port']}"
                break
        else:
            raise RuntimeError(b"".join(lines[-20:]).decode(errors="replace"))
        # Keep draining, so a chatty process never blocks on a full pipe.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@contextlib.contextmanager
def serving(metadata_url: str, data_dir: Path) -> Iterator[Cache]:
    cache = Cache(metadata_url, data_dir)
    try:
        yield cache
    finally:
        cache.stop()


def first_answer(cache: Cache, image_id: str) -> float:
    """Seconds from spawn to the first StatImage answered (for an empty store, its
    IMAGE_NOT_FOUND), by a client that connects once the service says it listens."""
    with grpc.insecure_channel(cache.address) as ch:
        stub = pb_grpc.CacheServiceStub(ch)
        deadline = time.monotonic() + 30
        while True:
            try:
                stub.StatImage(pb.StatImageRequest(id=image_id), timeout=5)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)
                    continue
            return time.perf_counter() - cache.spawned


@dataclass(frozen=True)
class Store:
    backend: str
    images: int
    url: str
    ids: list[str]


def startup(stores: list[Store], root: Path) -> dict[tuple[str, int], tuple[float, float]]:
    """(backend, images) -> median ms from spawn to listening and to the first stat."""
    times: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for n in range(SPAWNS):
        # A different store first each round: the first spawn after a pause runs slower.
        for store in stores[n % len(stores) :] + stores[: n % len(stores)]:
            probe = store.ids[-1] if store.ids else secrets.token_urlsafe(16)
            with serving(store.url, root / f"startup-{n}-{store.backend}-{store.images}") as c:
                listening = c.listening - c.spawned
                answered = first_answer(c, probe)
            times.setdefault((store.backend, store.images), []).append((listening, answered))
    for (backend, images), samples in sorted(times.items()):  # the empty store first
        charts.latencies(
            f"{backend}, spawn to the first StatImage answered",
            {f"{images:,} images": [stat * 1000 for _, stat in samples]},
        )
    return {
        key: (
            statistics.median(t[0] for t in samples) * 1000,
            statistics.median(t[1] for t in samples) * 1000,
        )
        for key, samples in times.items()
    }


def reads(small: Store, large: Store, root: Path) -> dict[str, tuple[float, float]]:
    """op -> (ms at the small store, ms at the large), both served at once, in alternating
    blocks."""
    with (
        serving(small.url, root / f"reads-{small.backend}-{small.images}") as a,
        serving(large.url, root / f"reads-{large.backend}-{large.images}") as b,
        grpc.insecure_channel(a.address) as ch_a,
        grpc.insecure_channel(b.address) as ch_b,
    ):
        picks = random.Random(0)
        small_stub, large_stub = pb_grpc.CacheServiceStub(ch_a), pb_grpc.CacheServiceStub(ch_b)

        def stat(stub: pb_grpc.CacheServiceStub, store: Store) -> Callable[[int], object]:
            # A random image each call: a flat figure must not come from one hot page.
            return lambda i: stub.StatImage(
                pb.StatImageRequest(id=picks.choice(store.ids)), timeout=10
            )

        def first_page(stub: pb_grpc.CacheServiceStub, store: Store) -> Callable[[int], object]:
            def op(i: int) -> None:
                page = stub.ListImages(pb.ListImagesRequest(owner=OWNER), timeout=10)
                assert len(page.images) == 50

            return op

        out = {}
        for name, make in (("StatImage", stat), ("ListImages, first page", first_page)):
            at_small, at_large = interleaved_ms(
                make(small_stub, small),
                make(large_stub, large),
                runs=READ_RUNS,
                record=charts.recorder(
                    f"{small.backend}, {name}",
                    f"{small.images:,} images",
                    f"{large.images:,} images",
                ),
            )
            out[name] = (at_small, at_large)
        return out


def main() -> None:
    with (
        tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        sizes = sorted({*STARTUP_SIZES, *READ_SIZES})
        stores: list[Store] = []
        for n in sizes:
            rows = records(n)
            ids = [str(r[0]) for r in rows]
            stores.append(Store("SQLite", n, fill_sqlite(root / f"meta-{n}.db", rows), ids))
            pg = fill_postgres(stack.enter_context(postgres_database()), rows)
            stores.append(Store("PostgreSQL", n, pg, ids))
        started = startup([s for s in stores if s.images in STARTUP_SIZES], root)
        print("cache service start-up against the same backend's empty store, median of", SPAWNS)
        print(
            f"{'backend':>11} {'images':>7} {'to listening':>13} {'ratio':>8}"
            f" {'to first stat':>14} {'ratio':>8}"
        )
        for (backend, n), (listening, stat) in sorted(started.items()):
            base_listening, base_stat = started[(backend, 0)]
            print(
                f"{backend:>11} {n:>7} {listening:>10.0f} ms {listening / base_listening:>7.2f}x"
                f" {stat:>11.0f} ms {stat / base_stat:>7.2f}x"
            )
        print(f"reads through gRPC at {READ_SIZES[1]} images against {READ_SIZES[0]}, median ms")
        for backend in ("PostgreSQL", "SQLite"):
            small, large = (
                next(s for s in stores if s.backend == backend and s.images == n)
                for n in READ_SIZES
            )
            for op, (at_small, at_large) in reads(small, large, root).items():
                print(
                    f"{backend:>11} {op:>24} {at_small:>7.3f} ms {at_large:>7.3f} ms"
                    f" {at_large / at_small:>6.2f}x"
                )
