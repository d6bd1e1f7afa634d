"""docker-compose.yml (and its scale-out overlay) against the Compose schema, and against
the code it names.

No Docker engine runs here, so this is what can be checked: the files are valid
Compose, every command is a module of ours, every variable is one the code reads,
every port is one a service listens on, the overlay merged onto the base file fits
together, and the Dockerfile copies what exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema

from tests.support import (
    ROOT,
    SHARED,
    _plain,
    compose,
    merged,
    overlay,
    variables_read_by_the_code,
)

SPEC = SHARED / "compose-spec.json"
ENGINES = {"minio", "postgres", "redis"}
# What the cache's engines read besides our own variables: the standard AWS ones (the
# S3 endpoint and credentials) and libpq's password.
ENGINE_VARIABLES = {
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "PGPASSWORD",
}


def test_compose_file_is_valid_against_the_specification() -> None:
    schema = json.loads(SPEC.read_text())
    validator = jsonschema.Draft7Validator(schema)  # the draft its $schema names
    validator.validate(compose())
    broken = compose()
    broken["services"]["gateway"]["ports"] = "8080"  # a string where a list belongs
    assert not validator.is_valid(broken)


def test_every_command_variable_and_port_exists_in_the_code() -> None:
    known = variables_read_by_the_code()
    assert {"IMAGESVC_CACHE_LISTEN", "IMAGESVC_GATEWAY_PORT"} <= known
    assert {"IMAGESVC_CACHE_METRICS_PORT", "IMAGESVC_PROCESSOR_METRICS_PORT"} <= known
    services = compose()["services"]
    assert set(services) == {"cache", "processor", "gateway"}
    for name, service in services.items():
        command = service["command"]
        assert command[:2] == ["python", "-m"] and (ROOT / command[2] / "__main__.py").is_file()
        for variable in service["environment"]:
            assert variable in known, (name, variable)
        probe = service["healthcheck"]["test"]
        assert probe[1:4] == ["python", "-m", "common.healthcheck"]
        assert (ROOT / "common" / "healthcheck.py").is_file()
        assert service["depends_on"] if name != "cache" else True
    env = {n: s["environment"] for n, s in services.items()}
    assert env["cache"]["IMAGESVC_CACHE_LISTEN"].endswith(":50051")
    assert env["processor"]["IMAGESVC_PROCESSOR_LISTEN"].endswith(":50052")
    assert env["processor"]["IMAGESVC_CACHE_ADDRESS"] == "cache:50051"
    assert env["gateway"]["IMAGESVC_CACHE_ADDRESS"] == "cache:50051"
    assert env["gateway"]["IMAGESVC_PROCESSOR_ADDRESSES"] == "processor:50052"
    assert services["cache"]["healthcheck"]["test"][-1].endswith(":50051")
    assert services["processor"]["healthcheck"]["test"][-1].endswith(":50052")
    # Only the gateway is reachable from outside, on the port it listens on.
    assert [n for n, s in services.items() if "ports" in s] == ["gateway"]
    assert services["gateway"]["ports"] == [f"8080:{env['gateway']['IMAGESVC_GATEWAY_PORT']}"]
    for name in ("processor", "gateway"):
        for dependency in services[name]["depends_on"].values():
            assert dependency["condition"] == "service_healthy"
    # The processor can scale: nothing pins it to one container.
    assert "container_name" not in services["processor"] and "ports" not in services["processor"]
    assert "imagedata" in compose()["volumes"]
    assert "imagedata:/data" in services["cache"]["volumes"]


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
    assert Path(ROOT / "gen" / "imageservice" / "v1").is_dir()  # generated code ships


def test_the_healthcheck_command_the_compose_file_uses(
    cache_server: object, gateway_server: object
) -> None:
    import subprocess
    import sys

    from tests.support import ServiceProcess, free_port

    assert isinstance(cache_server, ServiceProcess) and isinstance(gateway_server, ServiceProcess)

    def check(*args: str) -> int:
        command = [sys.executable, "-m", "common.healthcheck", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, timeout=30).returncode

    assert check("grpc", cache_server.address) == 0
    assert check("grpc", f"127.0.0.1:{free_port()}") == 1
    assert check("http", f"{gateway_server.url}/readyz") == 0
    assert check("http", f"http://127.0.0.1:{free_port()}/readyz") == 1
    assert check("nonsense") == 2


def test_scale_overlay_is_valid_against_the_specification() -> None:
    validator = jsonschema.Draft7Validator(json.loads(SPEC.read_text()))
    validator.validate(_plain(overlay()))
    validator.validate(merged())
    broken = merged()
    broken["services"]["cache"]["deploy"]["replica"] = 2  # a misspelt key is refused
    assert not validator.is_valid(broken)


def test_scale_overlay_adds_engines_and_replicas_that_fit_together() -> None:
    services = merged()["services"]
    assert set(services) == {"cache", "processor", "gateway", "minio-bucket", *ENGINES}
    # One-shot jobs (the bucket's) run once and are waited for until they have exited 0;
    # everything else is waited for until its healthcheck passes.
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"minio-bucket"}
    for name, service in services.items():
        assert name in one_shot or service["healthcheck"]["test"], name
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            wanted = (
                "service_completed_successfully" if dependency in one_shot else "service_healthy"
            )
            assert how["condition"] == wanted, (name, dependency)
    assert set(services["cache"]["depends_on"]) == {"minio-bucket", *ENGINES}
    # Every service of ours runs as replicas, none pinned to one container, and none
    # shares a named volume (each replica's is its own).
    named = set(merged()["volumes"])
    for name in ("cache", "processor", "gateway"):
        service = services[name]
        assert service["deploy"]["replicas"] == 2
        assert "container_name" not in service
        for volume in service.get("volumes", []):
            assert str(volume).split(":")[0] not in named, (name, volume)
    # Every gateway replica publishes a port of its own, and only the gateway publishes.
    assert [n for n, s in services.items() if "ports" in s] == ["gateway"]
    assert services["gateway"]["ports"] == ["8080-8081:8080"]
    assert services["gateway"]["environment"]["IMAGESVC_GATEWAY_PORT"] == "8080"

    env = services["cache"]["environment"]
    known = variables_read_by_the_code()
    for name, service in services.items():
        for variable in service.get("environment", {}):
            if variable.startswith("IMAGESVC_"):
                assert variable in known, (name, variable)
    assert {v for v in env if not v.startswith("IMAGESVC_")} == ENGINE_VARIABLES
    # Every URL and address points at a service of the merged file, on its port.
    listens = {
        "cache": env["IMAGESVC_CACHE_LISTEN"],
        "processor": services["processor"]["environment"]["IMAGESVC_PROCESSOR_LISTEN"],
        "minio": "0.0.0.0:9000",  # MinIO's default
        "postgres": "0.0.0.0:5432",
        "redis": "0.0.0.0:6379",
    }
    pointed = [
        env["IMAGESVC_METADATA_URL"],
        env["IMAGESVC_VARIANT_CACHE_URL"],
        env["AWS_ENDPOINT_URL"],
        *(
            f"grpc://{address}"
            for s in services.values()
            for variable, address in s.get("environment", {}).items()
            if variable in ("IMAGESVC_CACHE_ADDRESS", "IMAGESVC_PROCESSOR_ADDRESSES")
        ),
    ]
    assert len(pointed) == 6
    for url in pointed:
        parts = urlsplit(url)
        assert parts.hostname in listens, url
        assert listens[parts.hostname].endswith(f":{parts.port}"), url
    assert urlsplit(env["IMAGESVC_METADATA_URL"]).scheme == "postgresql"
    assert urlsplit(env["IMAGESVC_VARIANT_CACHE_URL"]).scheme == "redis"
    # The cache's bucket is the one made at start, with MinIO's own credentials.
    bucket = urlsplit(env["IMAGESVC_BLOB_URL"])
    assert bucket.scheme == "s3"
    assert f"mb --ignore-existing engine/{bucket.netloc}" in services["minio-bucket"]["command"][0]
    minio = services["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert env["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    # Redis is a cache here: bounded, least recently used evicted, nothing on disk.
    redis = services["redis"]["command"]
    for flag, value in (
        ("--maxmemory-policy", "allkeys-lru"),
        ("--save", ""),
        ("--appendonly", "no"),
    ):
        assert redis[redis.index(flag) + 1] == value
    assert re.fullmatch(r"\d+mb", redis[redis.index("--maxmemory") + 1])
    # The cache's data folder is each replica's own, not the base file's shared volume.
    assert services["cache"]["volumes"] == ["/data"]
