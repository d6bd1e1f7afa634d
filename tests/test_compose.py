"""docker-compose.yml against the Compose schema, and against the code it names.

No Docker engine runs here, so this is what can be checked: the file is valid
Compose, every command is a module of ours, every variable is one the code reads,
every port is one a service listens on, and the Dockerfile copies what exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.support import ROOT, SHARED

SPEC = SHARED / "compose-spec.json"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def variables_read_by_the_code() -> set[str]:
    names: set[str] = set()
    pattern = re.compile(r'env\.\w+\(\s*"([A-Z_]+)"')
    for config in ROOT.glob("*/config.py"):
        names |= {f"IMAGESVC_{m}" for m in pattern.findall(config.read_text())}
    return names


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
