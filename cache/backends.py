"""Picks each storage backend from its URL, so new engines slot in here and nowhere else."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from cache.blobs.files import BlobStore, FileBlobStore
from cache.config import Settings
from cache.metadata import MetadataStore
from cache.metadata.postgres import START_TIMEOUT, PostgresMetadataStore, conninfo
from cache.metadata.sqlite import SqliteMetadataStore
from cache.variants.local import DiskLRU, MemoryLRU, TieredVariantCache, VariantCache
from common.env import ConfigError

POSTGRES_SCHEMES = ("postgresql", "postgres")


def _local_path(url: str) -> Path | None:
    parts = urlsplit(url)
    # file:///abs/path has an empty netloc; file://relative/path puts the first part there.
    raw = parts.netloc + parts.path
    return Path(raw).resolve() if raw else None


def open_blob_store(url: str) -> BlobStore:
    """`file:///path`: blobs as files under path."""
    scheme = urlsplit(url).scheme
    path = _local_path(url)
    if scheme == "file" and path is not None:
        return FileBlobStore(path)
    raise ConfigError(f"IMAGESVC_BLOB_URL={url!r}: supported is file:///path")


async def open_metadata_store(url: str, *, start_timeout: float = START_TIMEOUT) -> MetadataStore:
    """`sqlite:///path/to/file.db`: SQLite in WAL mode; `postgresql://USER@HOST:PORT/DB`
    (or `postgres://`): PostgreSQL, migrated and listening for deletions once this returns,
    or StorageUnavailable if it did not answer within start_timeout seconds."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = _local_path(url)
        if path is not None:
            return SqliteMetadataStore(path)
    elif scheme in POSTGRES_SCHEMES:
        return await PostgresMetadataStore.open(postgres_url(url), start_timeout=start_timeout)
    raise ConfigError(
        f"IMAGESVC_METADATA_URL={_redacted(url)!r}: supported are sqlite:///path and "
        "postgresql://USER@HOST:PORT/DB"
    )


def postgres_url(url: str) -> str:
    """url, checked as `postgresql://USER@HOST[:PORT]/DB[?PARAM=VALUE...]` (or
    `postgres://`) before any connection is tried; ConfigError naming what is wrong."""
    parts = urlsplit(url)
    problem = ""
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        problem = "the port is not a number"
    if not parts.hostname:
        problem = "no host"
    elif not parts.path.strip("/"):
        problem = "no database name"
    if not problem:
        try:
            conninfo(url)
        except psycopg.ProgrammingError as e:
            problem = " ".join(str(e).split())
    if problem:
        raise ConfigError(
            f"IMAGESVC_METADATA_URL={_redacted(url)!r}: {problem} "
            "(expected postgresql://USER@HOST:PORT/DB)"
        )
    return url


def _redacted(url: str) -> str:
    """url without its password, which must not reach a log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def open_variant_cache(settings: Settings) -> VariantCache:
    """`memory:///path`: memory LRU over a disk LRU in path; `memory://`: memory only."""
    url = settings.variant_url
    if urlsplit(url).scheme != "memory":
        raise ConfigError(f"IMAGESVC_VARIANT_CACHE_URL={url!r}: supported is memory://[/path]")
    path = _local_path(url)
    disk = None
    if path is not None and settings.variant_disk_bytes > 0:
        disk = DiskLRU(path, settings.variant_disk_bytes)
        disk.load()
    return TieredVariantCache(MemoryLRU(settings.variant_memory_bytes), disk)
