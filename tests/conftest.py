from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc

from common import settings
from common.env import Env
from common.imaging import SOURCE_FORMATS, SourceLimits, configure_pillow
from tests.engines import S3Server, postgres_database, redis_prefix, s3_server
from tests.support import ServiceProcess, channel

# Tests that decode in this process do it as the services do, under their default limits.
DEFAULTS = Env({})
configure_pillow(
    SourceLimits(
        frozenset(SOURCE_FORMATS),
        settings.max_pixels(DEFAULTS),
        settings.max_frames(DEFAULTS),
        settings.max_total_pixels(DEFAULTS),
    )
)

# Property tests (tests/test_properties.py): `ci`, the default, runs the same hundred
# examples on every run and keeps no database, so a run fails the same way each time it
# fails; `fuzz` (HYPOTHESIS_PROFILE=fuzz, docs/testing.md) searches for minutes.
hypothesis_settings.register_profile(
    "ci", max_examples=100, derandomize=True, database=None, deadline=None, print_blob=True
)
hypothesis_settings.register_profile(
    "fuzz",
    max_examples=5_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def cache_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One cache service on embedded defaults for the whole session."""
    server = ServiceProcess("cache", tmp_path_factory.mktemp("cache") / "data").start()
    yield server
    assert server.terminate() == 0


@pytest.fixture(scope="session")
def cache_channel(cache_server: ServiceProcess) -> Iterator[grpc.Channel]:
    with channel(cache_server.address) as ch:
        yield ch


@pytest.fixture
def stub(cache_channel: grpc.Channel) -> pb_grpc.CacheServiceStub:
    return pb_grpc.CacheServiceStub(cache_channel)


@pytest.fixture
def data_dir(cache_server: ServiceProcess) -> Path:
    return cache_server.data_dir


@pytest.fixture(scope="session")
def processor_server(
    cache_server: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One processor, talking to the session's cache service."""
    env = {"IMAGESVC_CACHE_ADDRESS": cache_server.address}
    server = ServiceProcess("processor", tmp_path_factory.mktemp("processor") / "data", env)
    server.start()
    yield server
    assert server.terminate() == 0


@pytest.fixture(scope="session")
def processor_channel(processor_server: ServiceProcess) -> Iterator[grpc.Channel]:
    with channel(processor_server.address) as ch:
        yield ch


@pytest.fixture
def pstub(processor_channel: grpc.Channel) -> ppb_grpc.ProcessorServiceStub:
    return ppb_grpc.ProcessorServiceStub(processor_channel)


@pytest.fixture(scope="session")
def gateway_server(
    cache_server: ServiceProcess,
    processor_server: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """The gateway over the session's cache and processor, no auth."""
    env = {
        "IMAGESVC_CACHE_ADDRESS": cache_server.address,
        "IMAGESVC_PROCESSOR_ADDRESSES": processor_server.address,
    }
    server = ServiceProcess("gateway", tmp_path_factory.mktemp("gateway") / "data", env).start()
    yield server
    assert server.terminate() == 0


@pytest.fixture
def http(gateway_server: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def stack(
    cache_server: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServiceProcess]]:
    """Start a gateway (and, if asked, its own processor) over the session's cache."""
    started: list[ServiceProcess] = []

    def start(
        gateway_env: dict[str, str] | None = None,
        processor_env: dict[str, str] | None = None,
        processor: ServiceProcess | None = None,
    ) -> ServiceProcess:
        root = tmp_path_factory.mktemp("stack")
        if processor is None:
            penv = {"IMAGESVC_CACHE_ADDRESS": cache_server.address, **(processor_env or {})}
            processor = ServiceProcess("processor", root / "p", penv).start()
            started.append(processor)
        genv = {
            "IMAGESVC_CACHE_ADDRESS": cache_server.address,
            "IMAGESVC_PROCESSOR_ADDRESSES": processor.address,
            **(gateway_env or {}),
        }
        gateway = ServiceProcess("gateway", root / "g", genv).start()
        started.append(gateway)
        return gateway

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server, one for the session (each user makes its own bucket)."""
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of the session's own on the machine's PostgreSQL."""
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_key_prefix() -> Iterator[str]:
    """A key prefix of the session's own on the machine's Redis."""
    with redis_prefix() as prefix:
        yield prefix
