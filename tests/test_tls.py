"""Mutual TLS between the services: real processes on certificates made here, and the
clients they refuse."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.env import ConfigError, Env
from common.grpcclient import addresses, blocking_channel
from common.tls import Tls
from tests.certs import Authority, Issued
from tests.support import (
    ROOT,
    ServiceProcess,
    launched,
    metric,
    open_image,
    png_bytes,
    refused,
    replicas_env,
    wait_for_launcher,
)


@dataclass(frozen=True)
class Pki:
    ca: Authority
    server: Issued  # what every service presents, naming 127.0.0.1 and localhost
    client: Issued  # a client certificate alone, naming nothing
    foreign_ca: Authority
    foreign_client: Issued

    def env(self, issued: Issued | None = None) -> dict[str, str]:
        issued = issued or self.server
        return {
            "IMAGESVC_TLS_CERT": str(issued.cert),
            "IMAGESVC_TLS_KEY": str(issued.key),
            "IMAGESVC_TLS_CA": str(self.ca.cert),
        }

    def credentials(self, issued: Issued | None) -> grpc.ChannelCredentials:
        """Trusting our CA, presenting issued (nothing when None)."""
        if issued is None:
            return grpc.ssl_channel_credentials(self.ca.cert.read_bytes())
        return grpc.ssl_channel_credentials(
            self.ca.cert.read_bytes(), issued.key.read_bytes(), issued.cert.read_bytes()
        )


@dataclass(frozen=True)
class Services:
    cache: ServiceProcess
    processor: ServiceProcess
    processor_2: ServiceProcess
    gateway: ServiceProcess


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder / "ours", "ours")
    foreign = Authority(folder / "foreign", "foreign")
    return Pki(ca, ca.issue("server"), ca.issue("client", ()), foreign, foreign.issue("client"))


@pytest.fixture(scope="module")
def services(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("tls")
    tls = pki.env()
    cache = ServiceProcess("cache", root / "c", tls).start()
    upstream = {**tls, "IMAGESVC_CACHE_ADDRESS": cache.address}
    processors = [ServiceProcess("processor", root / f"p{n}", upstream).start() for n in (1, 2)]
    # Two processors listed by IP: gRPC checks a list's replicas against one name.
    listed = ",".join(p.address for p in processors)
    gateway = ServiceProcess(
        "gateway", root / "g", {**upstream, "IMAGESVC_PROCESSOR_ADDRESSES": listed}
    ).start()
    started = Services(cache, processors[0], processors[1], gateway)
    yield started
    for service in (gateway, *processors, cache):
        assert service.terminate() == 0, service.log_text()


def _health(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """How a health check of the service at address ends, over TLS with credentials or
    in plaintext."""
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_the_http_flow_works_through_the_gateway(services: Services) -> None:
    with httpx.Client(base_url=services.gateway.url, timeout=30) as http:
        assert http.get("/readyz").status_code == 200
        picture = png_bytes(320, 240, seed=13)
        created = http.post("/images", files={"file": ("a.png", picture, "image/png")})
        assert created.status_code == 201, created.text
        image_id = created.json()["id"]
        assert http.get(f"/images/{image_id}").content == picture
        # Sizes no one asked for before: each a render by a processor, which reads the
        # original from the cache, both over mutual TLS, spread over both processors.
        for width in range(100, 124, 4):
            variant = http.get(f"/images/{image_id}?w={width}&format=webp")
            assert variant.status_code == 200, variant.text
            assert open_image(variant.content).size == (width, width * 3 // 4)
    for processor in (services.processor, services.processor_2):
        calls = "imagesvc_grpc_server_handled_total"
        process = {"service": "imageservice.v1.ProcessorService", "method": "Process"}
        assert metric(processor, calls, **process, code="OK")


def test_the_name_checked_can_be_another_than_the_address(services: Services, pki: Pki) -> None:
    # Replicas on several hosts share one name their certificates carry (the address
    # dialled, 127.0.0.1, is in the certificate too, so only the override can fail).
    for name, code in (("localhost", grpc.StatusCode.OK), ("cache", grpc.StatusCode.UNAVAILABLE)):
        tls = Tls.from_env(Env({**pki.env(pki.client), "IMAGESVC_TLS_SERVER_NAME": name}))
        with blocking_channel(services.cache.address, tls) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                ended = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                ended = exc.code()
        assert ended == code, name


@pytest.mark.parametrize("service", ["cache", "processor"])
def test_only_clients_with_a_certificate_from_the_ca_get_in(
    services: Services, pki: Pki, service: str
) -> None:
    address = getattr(services, service).address
    assert _health(address, pki.credentials(pki.client)) == grpc.StatusCode.OK
    assert _health(address, pki.credentials(None)) == grpc.StatusCode.UNAVAILABLE
    assert _health(address, pki.credentials(pki.foreign_client)) == grpc.StatusCode.UNAVAILABLE
    assert _health(address, None) == grpc.StatusCode.UNAVAILABLE


def test_a_client_trusts_no_server_from_another_ca(services: Services, pki: Pki) -> None:
    # A client trusting the foreign CA (its certificate from it too) finds our cache's
    # certificate unknown, whatever the cache would say of its own.
    foreign = grpc.ssl_channel_credentials(
        pki.foreign_ca.cert.read_bytes(),
        pki.foreign_client.key.read_bytes(),
        pki.foreign_client.cert.read_bytes(),
    )
    assert _health(services.cache.address, foreign) == grpc.StatusCode.UNAVAILABLE


def _healthcheck(address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_TLS_")}
    return subprocess.run(
        [sys.executable, "-m", "common.healthcheck", "grpc", address],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_healthcheck_command_presents_the_certificate(services: Services, pki: Pki) -> None:
    for service in (services.cache, services.processor):
        assert _healthcheck(service.address, pki.env(pki.client)).returncode == 0
        assert _healthcheck(service.address, {}).returncode == 1
    broken = _healthcheck(services.cache.address, {"IMAGESVC_TLS_CERT": str(pki.client.cert)})
    assert broken.returncode == 2 and "IMAGESVC_TLS_KEY" in broken.stderr


def _refused(module: str, env: dict[str, str], tmp_path: Path) -> str:
    """What module says as it refuses to start on env."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_TLS_")}
    ran = subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={
            **clean,
            "IMAGESVC_DATA_DIR": str(tmp_path / module),
            "IMAGESVC_CACHE_LISTEN": "127.0.0.1:0",
            "IMAGESVC_PROCESSOR_LISTEN": "127.0.0.1:0",
            "IMAGESVC_GATEWAY_PORT": "0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 1, (ran.returncode, ran.stderr)
    assert "bad configuration" in ran.stderr
    return ran.stderr


@pytest.mark.parametrize("module", ["cache", "processor", "gateway"])
def test_bad_tls_settings_stop_a_service_naming_the_variable(
    module: str, pki: Pki, tmp_path: Path
) -> None:
    only_cert = _refused(module, {"IMAGESVC_TLS_CERT": str(pki.server.cert)}, tmp_path)
    assert "IMAGESVC_TLS_KEY, IMAGESVC_TLS_CA missing" in only_cert
    missing_key = {**pki.env(), "IMAGESVC_TLS_KEY": str(tmp_path / "nowhere.pem")}
    said = _refused(module, missing_key, tmp_path)
    assert f"IMAGESVC_TLS_KEY={tmp_path / 'nowhere.pem'} cannot be read" in said


def test_tls_settings_are_checked_before_any_handshake(pki: Pki, tmp_path: Path) -> None:
    assert Tls.from_env(Env({})) is None
    read = Tls.from_env(Env(pki.env()))
    assert read is not None and read.cert == pki.server.cert.read_bytes()
    assert read.server_name is None
    encrypted = tmp_path / "encrypted-key.pem"
    key = serialization.load_pem_private_key(pki.server.key.read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    refused = [
        ("IMAGESVC_TLS_CERT", {**pki.env(), "IMAGESVC_TLS_CERT": str(not_pem)}),
        ("IMAGESVC_TLS_KEY", {**pki.env(), "IMAGESVC_TLS_KEY": str(pki.client.key)}),
        ("IMAGESVC_TLS_KEY", {**pki.env(), "IMAGESVC_TLS_KEY": str(encrypted)}),
        ("IMAGESVC_TLS_CA", {**pki.env(), "IMAGESVC_TLS_CA": str(pki.server.key)}),
        ("IMAGESVC_TLS_CA", {**pki.env(), "IMAGESVC_TLS_CA": str(tmp_path)}),
        ("IMAGESVC_TLS_SERVER_NAME", {"IMAGESVC_TLS_SERVER_NAME": "cache"}),
    ]
    for variable, env in refused:
        with pytest.raises(ConfigError, match=variable):
            Tls.from_env(Env(env))


def test_replicas_listed_on_several_hosts_need_one_name_to_check(pki: Pki) -> None:
    listed = {"IMAGESVC_CACHE_ADDRESS": "10.0.0.1:50051,10.0.0.2:50051"}
    assert addresses(Env(listed), "CACHE_ADDRESS", "") == ("10.0.0.1:50051", "10.0.0.2:50051")
    with pytest.raises(ConfigError, match="IMAGESVC_TLS_SERVER_NAME"):
        addresses(Env({**listed, **pki.env()}), "CACHE_ADDRESS", "")
    named = {**listed, **pki.env(), "IMAGESVC_TLS_SERVER_NAME": "cache"}
    assert len(addresses(Env(named), "CACHE_ADDRESS", "")) == 2
    tls = Tls.from_env(Env(named))
    assert tls is not None and tls.server_name == "cache"


def test_the_launcher_runs_replicas_over_tls(pki: Pki, tmp_path: Path) -> None:
    env = {**replicas_env(tmp_path / "data", 2), **pki.env()}
    log = tmp_path / "run.log"
    url = f"http://127.0.0.1:{env['IMAGESVC_GATEWAY_PORT']}"
    # Up means every replica answered the launcher's health check, which needs the
    # certificate; the gateway reaches both processors, listed by IP.
    with launched(env, log, "--processor", "2") as proc:
        wait_for_launcher(lambda: b"imageservice is up" in log.read_bytes(), "a start", proc, log)
        with httpx.Client(base_url=url, timeout=30) as http:
            png = png_bytes(64, 48, seed=31)
            created = http.post("/images", content=png, headers={"Content-Type": "image/png"})
            assert created.status_code == 201, created.text
            for width in range(10, 18):
                assert http.get(f"{created.headers['location']}?w={width}").status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    code, said = refused({**env, "IMAGESVC_TLS_CA": ""})
    assert code == 1 and any("IMAGESVC_TLS_CA missing" in line for line in said), said
