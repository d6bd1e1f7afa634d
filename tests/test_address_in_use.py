"""A service whose listen address is taken stops at once, saying so, instead of sharing it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import ServiceProcess


@pytest.mark.parametrize(
    ("module", "variable"),
    [
        ("cache", "IMAGESVC_CACHE_LISTEN"),
        ("processor", "IMAGESVC_PROCESSOR_LISTEN"),
        ("gateway", "IMAGESVC_GATEWAY_PORT"),
    ],
)
def test_a_second_service_on_a_port_in_use_fails_at_start(
    module: str, variable: str, gateway_server: ServiceProcess, tmp_path: Path
) -> None:
    # The session's services (the gateway fixture starts all three) hold the ports.
    first = {"cache": gateway_server.env["IMAGESVC_CACHE_ADDRESS"]}
    first["processor"] = gateway_server.env["IMAGESVC_PROCESSOR_ADDRESSES"]
    first["gateway"] = str(gateway_server.port)
    second = ServiceProcess(module, tmp_path / "other-data", {variable: first[module]})
    try:
        second.start()
    except RuntimeError:
        pass  # it exited: what it said is checked below
    else:
        second.kill()
        raise AssertionError(f"a second {module} started on {first[module]}")
    assert second.proc is not None and second.proc.returncode != 0
    out = second.log_text()
    assert "address in use" in out
    assert variable in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("module", "variable"),
    [("cache", "IMAGESVC_CACHE_METRICS_PORT"), ("processor", "IMAGESVC_PROCESSOR_METRICS_PORT")],
)
def test_a_metrics_port_in_use_stops_the_service_saying_which(
    module: str, variable: str, gateway_server: ServiceProcess, tmp_path: Path
) -> None:
    taken = str(gateway_server.port)  # the session gateway's
    server = ServiceProcess(module, tmp_path / "data", {variable: taken})
    with pytest.raises(RuntimeError, match="exited early"):
        server.start()
    out = server.log_text()
    assert f"cannot listen on 127.0.0.1:{taken} ({variable}): address in use" in out
    assert "Traceback" not in out
