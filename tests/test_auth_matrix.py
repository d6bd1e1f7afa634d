"""The auth matrix of issue 13: every route by every kind of caller → the expected status,
from one table; and a private image that never shows it exists.

One gateway serves every cell: API keys of A, of B and of an admin, RS256 tokens from a
JWKS file (issuer and audience checked), two URL signing keys (new first, old second),
signatures in the default grant mode.
"""

# ruff: noqa: E501 (the table below is one row per caller, wider than a line)

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.support import ServiceProcess, b64, forged, is_problem, paired_ratio, png_bytes

KEY_A = "matrix-alice-key-0123456789"
KEY_B = "matrix-bob-key-0123456789ab"
KEY_ADMIN = "matrix-ops-key-0123456789abc"
API_KEYS = f"alice:{KEY_A},bob:{KEY_B},ops:{KEY_ADMIN}:admin"
ISSUER = "https://idp.example"
AUDIENCE = "imagesvc"
KID = "rsa-1"
NEW = ("new", "N" * 40)  # signs
OLD = ("old", "O" * 40)  # verifies only: the key before the rotation
SIGNING_KEYS = f"{NEW[0]}:{NEW[1]},{OLD[0]}:{OLD[1]}"
PNG = {"Content-Type": "image/png"}
ALL_OWN = "images:read images:write images:delete"

# --- the table ------------------------------------------------------------------------

ROUTES = (
    "list",  # GET /images
    "upload",  # POST /images
    "get",  # GET /images/{A's private}
    "get_w20",  # GET /images/{A's private}?w=20 (the signed rows: a signed URL of it)
    "head",  # HEAD /images/{A's private}
    "info",  # GET /images/{A's private}/info
    "blurred",  # GET /blurred-images/{A's private} (the signed rows: a signed URL of it)
    "get_public",  # GET /images/{A's public}
    "delete",  # DELETE /images/{a fresh private image of A's, one per cell}
    "sign",  # POST /images/{A's private}/signed-urls
    "presets",  # GET /presets
    "healthz",  # GET /healthz
    "readyz",  # GET /readyz
    "openapi",  # GET /openapi.json
    "metrics",  # GET /metrics
)
SIGNED_ROUTES = ("get_w20", "blurred")  # the reads a signed URL is made for
NA: None = None  # no such cell: a signed URL is a URL of one read, not a credential
# The routes that need no credential never look at one (401 is for routes that do).
# fmt: off
MATRIX: dict[str, tuple[int | None, ...]] = {
    #                      list upload get  w20  head info blur pub  del  sign pre  hz   rz   oapi metr
    "anonymous":          (200, 401,   404, 404, 404, 404, 404, 200, 401, 401, 200, 200, 200, 200, 200),
    "key_a":              (200, 201,   200, 200, 200, 200, 200, 200, 204, 200, 200, 200, 200, 200, 200),
    "key_b":              (200, 201,   404, 404, 404, 404, 404, 200, 404, 404, 200, 200, 200, 200, 200),
    "jwt_a_read":         (200, 403,   200, 200, 200, 200, 200, 200, 403, 403, 200, 200, 200, 200, 200),
    "jwt_a_write":        (403, 201,   403, 403, 403, 403, 403, 200, 403, 200, 200, 200, 200, 200, 200),
    "jwt_a_delete":       (403, 403,   403, 403, 403, 403, 403, 200, 204, 403, 200, 200, 200, 200, 200),
    "jwt_a_admin":        (403, 403,   200, 200, 200, 200, 200, 200, 403, 403, 200, 200, 200, 200, 200),
    "jwt_expired":        (401, 401,   401, 401, 401, 401, 401, 401, 401, 401, 200, 200, 200, 200, 200),
    "jwt_wrong_issuer":   (401, 401,   401, 401, 401, 401, 401, 401, 401, 401, 200, 200, 200, 200, 200),
    "jwt_wrong_audience": (401, 401,   401, 401, 401, 401, 401, 401, 401, 401, 200, 200, 200, 200, 200),
    "jwt_alg_none":       (401, 401,   401, 401, 401, 401, 401, 401, 401, 401, 200, 200, 200, 200, 200),
    "jwt_hs256_rsa_pub":  (401, 401,   401, 401, 401, 401, 401, 401, 401, 401, 200, 200, 200, 200, 200),
    "signed_valid":       (NA,  NA,    NA,  200, NA,  NA,  200, NA,  NA,  NA,  NA,  NA,  NA,  NA,  NA),
    "signed_tampered":    (NA,  NA,    NA,  403, NA,  NA,  403, NA,  NA,  NA,  NA,  NA,  NA,  NA,  NA),
    "signed_expired":     (NA,  NA,    NA,  403, NA,  NA,  403, NA,  NA,  NA,  NA,  NA,  NA,  NA,  NA),
    "signed_unknown_kid": (NA,  NA,    NA,  403, NA,  NA,  403, NA,  NA,  NA,  NA,  NA,  NA,  NA,  NA),
    "signed_old_key":     (NA,  NA,    NA,  200, NA,  NA,  200, NA,  NA,  NA,  NA,  NA,  NA,  NA,  NA),
    "admin":              (200, 201,   200, 200, 200, 200, 200, 200, 204, 200, 200, 200, 200, 200, 200),
}
# fmt: on
# The reason a refused signature gives.
SIGNATURE_REASONS = {
    "signed_tampered": "SIGNATURE_INVALID",
    "signed_expired": "SIGNATURE_EXPIRED",
    "signed_unknown_kid": "UNKNOWN_KEY",
}
CELLS = [
    pytest.param(caller, route, status, id=f"{caller}-{route}-{status}")
    for caller, row in MATRIX.items()
    for route, status in zip(ROUTES, row, strict=True)
    if status is not None
]


