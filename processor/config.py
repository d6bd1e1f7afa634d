"""The processor's settings, read once from IMAGESVC_* variables."""

from __future__ import annotations

import os
from dataclasses import dataclass

from common import settings as shared
from common.env import ConfigError, Env
from common.grpcclient import addresses
from common.metrics import metrics_port
from common.tls import Tls
from processor.output import AUTO_CHOICES, DEFAULT_AUTO_FORMATS

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the processor reads from the environment."""

    listen: str
    cache_addresses: tuple[str, ...]
    workers: int
    queue_size: int
    max_abandoned: int  # renders past their callers' deadlines that may still run
    max_output_dimension: int
    max_blur_sigma: float
    auto_formats: tuple[str, ...]  # format=auto's choices, best first
    processing_timeout_seconds: float
    max_upload_bytes: int
    max_pixels: int
    max_frames: int
    max_total_pixels: int
    originals_cache_bytes: int
    hot_cache_bytes: int
    chunk_bytes: int
    shutdown_grace_seconds: float
    log_level: str
    tls: Tls | None  # mutual TLS on every gRPC connection, when set
    metrics_port: int | None  # None: no metrics port; 0: one the system picks

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        """Read and check every variable; raise ConfigError naming the first bad one."""
        env = env or Env()
        workers = env.integer("PROCESSOR_WORKERS", os.cpu_count() or 2, minimum=1, maximum=256)
        return cls(
            listen=env.text("PROCESSOR_LISTEN", "127.0.0.1:50052"),
            cache_addresses=addresses(env, "CACHE_ADDRESS", "127.0.0.1:50051"),
            workers=workers,
            queue_size=env.integer("PROCESSOR_QUEUE", 32, minimum=0),
            max_abandoned=env.integer("PROCESSOR_MAX_ABANDONED", workers, minimum=1),
            max_output_dimension=shared.max_output_dimension(env),
            max_blur_sigma=shared.max_blur_sigma(env),
            auto_formats=_auto_formats(env.items("AUTO_FORMATS", DEFAULT_AUTO_FORMATS)),
            processing_timeout_seconds=env.number("PROCESSING_TIMEOUT_SECONDS", 30.0, minimum=0.1),
            max_upload_bytes=shared.max_upload_bytes(env),
            max_pixels=shared.max_pixels(env),
            max_frames=shared.max_frames(env),
            max_total_pixels=shared.max_total_pixels(env),
            originals_cache_bytes=env.size("PROCESSOR_ORIGINALS_CACHE_BYTES", 128 * MiB),
            hot_cache_bytes=env.size("PROCESSOR_HOT_CACHE_BYTES", 64 * MiB),
            chunk_bytes=shared.chunk_bytes(env),
            shutdown_grace_seconds=shared.shutdown_grace_seconds(env),
            log_level=shared.log_level(env),
            tls=Tls.from_env(env),
            metrics_port=metrics_port(env, "PROCESSOR_METRICS_PORT"),
        )


def _auto_formats(items: tuple[str, ...]) -> tuple[str, ...]:
    """IMAGESVC_AUTO_FORMATS: some of avif, webp and jxl, best first, each once."""
    formats = tuple(item.lower() for item in items)
    if not set(formats) <= set(AUTO_CHOICES) or len(set(formats)) != len(formats):
        raise ConfigError(
            f"IMAGESVC_AUTO_FORMATS={','.join(items)}: name some of "
            f"{', '.join(AUTO_CHOICES)}, best first, each once"
        )
    return formats
