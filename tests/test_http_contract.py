"""The HTTP contract: strict parameters, limits from config, routes, and schemathesis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.params import Parameters, RequestLimits
from tests.support import ROOT, ServiceProcess, is_problem, png_bytes, start_all

PARAMETERS = Parameters(RequestLimits(max_output_dimension=8192, max_blur_sigma=50))


@pytest.fixture(scope="module")
def image_id(gateway_server: ServiceProcess) -> str:
    png = png_bytes(30, 20, seed=81)
    url = f"{gateway_server.url}/images"
    return str(httpx.post(url, content=png, headers={"Content-Type": "image/png"}).json()["id"])


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("progressive&format=png", "progressive"),
        ("lossless&format=jpeg", "lossless"),
        ("lossless=true&format=avif", "lossless"),
        ("q=50&format=png", "q"),
        ("q=50&lossless&format=webp", "q"),
        ("w=10&gravity=north", "gravity"),
        ("fit=cover", "fit"),
        ("w=5000&dpr=2", "w"),
        ("w=+300", "w"),  # a space, once decoded
        ("w=%2B300", "w"),
        ("w=%20300", "w"),
        ("w=300%20", "w"),
        ("w=%D9%A3", "w"),  # an Arabic-Indic digit
        ("w=3.0", "w"),
        ("blur=1_0", "blur"),
        ("blur=inf", "blur"),
        ("blur=%201", "blur"),
        ("grayscale=yes", "grayscale"),
        ("grayscale=1", "grayscale"),
        ("fit=COVER&w=3", "fit"),
        ("crop=0,0,0,0", "crop"),
        ("crop=1,1,1,0000000", "crop"),
        ("frames=some", "frames"),
        ("frames=first&format=jpeg", "frames"),
        ("metadata=keep&format=gif", "metadata"),
        ("bg=ff0000&format=png", "bg"),
        ("pad=1,2", "pad"),
        ("trim=300", "trim"),
        ("w=10&fit=pad", "fit"),
        ("w=10&h=10&fit=pad&gravity=smart", "gravity"),
    ],
)
def test_values_are_strict_and_nothing_is_silently_ignored(
    http: httpx.Client, image_id: str, query: str, name: str
) -> None:
    body = is_problem(http.get(f"/images/{image_id}?{query}"), 400)
    assert body["parameter"] == name
    assert str(body["detail"]).startswith(f"{name}: ")


def test_what_the_format_can_use_is_accepted(http: httpx.Client, image_id: str) -> None:
    for query in (
        "progressive&format=jpeg",
        "progressive",  # auto: applies if the result is a JPEG
        "lossless&format=webp",
        "q=50&format=avif",
        "w=10&h=10&fit=cover&gravity=north",
        "w=4096&dpr=2",
        "blur=1e-1",
        "blur=.5",
        "crop=0,0,001,10",
        "grayscale=false",
        "frames=first&format=webp",
        "metadata=keep&format=jpeg",
        "bg=ff0000&format=jpeg",
        "bg=ff000080&rotate=10&format=png",
        "w=10&h=10&fit=pad&gravity=north&bg=ff000000&format=png",
        "pad=1,2,3,4&bg=00ff00&format=webp",
        "pad=0",
        "trim=40&w=10",
    ):
        assert http.get(f"/images/{image_id}?{query}").status_code == 200, query


def test_one_limit_from_config_in_parser_message_and_openapi(
    stack: Callable[..., ServiceProcess], http: httpx.Client, image_id: str
) -> None:
    for query in ("blur=1e6", "blur=51"):
        body = is_problem(http.get(f"/images/{image_id}?{query}"), 400)
        assert body["detail"] == "blur: must be between 0 and 50"
    limits = {"IMAGESVC_MAX_BLUR_SIGMA": "20", "IMAGESVC_MAX_OUTPUT_DIMENSION": "1000"}
    gateway = stack(limits, limits)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        doc = client.get("/openapi.json").json()
        schemas = {
            p["name"]: p["schema"] for p in doc["paths"]["/images/{image_id}"]["get"]["parameters"]
        }
        assert schemas["blur"]["maximum"] == 20 and schemas["w"]["maximum"] == 1000
        body = is_problem(client.get(f"/images/{image_id}?blur=21"), 400)
        assert body["detail"] == "blur: must be between 0 and 20"
        body = is_problem(client.get(f"/images/{image_id}?h=1001"), 400)
        assert body["detail"] == "h: must be between 1 and 1000"
    # A processor stricter than its gateway is quoted in the same words.
    gateway = stack({}, {"IMAGESVC_MAX_BLUR_SIGMA": "10"})
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        body = is_problem(client.get(f"/images/{image_id}?blur=30"), 400)
        assert (body["parameter"], body["detail"]) == ("blur", "blur: must be between 0 and 10")


def test_health_answers_as_healthz(http: httpx.Client) -> None:
    assert http.get("/health").json() == http.get("/healthz").json() == {"status": "ok"}


def test_no_redirect_names_a_host_the_request_chose(http: httpx.Client, image_id: str) -> None:
    for path in ("/healthz/", "/images/", f"/images/{image_id}/", "/openapi.json/"):
        response = http.get(path, headers={"Host": "evil.example"})
        assert "location" not in response.headers, path
        is_problem(response, 404)


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "target",
    [b"/images/\xc3\xa9\xff", b"/images/a\x01b", b"/images/" + b"A" * 100_000],
    ids=["non-ascii", "control", "over-long"],
)
def test_requests_that_do_not_parse_get_problem_json(
    gateway_server: ServiceProcess, target: bytes
) -> None:
    answer = raw_request(gateway_server.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/problem+json" in head.lower()
    assert b"x-request-id: " in head.lower()
    assert b'"status": 400' in body


def test_combinations_openapi_cannot_state_are_the_gateways_own_rules() -> None:
    # tests/schemathesis_hooks.py leaves out exactly what this rule refuses.
    values = PARAMETERS.values([("progressive", ""), ("format", "png")])
    problem = PARAMETERS.conflict(values)
    assert problem is not None and problem.extensions["parameter"] == "progressive"
    assert PARAMETERS.conflict(PARAMETERS.values([("w", "3"), ("fit", "cover")])) is None


@pytest.mark.parametrize(
    "signing",
    [{}, {"IMAGESVC_URL_SIGNING_KEYS": f"k1:{'K' * 32}"}],
    ids=["plain", "signed-urls"],
)
def test_schemathesis_finds_nothing(tmp_path: Path, signing: dict[str, str]) -> None:
    """`st run --checks all` over the whole OpenAPI document, against services of its own,
    with presets (whose parameters may conflict with those given beside them), with and
    without signed URLs."""
    presets = tmp_path / "presets.toml"
    presets.write_text(
        '[thumb]\nw = 300\nh = 200\nfit = "cover"\ngravity = "north"\n'
        '[still]\nframes = "first"\nq = 70\nbg = "ffffff"\nrotate = 5\n'
    )
    settings = {"IMAGESVC_PRESETS": str(presets), **signing}  # the hooks read presets too
    cache, processor, gateway = start_all(tmp_path, gateway_env=settings)
    try:
        st = Path(sys.executable).parent / "st"
        python_path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        result = subprocess.run(
            [
                str(st),
                "run",
                f"{gateway.url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "150",
                "--seed",
                "20261201",  # the same cases every run; change it to explore others
                "--no-color",
            ],
            cwd=ROOT,  # where schemathesis.toml is
            # ROOT for the hooks, before any path already given (a worktree's own gen/).
            env={**os.environ, **settings, "PYTHONPATH": os.pathsep.join(python_path)},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for server in (gateway, processor, cache):
            server.kill()
    assert result.returncode == 0, result.stdout[-6000:]
    assert "No issues found" in result.stdout