def test_the_table_is_complete() -> None:
    """Every caller the issue lists has a row, every row a status for every route (or,
    for a signed URL, for the read it signs alone)."""
    assert all(len(row) == len(ROUTES) for row in MATRIX.values())
    for caller, row in MATRIX.items():
        if caller.startswith("signed_"):
            assert tuple(route for route, s in zip(ROUTES, row, strict=True) if s) == SIGNED_ROUTES
        else:
            assert None not in row, caller
    assert len(CELLS) == 13 * len(ROUTES) + 5 * len(SIGNED_ROUTES)


# --- credentials ----------------------------------------------------------------------


def signed_query(path: str, params: dict[str, str], kid: str, secret: str, exp: int) -> str:
    """The scheme of docs/http.md, written out here again (not the gateway's code)."""
    query = [*params.items(), ("kid", kid), ("exp", str(exp))]
    pairs = [quote(name, safe="") + "=" + quote(value, safe="") for name, value in query]
    canonical = path + "?" + "&".join(sorted(pairs))
    mac = hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).digest()
    return "&".join(pairs) + "&sig=" + b64(mac)


@dataclass
class World:
    http: httpx.Client
    private: str  # A's private image
    public: str  # A's public image
    headers: dict[str, dict[str, str]]  # caller → request headers
    signed: dict[tuple[str, str], str]  # (signed row, route) → the URL


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def credentials(private_key: rsa.RSAPrivateKey) -> dict[str, dict[str, str]]:
    now = int(time.time())

    def claims(**extra: Any) -> dict[str, Any]:
        return {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 3600, **extra}

    def rs256(payload: dict[str, Any]) -> dict[str, str]:
        return bearer(jwt.encode(payload, private_key, algorithm="RS256", headers={"kid": KID}))

    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    full = claims(scope=ALL_OWN)
    return {
        "anonymous": {},
        "key_a": {"X-API-Key": KEY_A},
        "key_b": bearer(KEY_B),
        "jwt_a_read": rs256(claims(scope="images:read")),
        "jwt_a_write": rs256(claims(scope="images:write")),
        "jwt_a_delete": rs256(claims(scope="images:delete")),
        "jwt_a_admin": rs256(claims(scope="images:admin")),
        "jwt_b_read": rs256(claims(sub="bob", scope="images:read")),
        # Past the 30 s leeway.
        "jwt_expired": rs256({**full, "exp": now - 120}),
        "jwt_wrong_issuer": rs256({**full, "iss": "https://evil.example"}),
        "jwt_wrong_audience": rs256({**full, "aud": "another-service"}),
        "jwt_alg_none": bearer(forged({"alg": "none", "typ": "JWT", "kid": KID}, full, None)),
        # The published key used as an HMAC secret: the classic confusion attack.
        "jwt_hs256_rsa_pub": bearer(
            forged({"alg": "HS256", "typ": "JWT", "kid": KID}, full, public_pem)
        ),
        "admin": bearer(KEY_ADMIN),
    }


