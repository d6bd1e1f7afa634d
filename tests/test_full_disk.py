"""A full data disk, for real: a small tmpfs under the cache service's data directory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from cache.metadata.postgres import PostgresMetadataStore
from cache.storage import StorageFull
from common.errors import Reason
from tests.support import ServiceProcess, is_problem, png_bytes, start_all

PAGE = os.sysconf("SC_PAGE_SIZE")  # what tmpfs counts its space in


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB file system of the test's own, unmounted afterwards."""
    mount_point = tmp_path / "c"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def free_pages(path: Path) -> int:
    return os.statvfs(path).f_bavail


def fill(path: Path, leave_pages: int = 0) -> None:
    """Write a file into path's file system until only leave_pages are free (none: until
    a write fails for want of room)."""
    with path.open("wb", buffering=0) as f:  # unbuffered: closing has nothing to flush
        if leave_pages:
            f.write(b"\0" * ((free_pages(path.parent) - leave_pages) * PAGE))
            assert free_pages(path.parent) == leave_pages
            return
        try:
            while True:
                f.write(b"\0" * PAGE)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def stored(data_dir: Path) -> tuple[set[str], set[str], list[Path], int]:
    """What is on the disk: blob files, image rows, staged files, upload intents."""
    blobs = {p.name for p in (data_dir / "blobs").glob("*/*/*") if p.parent.parent.name != "tmp"}
    with contextlib.closing(sqlite3.connect(data_dir / "metadata.db")) as db:
        rows = {row[0] for row in db.execute("SELECT id FROM images")}
        intents = db.execute("SELECT count(*) FROM intents").fetchone()[0]
    return blobs, rows, list((data_dir / "blobs" / "tmp").iterdir()), intents


def test_an_upload_to_a_full_disk_is_507_and_leaves_nothing(
    tmp_path: Path, small_disk: Path
) -> None:
    cache, processor, gateway = start_all(tmp_path)
    servers: list[ServiceProcess] = [gateway, processor, cache]
    try:
        assert cache.data_dir == small_disk
        first = png_bytes(64, 48, seed=7)
        big = png_bytes(200, 200, noise=True)
        with httpx.Client(base_url=gateway.url, timeout=30) as http:

            def post(data: bytes) -> httpx.Response:
                return http.post(
                    "/images?visibility=public",
                    content=data,
                    headers={"content-type": "image/png"},
                )

            # Made while there is room: on a full tmpfs even a new name may find none.
            fillers = [small_disk / "filler-1", small_disk / "filler-2"]
            for filler in fillers:
                filler.touch()
            kept = post(first)
            assert kept.status_code == 201, kept.text
            kept_id = kept.json()["id"]
            before = stored(small_disk)
            assert before == ({kept_id}, {kept_id}, [], 0)

            # Room for the bytes, none for their record: the metadata write fails.
            fill(fillers[0], leave_pages=-(-len(big) // PAGE))
            body = is_problem(post(big), 507)
            assert body["reason"] == Reason.INSUFFICIENT_STORAGE
            assert body["type"] == "/problems/insufficient-storage"
            assert "Retry-After" not in post(big).headers
            assert stored(small_disk) == before

            # No room even to stage the bytes.
            fill(fillers[1])
            is_problem(post(big), 507)
            assert stored(small_disk) == before

            # Reads go on: the original, a listing, and a render whose variant finds no
            # room on the cache's disk (the caller has it all the same).
            original = http.get(f"/images/{kept_id}")
            assert original.status_code == 200 and original.content == first
            listed = http.get("/images")
            assert [image["id"] for image in listed.json()["images"]] == [kept_id]
            rendered = http.get(f"/images/{kept_id}", params={"w": 32, "format": "png"})
            assert rendered.status_code == 200, rendered.text
            assert rendered.headers["content-type"] == "image/png"

            # Room made, uploads are taken again.
            for filler in fillers:
                filler.unlink()
            assert post(big).status_code == 201
        assert cache.log_text().count("Traceback") == 0
    finally:
        for server in servers:
            server.kill()


def test_a_full_postgres_is_storage_full(postgres_url: str) -> None:
    # A PostgreSQL whose disk is full cannot be had here: its DiskFull, raised as a
    # statement would raise it, is what the store must turn into StorageFull.
    async def main() -> None:
        store = await PostgresMetadataStore.open(postgres_url)
        try:
            with pytest.raises(StorageFull) as raised:
                async with store._connection():
                    raise psycopg.errors.DiskFull("could not extend file: No space left")
            assert raised.value.reason == Reason.INSUFFICIENT_STORAGE
        finally:
            await store.close()

    asyncio.run(main())
