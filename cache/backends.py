"""Picks each storage backend from its URL, so new engines slot in here and nowhere else."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from cache.blobs import BlobStore, FileBlobStore
from cache.config import Settings
from cache.metadata import MetadataStore, SqliteMetadataStore
from cache.variants import DiskLRU, MemoryLRU, TieredVariantCache, VariantCache
from common.env import ConfigError


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


def open_metadata_store(url: str) -> MetadataStore:
    """`sqlite:///path/to/file.db`: SQLite in WAL mode."""
    scheme = urlsplit(url).scheme
    path = _local_path(url)
    if scheme == "sqlite" and path is not None:
        return SqliteMetadataStore(path)
    raise ConfigError(f"IMAGESVC_METADATA_URL={url!r}: supported is sqlite:///path")


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