@pytest.fixture(scope="module")
def world(
    stack: Callable[..., ServiceProcess],
    processor_server: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": KID}
    jwks = Path(tmp_path_factory.mktemp("matrix")) / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "alg": "RS256", "use": "sig"}]}))
    gateway = stack(
        {
            "IMAGESVC_API_KEYS": API_KEYS,
            "IMAGESVC_JWT_JWKS": str(jwks),
            "IMAGESVC_JWT_ISSUER": ISSUER,
            "IMAGESVC_JWT_AUDIENCE": AUDIENCE,
            "IMAGESVC_URL_SIGNING_KEYS": SIGNING_KEYS,
        },
        processor=processor_server,
    )
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        made = {}
        for visibility, seed in (("private", 131), ("public", 132)):
            response = http.post(
                f"/images?visibility={visibility}",
                content=png_bytes(40, 30, seed=seed),
                headers={**PNG, "X-API-Key": KEY_A},
            )
            assert response.status_code == 201, response.text
            assert response.json()["visibility"] == visibility
            made[visibility] = response.json()["id"]
        later, earlier = int(time.time()) + 3600, int(time.time()) - 10
        signed = {}
        for route, path, params in (
            ("get_w20", f"/images/{made['private']}", {"w": "20"}),
            ("blurred", f"/blurred-images/{made['private']}", {}),
        ):
            valid = signed_query(path, params, *NEW, later)
            # Any change to a parameter: w for the variant, exp for the blurred image.
            tampered = (
                valid.replace("w=20", "w=21")
                if params
                else valid.replace(f"exp={later}", f"exp={later + 1}")
            )
            assert tampered != valid
            for row, query in {
                "signed_valid": valid,
                "signed_tampered": tampered,
                "signed_expired": signed_query(path, params, *NEW, earlier),
                "signed_unknown_kid": signed_query(path, params, "gone", "G" * 40, later),
                "signed_old_key": signed_query(path, params, *OLD, later),
            }.items():
                signed[row, route] = f"{path}?{query}"
        yield World(http, made["private"], made["public"], credentials(private_key), signed)


# --- the matrix -----------------------------------------------------------------------


def fresh_private_image(world: World, seed: int) -> str:
    response = world.http.post(
        "/images", content=png_bytes(9, 9, seed=seed), headers={**PNG, "X-API-Key": KEY_A}
    )
    assert response.status_code == 201, response.text
    image_id: str = response.json()["id"]
    return image_id


def ask(world: World, caller: str, route: str) -> httpx.Response:
    http, private = world.http, f"/images/{world.private}"
    if caller.startswith("signed_"):
        return http.get(world.signed[caller, route])
    headers = world.headers[caller]
    if route == "list":
        return http.get("/images", headers=headers)
    if route == "upload":
        png = png_bytes(7, 7, seed=secrets.randbelow(1 << 24))
        return http.post("/images", content=png, headers={**PNG, **headers})
    if route == "get":
        return http.get(private, headers=headers)
    if route == "get_w20":
        return http.get(f"{private}?w=20", headers=headers)
    if route == "head":
        return http.head(private, headers=headers)
    if route == "info":
        return http.get(f"{private}/info", headers=headers)
    if route == "blurred":
        return http.get(f"/blurred-images/{world.private}", headers=headers)
    if route == "get_public":
        return http.get(f"/images/{world.public}", headers=headers)
    if route == "delete":
        victim = fresh_private_image(world, seed=secrets.randbelow(1 << 24))
        response = http.delete(f"/images/{victim}", headers=headers)
        # A refused delete leaves the image; a done one leaves nothing.
        after = http.get(f"/images/{victim}", headers={"X-API-Key": KEY_A}).status_code
        assert after == (404 if response.status_code == 204 else 200), (response, after)
        return response
    if route == "sign":
        return http.post(f"{private}/signed-urls", json={"params": {"w": 20}}, headers=headers)
    if route == "presets":
        return http.get("/presets", headers=headers)
    simple = {"healthz": "/healthz", "readyz": "/readyz", "openapi": "/openapi.json"}
    return http.get(simple.get(route, "/metrics"), headers=headers)


