"""The cache service's settings, read once from IMAGESVC_* variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common import settings as shared
from common.env import ConfigError, Env
from common.imaging import SOURCE_FORMATS
from common.metrics import metrics_port
from common.tls import Tls

MiB = 1024 * 1024

DEFAULT_FORMATS = SOURCE_FORMATS


def data_dir(env: Env) -> Path:
    """IMAGESVC_DATA_DIR, made absolute against the working directory."""
    return Path(env.text("DATA_DIR", "./data")).resolve()


@dataclass(frozen=True)
class Settings:
    """Everything the cache service reads from the environment."""

    listen: str
    data_dir: Path
    blob_url: str
    metadata_url: str
    variant_url: str
    variant_key_prefix: str
    variant_memory_bytes: int
    variant_disk_bytes: int
    max_upload_bytes: int
    max_variant_bytes: int
    max_pixels: int
    max_frames: int
    max_total_pixels: int
    allowed_formats: frozenset[str]
    chunk_bytes: int
    render_lease_seconds: float
    validation_workers: int
    shutdown_grace_seconds: float
    log_level: str
    tls: Tls | None  # mutual TLS on every gRPC connection, when set
    metrics_port: int | None  # None: no metrics port; 0: one the system picks

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        """Read and check every variable; raise ConfigError naming the first bad one."""
        env = env or Env()
        data = data_dir(env)
        formats = frozenset(f.upper() for f in env.items("ALLOWED_FORMATS", DEFAULT_FORMATS))
        unknown = formats - set(DEFAULT_FORMATS)
        if unknown:
            raise ConfigError(f"IMAGESVC_ALLOWED_FORMATS names unknown formats: {sorted(unknown)}")
        return cls(
            listen=env.text("CACHE_LISTEN", "127.0.0.1:50051"),
            data_dir=data,
            blob_url=env.text("BLOB_URL", f"file://{data / 'blobs'}"),
            metadata_url=env.text("METADATA_URL", f"sqlite://{data / 'metadata.db'}"),
            variant_url=env.text("VARIANT_CACHE_URL", f"memory://{data / 'variants'}"),
            variant_key_prefix=env.text("VARIANT_KEY_PREFIX", "imagesvc:"),
            variant_memory_bytes=env.size("VARIANT_MEMORY_BYTES", 256 * MiB),
            variant_disk_bytes=env.size("VARIANT_DISK_BYTES", 2048 * MiB),
            max_upload_bytes=shared.max_upload_bytes(env),
            max_variant_bytes=env.size("MAX_VARIANT_BYTES", 50 * MiB, minimum=1),
            max_pixels=shared.max_pixels(env),
            max_frames=shared.max_frames(env),
            max_total_pixels=shared.max_total_pixels(env),
            allowed_formats=formats,
            chunk_bytes=shared.chunk_bytes(env),
            render_lease_seconds=env.number("RENDER_LEASE_SECONDS", 10.0, minimum=0.1),
            validation_workers=env.integer(
                "VALIDATION_WORKERS", os.cpu_count() or 2, minimum=1, maximum=256
            ),
            shutdown_grace_seconds=shared.shutdown_grace_seconds(env),
            log_level=shared.log_level(env),
            tls=Tls.from_env(env),
            metrics_port=metrics_port(env, "CACHE_METRICS_PORT"),
        )
