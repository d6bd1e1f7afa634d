"""Abuse: rate limits per caller, in memory and in Redis, and with Redis down; CORS; the
protected mode that keeps an open gateway off reachable addresses. Real gateways."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from common.env import ConfigError, Env
from gateway import ratelimit
from gateway.config import Settings
from tests.engines import REDIS_URL, Cutoff
from tests.support import (
    ROOT,
    ServiceProcess,
    compose,
    launcher_env,
    merged,
    png_bytes,
    refused,
)

Stack = Callable[..., ServiceProcess]
# Owners of this module's own: the session's cache is shared, and other tests count the
# images of theirs.
OWNER_A, OWNER_B = f"limited-{os.urandom(4).hex()}", f"limited-{os.urandom(4).hex()}"
KEY_A = "first-key-0123456789"
KEY_B = "second-key-012345678"
KEYS = f"{OWNER_A}:{KEY_A},{OWNER_B}:{KEY_B}"


def upload(gateway: ServiceProcess, headers: dict[str, str] | None = None) -> httpx.Response:
    image = png_bytes(24, 16, seed=int.from_bytes(os.urandom(3)))
    return httpx.post(
        f"{gateway.url}/images?visibility=public",
        content=image,
        headers={"Content-Type": "image/png", **(headers or {})},
        timeout=30,
    )


def render(gateway: ServiceProcess, image_id: str, query: str) -> httpx.Response:
    return httpx.get(f"{gateway.url}/images/{image_id}?{query}", timeout=30)


def remaining(response: httpx.Response, policy: str) -> int:
    """r of the RateLimit field, checking it names the policy and says a t."""
    match = re.fullmatch(rf'"{policy}";r=(\d+);t=(\d+)', response.headers["ratelimit"])
    assert match is not None, response.headers["ratelimit"]
    assert 1 <= int(match.group(2)) <= 60
    return int(match.group(1))


def assert_refused(response: httpx.Response, policy: str, quota: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["type"], body["policy"]) == (429, "/problems/rate-limited", policy)
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["ratelimit-policy"] == f'"{policy}";q={quota};w=60'
    assert remaining(response, policy) == 0


def test_uploads_past_the_budget_are_refused_with_the_headers(stack: Stack) -> None:
    gateway = stack({"IMAGESVC_RATE_LIMIT_UPLOADS": "2/minute"})
    first, second = upload(gateway), upload(gateway)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.headers["ratelimit-policy"] == '"uploads";q=2;w=60'
    assert (remaining(first, "uploads"), remaining(second, "uploads")) == (1, 0)
    assert_refused(upload(gateway), "uploads", 2)
    # Reads are not uploads, and renders have no budget here.
    image_id = first.json()["id"]
    assert render(gateway, image_id, "").status_code == 200
    answer = render(gateway, image_id, "w=7")
    assert answer.status_code == 200 and "ratelimit" not in answer.headers


def test_render_misses_are_limited_and_hits_never_spend(stack: Stack) -> None:
    # No hot cache in the gateway: every request reaches the processor, which says
    # whether it rendered.
    limited = {"IMAGESVC_RATE_LIMIT_RENDERS": "2/minute", "IMAGESVC_GATEWAY_CACHE_BYTES": "0"}
    gateway = stack(limited)
    image_id = upload(gateway).json()["id"]
    miss = render(gateway, image_id, "w=10")
    assert (miss.status_code, miss.headers["x-cache"]) == (200, "MISS")
    assert miss.headers["ratelimit-policy"] == '"renders";q=2;w=60'
    assert remaining(miss, "renders") == 1
    for _ in range(5):
        hit = render(gateway, image_id, "w=10")
        assert (hit.status_code, hit.headers["x-cache"]) == (200, "HIT")
        assert remaining(hit, "renders") == 1  # seen, not spent
    assert remaining(render(gateway, image_id, "w=11"), "renders") == 0
    assert_refused(render(gateway, image_id, "w=12"), "renders", 2)
    blurred = httpx.get(f"{gateway.url}/blurred-images/{image_id}", timeout=30)
    assert_refused(blurred, "renders", 2)  # a render like any other
    # Originals and metadata are never renders.
    assert render(gateway, image_id, "").status_code == 200
    assert httpx.get(f"{gateway.url}/images/{image_id}/info", timeout=30).status_code == 200


def test_a_render_that_fails_spends_as_a_miss_does(stack: Stack) -> None:
    gateway = stack(
        {"IMAGESVC_RATE_LIMIT_RENDERS": "2/minute", "IMAGESVC_GATEWAY_CACHE_BYTES": "0"}
    )
    image_id = upload(gateway).json()["id"]
    for _ in range(2):  # a crop wholly outside the image: the processor refuses it
        assert render(gateway, image_id, "crop=500,500,5,5").status_code == 422
    assert_refused(render(gateway, image_id, "w=10"), "renders", 2)


@pytest.mark.parametrize(
    ("address", "holder"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2::7", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),  # the same holder: one budget
        ("::ffff:203.0.113.7", "203.0.113.7"),
    ],
)
def test_an_ipv6_client_is_budgeted_by_its_64(address: str, holder: str) -> None:
    assert ratelimit._holder(address) == holder


def test_answers_from_the_gateways_memory_are_never_limited(stack: Stack) -> None:
    gateway = stack({"IMAGESVC_RATE_LIMIT_RENDERS": "1/minute"})
    image_id = upload(gateway).json()["id"]
    assert render(gateway, image_id, "w=20").headers["x-cache"] == "MISS"
    assert_refused(render(gateway, image_id, "w=21"), "renders", 1)
    for _ in range(5):
        again = render(gateway, image_id, "w=20")  # the budget is spent, but no render
        assert (again.status_code, again.headers["x-cache"]) == (200, "HIT")


def test_each_api_key_has_its_own_budget(stack: Stack) -> None:
    gateway = stack({"IMAGESVC_API_KEYS": KEYS, "IMAGESVC_RATE_LIMIT_UPLOADS": "1/minute"})
    as_a = {"Authorization": f"Bearer {KEY_A}"}
    assert upload(gateway, as_a).status_code == 201
    assert_refused(upload(gateway, as_a), "uploads", 1)
    assert upload(gateway, {"X-API-Key": KEY_B}).status_code == 201
    # A wrong key is refused as before, spending nobody's budget.
    assert upload(gateway, {"Authorization": "Bearer not-a-key-at-all-00"}).status_code == 401
    assert_refused(upload(gateway, {"X-API-Key": KEY_B}), "uploads", 1)


def test_client_addresses_from_a_trusted_proxy_only(stack: Stack) -> None:
    budget = {"IMAGESVC_RATE_LIMIT_UPLOADS": "1/minute"}
    behind = stack({**budget, "IMAGESVC_TRUSTED_PROXIES": "127.0.0.0/8,10.0.0.0/8"})

    def via(gateway: ServiceProcess, forwarded: str) -> httpx.Response:
        return upload(gateway, {"X-Forwarded-For": forwarded})

    assert via(behind, "203.0.113.1").status_code == 201
    assert_refused(via(behind, "203.0.113.1"), "uploads", 1)
    assert via(behind, "203.0.113.2").status_code == 201
    # What the client wrote left of the proxies' hops proves nothing; a chain of trusted
    # proxies is walked back to the first hop that is not one.
    assert_refused(via(behind, "198.51.100.7, 203.0.113.1"), "uploads", 1)
    assert_refused(via(behind, "203.0.113.2, 10.1.2.3"), "uploads", 1)
    assert via(behind, "203.0.113.1, 203.0.113.3, 10.1.2.3").status_code == 201
    assert via(behind, "nonsense").status_code == 201  # a garbled hop is its own caller

    # Without the setting the peer is the caller, whatever it forwards.
    direct = stack(budget)
    assert via(direct, "203.0.113.4").status_code == 201
    assert_refused(via(direct, "203.0.113.5"), "uploads", 1)
    assert_refused(upload(direct), "uploads", 1)


def test_redis_counters_are_shared_by_gateways(stack: Stack, redis_key_prefix: str) -> None:
    env = {
        "IMAGESVC_API_KEYS": KEYS,
        "IMAGESVC_RATE_LIMIT_UPLOADS": "3/minute",
        "IMAGESVC_RATE_LIMIT_URL": REDIS_URL,
        "IMAGESVC_VARIANT_KEY_PREFIX": redis_key_prefix,
    }
    first, second = stack(env), stack(env)
    as_a = {"Authorization": f"Bearer {KEY_A}"}
    assert remaining(upload(first, as_a), "uploads") == 2
    assert remaining(upload(second, as_a), "uploads") == 1
    assert remaining(upload(first, as_a), "uploads") == 0
    assert_refused(upload(second, as_a), "uploads", 3)
    assert remaining(upload(second, {"X-API-Key": KEY_B}), "uploads") == 2
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"{redis_key_prefix}ratelimit*")]
    finally:
        client.close()
    assert any(OWNER_A in k for k in keys) and any(OWNER_B in k for k in keys), keys


def test_a_redis_that_is_down_lets_requests_through(stack: Stack, redis_key_prefix: str) -> None:
    with Cutoff.to(REDIS_URL) as relay:
        gateway = stack(
            {
                "IMAGESVC_RATE_LIMIT_UPLOADS": "2/minute",
                "IMAGESVC_RATE_LIMIT_URL": relay.via(REDIS_URL),
                "IMAGESVC_VARIANT_KEY_PREFIX": redis_key_prefix,
            }
        )
        assert remaining(upload(gateway), "uploads") == 1
        relay.cut()
        for _ in range(3):  # more than the budget: the limits are off, not the service
            answer = upload(gateway)
            assert answer.status_code == 201 and "ratelimit" not in answer.headers
        assert httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 200
        warnings = [e for e in gateway.log_entries() if e.get("logger") == "gateway.ratelimit"]
        assert [e["level"] for e in warnings] == ["warning"]  # once, not per request
        relay.restore()
        # Asked again a moment later; what passed meanwhile was not counted.
        deadline = time.monotonic() + 15
        while "ratelimit" not in (answer := upload(gateway)).headers:
            assert answer.status_code == 201
            assert time.monotonic() < deadline, "the limits never came back"
            time.sleep(0.2)
        assert remaining(answer, "uploads") == 0  # counting again, from Redis
        assert_refused(upload(gateway), "uploads", 2)


def test_a_redis_that_hangs_costs_a_moment_now_and_then(stack: Stack) -> None:
    with socket.socket() as silent:  # takes connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        gateway = stack(
            {
                "IMAGESVC_RATE_LIMIT_UPLOADS": "2/minute",
                "IMAGESVC_RATE_LIMIT_RENDERS": "2/minute",
                "IMAGESVC_RATE_LIMIT_URL": f"redis://127.0.0.1:{port}/0",
            }
        )
        started = time.monotonic()
        image_id = ""
        for _ in range(4):
            answer = upload(gateway)
            assert answer.status_code == 201 and "ratelimit" not in answer.headers
            image_id = answer.json()["id"]
        for width in range(30, 34):
            assert render(gateway, image_id, f"w={width}").status_code == 200
        # One timeout (0.5 s), then nothing asked for 2 s: far less than 0.5 s a request.
        assert time.monotonic() - started < 3.5


def test_cors_preflight_and_exposed_headers(stack: Stack, gateway_server: ServiceProcess) -> None:
    origin = "https://app.example"
    cors = {"IMAGESVC_CORS_ORIGINS": f"{origin},https://other.example"}
    gateway = stack({**cors, "IMAGESVC_RATE_LIMIT_RENDERS": "100/minute"})
    preflight = httpx.options(
        f"{gateway.url}/images",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert preflight.headers["x-request-id"]
    stranger = httpx.options(
        f"{gateway.url}/images",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert stranger.status_code == 400
    assert "access-control-allow-origin" not in stranger.headers

    image_id = upload(gateway).json()["id"]
    answer = httpx.get(f"{gateway.url}/images/{image_id}?w=9", headers={"Origin": origin})
    assert answer.headers["access-control-allow-origin"] == origin
    exposed = {
        h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")
    }
    wanted = {"etag", "content-length", "ratelimit", "ratelimit-policy", "x-request-id"}
    assert wanted <= exposed

    everyone = stack({"IMAGESVC_CORS_ORIGINS": "*"})
    anywhere = httpx.get(f"{everyone.url}/healthz", headers={"Origin": "https://any.example"})
    assert anywhere.headers["access-control-allow-origin"] == "*"
    # Unset: no CORS at all, so browsers keep other origins out.
    off = httpx.get(f"{gateway_server.url}/healthz", headers={"Origin": origin})
    assert "access-control-allow-origin" not in off.headers


def run_gateway(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`python -m gateway` that is expected to refuse to start."""
    full = {
        **os.environ,
        "IMAGESVC_DATA_DIR": str(tmp_path),
        "IMAGESVC_GATEWAY_PORT": "0",
        **env,
    }
    command = [sys.executable, "-m", "gateway"]
    return subprocess.run(command, cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def test_protected_mode_refuses_an_open_gateway_on_a_reachable_address(
    stack: Stack, tmp_path: Path
) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1", "gateway.example"):
        refused = run_gateway({"IMAGESVC_GATEWAY_HOST": host}, tmp_path)
        assert refused.returncode == 1, (host, refused.stderr)
        message = refused.stderr.strip()
        assert message.startswith(f"gateway: bad configuration: IMAGESVC_GATEWAY_HOST={host} ")
        assert "IMAGESVC_API_KEYS" in message and "IMAGESVC_ALLOW_ANONYMOUS=true" in message
        assert "listening" not in refused.stdout + refused.stderr
    # Loopback needs nothing; a reachable address needs auth or the explicit override.
    for env in (
        {"IMAGESVC_GATEWAY_HOST": "0.0.0.0", "IMAGESVC_ALLOW_ANONYMOUS": "true"},
        {"IMAGESVC_GATEWAY_HOST": "0.0.0.0", "IMAGESVC_API_KEYS": KEYS},
        {"IMAGESVC_GATEWAY_HOST": "localhost"},
    ):
        gateway = stack(env)
        assert httpx.get(f"{gateway.url}/healthz", timeout=30).status_code == 200


def test_make_run_refuses_an_open_gateway_on_a_reachable_address_before_starting(
    tmp_path: Path,
) -> None:
    env = {**launcher_env(tmp_path / "data"), "IMAGESVC_GATEWAY_HOST": "0.0.0.0"}
    code, said = refused(env)
    assert code == 1
    assert len(said) == 1
    assert said[0].startswith("imageservice: bad configuration: IMAGESVC_GATEWAY_HOST=0.0.0.0")
    assert "IMAGESVC_ALLOW_ANONYMOUS=true" in said[0]
    assert not (tmp_path / "data").exists()  # nothing started, not even a pid file


def test_compose_files_say_what_the_protected_mode_and_shared_limits_need() -> None:
    gateway = compose()["services"]["gateway"]["environment"]
    # Listening on every address with keys that may be empty: anonymous on purpose.
    assert gateway["IMAGESVC_GATEWAY_HOST"] == "0.0.0.0"
    assert gateway["IMAGESVC_ALLOW_ANONYMOUS"] == "true"
    scaled = merged()["services"]
    counters = urlsplit(scaled["gateway"]["environment"]["IMAGESVC_RATE_LIMIT_URL"])
    assert (counters.scheme, counters.hostname, counters.port) == ("redis", "redis", 6379)
    assert "redis" in scaled


def test_bad_limit_settings_stop_the_gateway_naming_them() -> None:
    for env, words in (
        ({"IMAGESVC_RATE_LIMIT_UPLOADS": "lots"}, "IMAGESVC_RATE_LIMIT_UPLOADS='lots' is not"),
        ({"IMAGESVC_RATE_LIMIT_RENDERS": "0/minute"}, "IMAGESVC_RATE_LIMIT_RENDERS='0/minute'"),
        ({"IMAGESVC_RATE_LIMIT_URL": "memcached://x"}, "IMAGESVC_RATE_LIMIT_URL takes redis://"),
        ({"IMAGESVC_TRUSTED_PROXIES": "10.0.0.0/8,proxy"}, "'proxy' is neither"),
        ({"IMAGESVC_ALLOW_ANONYMOUS": "maybe"}, "IMAGESVC_ALLOW_ANONYMOUS='maybe'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)):
            Settings.from_env(Env(env))
    settings = Settings.from_env(
        Env({"IMAGESVC_RATE_LIMIT_UPLOADS": "10 per hour", "IMAGESVC_TRUSTED_PROXIES": "::1"})
    )
    assert settings.upload_budget is not None and settings.render_budget is None
    assert settings.upload_budget.policy == '"uploads";q=10;w=3600'