@pytest.mark.parametrize(("caller", "route", "status"), CELLS)
def test_auth_matrix(world: World, caller: str, route: str, status: int) -> None:
    response = ask(world, caller, route)
    assert response.status_code == status, (response.status_code, response.text)
    if status < 400:
        if route in ("get", "get_w20", "head", "blurred"):
            assert response.headers["content-type"].startswith("image/")
        return
    if route == "head":  # no body: the headers still say what it is
        assert response.headers["content-type"] == "application/problem+json"
    else:
        body = is_problem(response, status)
        if caller in SIGNATURE_REASONS:
            assert body["reason"] == SIGNATURE_REASONS[caller]
            assert (
                body["type"] == f"/problems/{SIGNATURE_REASONS[caller].lower().replace('_', '-')}"
            )
        elif status == 403:
            assert body["type"] == "/problems/forbidden"
        elif status == 404:
            assert (body["type"], body["detail"]) == ("/problems/not-found", "no such image")
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_signed_url_reads_exactly_the_image_it_names(world: World) -> None:
    """The valid signature answers the variant asked for, and the URL the gateway
    signs itself (with the new key) works for whoever holds it."""
    valid = world.http.get(world.signed["signed_valid", "get_w20"])
    assert valid.headers["content-type"] == "image/png"
    made = world.http.post(
        f"/images/{world.private}/signed-urls",
        json={"params": {"w": 20}},
        headers={"X-API-Key": KEY_A},
    ).json()
    assert "kid=new" in made["url"]
    held = world.http.get(made["url"])
    assert held.status_code == 200 and held.content == valid.content


# --- a private image never shows it exists --------------------------------------------

LEAK_CALLERS = ("key_b", "anonymous", "jwt_b_read")
READS = ("get", "get_w20", "head", "info", "blurred", "sign", "delete")


def read(world: World, caller: str, route: str, image_id: str) -> httpx.Response:
    http, path, headers = world.http, f"/images/{image_id}", world.headers[caller]
    if route == "get":
        return http.get(path, headers=headers)
    if route == "get_w20":
        return http.get(f"{path}?w=20", headers=headers)
    if route == "head":
        return http.head(path, headers=headers)
    if route == "info":
        return http.get(f"{path}/info", headers=headers)
    if route == "blurred":
        return http.get(f"/blurred-images/{image_id}", headers=headers)
    if route == "delete":  # none of these callers may: A's image stays
        return http.delete(path, headers=headers)
    assert route == "sign"
    return http.post(f"{path}/signed-urls", json={"params": {"w": 20}}, headers=headers)


def seen(response: httpx.Response, image_id: str) -> tuple[int, str, dict[str, str]]:
    """What a response shows, but the id it was asked of and what differs per request."""
    headers = {
        name: value.replace(image_id, "ID")
        for name, value in response.headers.items()
        if name not in ("date", "x-request-id")
    }
    return response.status_code, response.text.replace(image_id, "ID"), headers


@pytest.mark.parametrize("route", READS)
@pytest.mark.parametrize("caller", LEAK_CALLERS)
def test_a_private_image_never_shows_it_exists(world: World, caller: str, route: str) -> None:
    missing = secrets.token_urlsafe(16)  # 22 characters, as every id
    assert len(missing) == len(world.private)
    # Its owner's reads put it in the gateway's memory: that path must not show either.
    for _ in range(2 if route != "delete" else 0):
        assert read(world, "key_a", route, world.private).status_code == 200
    ids = {"private": world.private, "missing": missing}
    times: dict[str, list[float]] = {"private": [], "missing": []}
    answers: dict[str, set[tuple[int, str, tuple[tuple[str, str], ...]]]] = {
        "private": set(),
        "missing": set(),
    }
    pairs = list(ids.items())
    for n in range(200):  # interleaved, so both see the same machine
        # Each goes first in turn: on a busy machine the first of two calls in a row is
        # the slower one, and a fixed order would read as a difference between them.
        for name, image_id in pairs if n % 2 == 0 else pairs[::-1]:
            started = time.perf_counter()
            response = read(world, caller, route, image_id)
            times[name].append(time.perf_counter() - started)
            status, text, headers = seen(response, image_id)
            answers[name].add((status, text, tuple(sorted(headers.items()))))
    assert len(answers["private"]) == 1, answers["private"]
    assert answers["private"] == answers["missing"]
    status = next(iter(answers["private"]))[0]
    # Signing and deleting are refused before any image is looked at to one who may not.
    refused_first = {"anonymous": 401, "jwt_b_read": 403}
    if route in ("sign", "delete"):
        assert status == refused_first.get(caller, 404)
    else:
        assert status == 404
    assert read(world, "key_a", "get", world.private).status_code == 200
    ratio = paired_ratio(times["private"], times["missing"])
    assert 0.75 < ratio < 1.33, (ratio, statistics.median(times["missing"]) * 1000)
