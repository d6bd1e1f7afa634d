"""Picks each storage backend from its URL, so new engines slot in here and nowhere else."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from cache.blobs import BlobStore
from cache.blobs.files import FileBlobStore
from cache.blobs.s3 import S3BlobStore
from cache.config import Settings
from cache.metadata import MetadataStore
from cache.metadata.postgres import START_TIMEOUT, PostgresMetadataStore, conninfo
from cache.metadata.sqlite import SqliteMetadataStore
from cache.variants import VariantCache
from cache.variants.local import DiskLRU, MemoryLRU, TieredVariantCache
from cache.variants.redis import RedisVariantCache
from common.env import ConfigError

POSTGRES_SCHEMES = ("postgresql", "postgres")
# redis://HOST[:PORT][/DB]: redis-py would read a path that is not a number as DB 0.
_REDIS_DB = re.compile(r"/?[0-9]*")


def _local_path(url: str) -> Path | None:
    parts = urlsplit(url)
    # file:///abs/path has an empty netloc; file://relative/path puts the first part there.
    raw = parts.netloc + parts.path
    return Path(raw).resolve() if raw else None


# S3's rules for new buckets: 3-63 lower-case letters, digits, dots and hyphens, starting
# and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
BLOB_URLS = "file:///path or s3://BUCKET[/PREFIX]"


def s3_location(url: str) -> tuple[str, str]:
    """The bucket and key prefix ('' for none) of `s3://BUCKET[/PREFIX]`; ConfigError if bad."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ConfigError(f"IMAGESVC_BLOB_URL={url!r}: not an s3:// URL")
    # Endpoint, port and credentials come from the AWS_* variables, never the URL.
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(
            f"IMAGESVC_BLOB_URL={url!r}: {bucket!r} is not a bucket name"
            " (3-63 of a-z, 0-9, '.', '-'); supported is s3://BUCKET[/PREFIX]"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"IMAGESVC_BLOB_URL={url!r}: s3:// URLs take no query or fragment")
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ConfigError(f"IMAGESVC_BLOB_URL={url!r}: the prefix has an empty, . or .. part")
    return bucket, prefix


def open_blob_store(url: str, s3_staging: Path) -> BlobStore:
    """`file:///path`: blobs as files under path (staged in path/tmp).

    `s3://BUCKET[/PREFIX]`: objects in BUCKET, staged locally in s3_staging.
    """
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        bucket, prefix = s3_location(url)
        return S3BlobStore(bucket, prefix, s3_staging)
    path = _local_path(url)
    if scheme == "file" and path is not None:
        return FileBlobStore(path)
    raise ConfigError(f"IMAGESVC_BLOB_URL={url!r}: supported is {BLOB_URLS}")


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
    """url fit for an error message: a password in it, or in its query, becomes ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()


def open_variant_cache(settings: Settings) -> VariantCache:
    """`memory:///path`: memory LRU over a disk LRU in path; `memory://`: memory only;
    `redis://HOST[:PORT][/DB]` (`rediss://` for TLS): Redis, under the key prefix.

    Blocking (the disk tier reads its index): call before serving. Redis is not reached
    here: a cache may start while it is down, and misses until it answers.
    """
    url = settings.variant_url
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        shown = _redacted(url)
        if not _is_redis_url(url):
            raise ConfigError(
                f"IMAGESVC_VARIANT_CACHE_URL={shown!r}: supported is redis://HOST[:PORT][/DB]"
            )
        try:
            return RedisVariantCache(url, settings.variant_key_prefix)
        except ValueError as exc:  # a bad option in the query, as redis-py reads it
            raise ConfigError(f"IMAGESVC_VARIANT_CACHE_URL={shown!r}: {exc}") from None
    if scheme != "memory":
        raise ConfigError(
            f"IMAGESVC_VARIANT_CACHE_URL={url!r}: supported are memory://[/path] and "
            "redis://HOST[:PORT][/DB] (or rediss://)"
        )
    path = _local_path(url)
    disk = None
    if path is not None and settings.variant_disk_bytes > 0:
        disk = DiskLRU(path, settings.variant_disk_bytes)
        disk.load()
    return TieredVariantCache(MemoryLRU(settings.variant_memory_bytes), disk)


def _is_redis_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        return False
    return bool(parts.hostname) and port != 0 and bool(_REDIS_DB.fullmatch(parts.path))
