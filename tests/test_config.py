"""Settings come from IMAGESVC_* variables and fail fast on bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache.config import Settings
from common.env import ConfigError, Env
from processor.config import Settings as ProcessorSettings
from tests.support import ROOT


def test_defaults_run_on_one_machine(tmp_path: Path) -> None:
    s = Settings.from_env(Env({"IMAGESVC_DATA_DIR": str(tmp_path)}))
    assert s.blob_url == f"file://{tmp_path}/blobs"
    assert s.metadata_url == f"sqlite://{tmp_path}/metadata.db"
    assert s.variant_url == f"memory://{tmp_path}/variants"
    assert s.max_upload_bytes == 50 * 1024 * 1024
    assert s.max_pixels == 50_000_000
    assert s.max_total_pixels == 500_000_000
    assert "AVIF" in s.allowed_formats


def test_sizes_take_units() -> None:
    s = Settings.from_env(
        Env({"IMAGESVC_MAX_UPLOAD_BYTES": "2MiB", "IMAGESVC_VARIANT_DISK_BYTES": "1GB"})
    )
    assert s.max_upload_bytes == 2 * 1024 * 1024
    assert s.variant_disk_bytes == 1_000_000_000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_UPLOAD_BYTES", "lots"),
        ("MAX_UPLOAD_BYTES", "0"),
        ("MAX_PIXELS", "-5"),
        ("CHUNK_BYTES", "10MiB"),
        ("ALLOWED_FORMATS", "PNG,PSD"),
        ("SHUTDOWN_GRACE_SECONDS", "soon"),
        ("CACHE_METRICS_PORT", "http"),
        ("CACHE_METRICS_PORT", "70000"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"IMAGESVC_{name}"):
        Settings.from_env(Env({f"IMAGESVC_{name}": value}))


def test_metrics_ports_are_off_unless_set() -> None:
    assert Settings.from_env(Env({})).metrics_port is None
    assert Settings.from_env(Env({"IMAGESVC_CACHE_METRICS_PORT": ""})).metrics_port is None
    assert Settings.from_env(Env({"IMAGESVC_CACHE_METRICS_PORT": "0"})).metrics_port == 0
    processor = ProcessorSettings.from_env(
        Env({"IMAGESVC_PROCESSOR_METRICS_PORT": "9102", "IMAGESVC_PROCESSOR_WORKERS": "3"})
    )
    assert (processor.metrics_port, processor.max_abandoned) == (9102, 3)


def test_bad_backend_url_stops_the_service_with_a_clear_message(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "IMAGESVC_DATA_DIR": str(tmp_path),
        "IMAGESVC_CACHE_LISTEN": "127.0.0.1:0",  # whatever else runs on this machine
        "IMAGESVC_BLOB_URL": "ftp://x",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cache"], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert result.returncode != 0
    assert b"bad configuration: IMAGESVC_BLOB_URL" in result.stderr


def test_bad_value_stops_the_service_with_a_clear_message(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "IMAGESVC_DATA_DIR": str(tmp_path),
        "IMAGESVC_CACHE_LISTEN": "127.0.0.1:0",
        "IMAGESVC_MAX_PIXELS": "many",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cache"], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 1
    assert b"bad configuration: IMAGESVC_MAX_PIXELS" in result.stderr


def test_a_quiet_service_still_says_where_it_listens(tmp_path: Path) -> None:
    from imageservice.v1 import cache_service_pb2 as pb
    from imageservice.v1 import cache_service_pb2_grpc as pb_grpc

    from tests.support import ServiceProcess, channel

    server = ServiceProcess("cache", tmp_path / "data", {"IMAGESVC_LOG_LEVEL": "WARNING"}).start()
    try:
        with channel(server.address) as ch:
            pb_grpc.CacheServiceStub(ch).ListImages(pb.ListImagesRequest())
    finally:
        assert server.terminate() == 0
    messages = [entry["msg"] for entry in server.log_entries()]
    assert messages == ["listening", "shutting down", "stopped"]  # no per-call lines


@pytest.mark.parametrize("value", ["jpeg", "avif,avif", "webp,heic"])
def test_auto_formats_name_only_what_auto_may_pick(value: str) -> None:
    with pytest.raises(ConfigError, match="IMAGESVC_AUTO_FORMATS"):
        ProcessorSettings.from_env(Env({"IMAGESVC_AUTO_FORMATS": value}))
    chosen = ProcessorSettings.from_env(Env({"IMAGESVC_AUTO_FORMATS": "WebP,avif"}))
    assert chosen.auto_formats == ("webp", "avif")
