"""The IMAGESVC_* variables more than one service reads, each declared once: its name,
default and bounds. A service's config.py reads them through these functions."""

from __future__ import annotations

from common.env import Env

MiB = 1024 * 1024
# Every service sends and takes gRPC messages up to MAX_MESSAGE_BYTES (grpcclient,
# grpcserver), whatever anyone's IMAGESVC_CHUNK_BYTES: a chunk of the largest size it
# allows fits with its envelope (a variant's metadata beside it, in Process's first
# message). So each sender chooses its chunk size alone, and services need not agree.
MAX_CHUNK_BYTES = 3 * MiB
MAX_MESSAGE_BYTES = 4 * MiB


def chunk_bytes(env: Env) -> int:
    """How many bytes of a stream one message carries, in what this service sends."""
    return env.size("CHUNK_BYTES", 256 * 1024, minimum=1024, maximum=MAX_CHUNK_BYTES)


def max_upload_bytes(env: Env) -> int:
    return env.size("MAX_UPLOAD_BYTES", 50 * MiB, minimum=1)


def max_pixels(env: Env) -> int:
    return env.integer("MAX_PIXELS", 50_000_000, minimum=1)


def max_frames(env: Env) -> int:
    return env.integer("MAX_FRAMES", 1000, minimum=1)


def max_total_pixels(env: Env) -> int:
    return env.integer("MAX_TOTAL_PIXELS", 500_000_000, minimum=1)


def max_output_dimension(env: Env) -> int:
    return env.integer("MAX_OUTPUT_DIMENSION", 8192, minimum=1)


def max_blur_sigma(env: Env) -> float:
    return env.number("MAX_BLUR_SIGMA", 50.0, minimum=0.1)


def shutdown_grace_seconds(env: Env) -> float:
    return env.number("SHUTDOWN_GRACE_SECONDS", 10.0)


def log_level(env: Env) -> str:
    return env.text("LOG_LEVEL", "INFO")
