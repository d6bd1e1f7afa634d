"""Signed URLs: the scheme pinned by a vector, rotation, tampering, expiry, and the modes
through a real gateway."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from common.caller import ANONYMOUS, OWN_SCOPES, READ, Caller
from common.env import ConfigError, Env
from gateway.app import create_app
from gateway.config import Settings
from gateway.problems import HTTPProblem
from gateway.signing import (
    URL_HOLDER,
    Signing,
    SigningKey,
    canonical,
    parse_keys,
    parse_signing,
    reader,
    sign,
    verify,
)
from tests.support import ROOT, ServiceProcess, is_problem, png_bytes

SECRET = "0123456789abcdef0123456789abcdef"
NEW = SigningKey("new", b"N" * 32)
OLD = SigningKey("old", b"O" * 32)
PATH = "/images/AAAAAAAAAAAAAAAAAAAAAA"
NOW = 1_767_225_000.0

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789ab"
OPS = "ops-key-0123456789abc"
READER = "reader-key-0123456789"  # alice's, read only
API_KEYS = f"alice:{ALICE},bob:{BOB},ops:{OPS}:admin,alice:{READER}:images:read"
SIGNING_KEYS = f"new:{'N' * 32},old:{'O' * 32}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def items(query: str) -> list[tuple[str, str]]:
    """A query as the gateway reads it (Starlette decodes with parse_qsl, blanks kept)."""
    return parse_qsl(query, keep_blank_values=True)


def reason(call: Callable[[], object]) -> str:
    with pytest.raises(HTTPProblem) as refused:
        call()
    assert refused.value.status == 403
    return str(refused.value.extensions["reason"])


def test_the_scheme_is_pinned_by_a_vector_computed_by_hand() -> None:
    key = SigningKey("k1", SECRET.encode())
    params = [
        ("w", "300"),
        ("grayscale", ""),
        ("bg", "ff0000"),
        ("crop", "0,0,10,10"),
        ("été", "a b/~"),
        ("a", "2"),
        ("a-b", "1"),  # sorted as encoded pairs: "a-b=1" before "a=2" ('-' < '=')
    ]
    query = sign(PATH, params, key, expires=1767225600)
    # Written out by hand: every byte but A-Z a-z 0-9 - . _ ~ as %XX (uppercase), the
    # encoded name=value pairs sorted, sig left out, a flag's value empty.
    expected_canonical = (
        "/images/AAAAAAAAAAAAAAAAAAAAAA?%C3%A9t%C3%A9=a%20b%2F~&a-b=1&a=2&bg=ff0000"
        "&crop=0%2C0%2C10%2C10&exp=1767225600&grayscale=&kid=k1&w=300"
    )
    assert canonical(PATH, items(query)) == expected_canonical
    mac = hmac.new(SECRET.encode(), expected_canonical.encode(), hashlib.sha256).digest()
    expected_sig = base64.urlsafe_b64encode(mac).decode().rstrip("=")
    assert expected_sig == "eUdXz7r-Zs483kphN049ZzahEPKN9NUgO5RKiBeus34"  # for other languages
    assert query.endswith(f"&kid=k1&exp=1767225600&sig={expected_sig}")
    assert query.startswith("w=300&grayscale=&bg=ff0000&crop=0%2C0%2C10%2C10&%C3%A9t%C3%A9=")
    verify(PATH, items(query), [key], now=1767225599)


def test_the_first_key_signs_and_every_key_verifies() -> None:
    keys = parse_keys([f"new:{'N' * 32}", f"old:{'O' * 32}"])
    assert keys == (NEW, OLD)
    before_rotation = sign(PATH, [("w", "10")], OLD)
    verify(PATH, items(before_rotation), keys, NOW)
    assert "kid=new&" in sign(PATH, [("w", "10")], keys[0]) + "&"
    assert reason(lambda: verify(PATH, items(before_rotation), keys[:1], NOW)) == "UNKNOWN_KEY"


@pytest.mark.parametrize(
    ("path", "change"),
    [
        ("/images/BAAAAAAAAAAAAAAAAAAAAA", lambda q: q),  # another image
        ("/blurred-images/AAAAAAAAAAAAAAAAAAAAAA", lambda q: q),  # another route
        (PATH, lambda q: [(n, "11" if n == "w" else v) for n, v in q]),  # a value
        (PATH, lambda q: [*q, ("blur", "2")]),  # a parameter added
        (PATH, lambda q: [(n, v) for n, v in q if n != "grayscale"]),  # one removed
        (PATH, lambda q: [(n, "1767229999" if n == "exp" else v) for n, v in q]),  # exp
        (PATH, lambda q: [(n, v) for n, v in q if n != "exp"]),  # exp dropped
        (PATH, lambda q: [(n, v[:-1] + "A" if n == "sig" else v) for n, v in q]),
        (PATH, lambda q: [(n, v) for n, v in q if n != "sig"]),
        (PATH, lambda q: [*q, ("sig", "x")]),  # sig twice
        (PATH, lambda q: [(n, "w" if n == "grayscale" else v) for n, v in q]),
        (PATH, lambda q: [("grayscale" if n == "w" else n, v) for n, v in q]),
    ],
)
def test_any_change_invalidates_a_signature(
    path: str, change: Callable[[list[tuple[str, str]]], list[tuple[str, str]]]
) -> None:
    query = items(sign(PATH, [("w", "10"), ("grayscale", "")], NEW, expires=int(NOW) + 60))
    verify(PATH, query, [NEW], NOW)
    assert reason(lambda: verify(path, change(query), [NEW], NOW)) == "SIGNATURE_INVALID"


def test_a_signature_expires_at_exp() -> None:
    query = items(sign(PATH, [], NEW, expires=int(NOW)))
    verify(PATH, query, [NEW], NOW - 1)
    assert reason(lambda: verify(PATH, query, [NEW], NOW)) == "SIGNATURE_EXPIRED"
    forever = items(sign(PATH, [], NEW))
    verify(PATH, forever, [NEW], NOW * 100)


def test_a_signature_names_a_key_the_service_has() -> None:
    unknown = items(sign(PATH, [], SigningKey("other", b"N" * 32)))
    assert reason(lambda: verify(PATH, unknown, [NEW, OLD], NOW)) == "UNKNOWN_KEY"
    foreign = [(n, "é" if n == "kid" else v) for n, v in items(sign(PATH, [], NEW))]
    assert reason(lambda: verify(PATH, foreign, [NEW, OLD], NOW)) == "UNKNOWN_KEY"
    nameless = [(n, v) for n, v in items(sign(PATH, [], NEW)) if n != "kid"]
    assert reason(lambda: verify(PATH, nameless, [NEW], NOW)) == "SIGNATURE_INVALID"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGESVC_URL_SIGNING_KEYS": "k1:short"}, "32 or more characters"),
        ({"IMAGESVC_URL_SIGNING_KEYS": f":{SECRET}"}, "KID:SECRET"),
        ({"IMAGESVC_URL_SIGNING_KEYS": f"k/1:{SECRET}"}, "KID:SECRET"),
        ({"IMAGESVC_URL_SIGNING_KEYS": f"k1:{SECRET},k1:{SECRET}x"}, "kid k1 twice"),
        ({"IMAGESVC_SIGNATURES": "grant"}, "needs IMAGESVC_URL_SIGNING_KEYS"),
        (
            {"IMAGESVC_URL_SIGNING_KEYS": f"k1:{SECRET}", "IMAGESVC_SIGNATURES": "always"},
            "must be grant or required",
        ),
    ],
)
def test_bad_signing_settings_stop_the_gateway(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        Settings.from_env(Env(env))
    assert SECRET not in str(refused.value)


def test_signing_settings() -> None:
    assert Settings.from_env(Env({})).signing == Signing((), "off")
    keyed = {"IMAGESVC_URL_SIGNING_KEYS": f"k1:{SECRET}:with-colon"}
    signing = Settings.from_env(Env(keyed)).signing
    assert signing == Signing((SigningKey("k1", f"{SECRET}:with-colon".encode()),), "grant")
    assert SECRET not in repr(signing)
    assert parse_signing(signing.keys, "required").mode == "required"


def test_required_mode_exempts_writers_presets_and_originals() -> None:
    required = Signing((NEW,), "required")
    writer = Caller("alice", True, OWN_SCOPES)
    reads_only = Caller("alice", True, frozenset({READ}))
    asked = [("w", "10")]
    assert reader(required, PATH, asked, writer, NOW) is writer
    for caller in (ANONYMOUS, reads_only, Caller("", False, OWN_SCOPES)):
        refusal = functools.partial(reader, required, PATH, asked, caller, NOW)
        assert reason(refusal) == "SIGNATURE_REQUIRED"
    assert reader(required, PATH, [], ANONYMOUS, NOW) is ANONYMOUS
    assert reader(required, PATH, [("preset", "thumb")], ANONYMOUS, NOW) is ANONYMOUS
    with_more = [("preset", "thumb"), ("w", "10")]
    assert reason(lambda: reader(required, PATH, with_more, ANONYMOUS, NOW)) == (
        "SIGNATURE_REQUIRED"
    )
    signed = items(sign(PATH, asked, NEW))
    assert reader(required, PATH, signed, ANONYMOUS, NOW) is URL_HOLDER
    grant = Signing((NEW,), "grant")
    assert reader(grant, PATH, asked, ANONYMOUS, NOW) is ANONYMOUS


def test_openapi_describes_signing_where_it_is_on() -> None:
    keys = {"IMAGESVC_URL_SIGNING_KEYS": f"k1:{SECRET}"}
    on = create_app(Settings.from_env(Env(keys))).state.openapi
    off = create_app(Settings.from_env(Env({}))).state.openapi
    for doc, signing in ((on, True), (off, False)):
        for path in ("/images/{image_id}", "/blurred-images/{image_id}"):
            names = {p["name"] for p in doc["paths"][path]["get"]["parameters"]}
            assert ({"kid", "exp", "sig"} <= names) is signing
        assert ("/images/{image_id}/signed-urls" in doc["paths"]) is signing
        assert ("signedUrl" in doc["components"]["securitySchemes"]) is signing
    assert on["components"]["securitySchemes"]["signedUrl"] == {
        "type": "apiKey",
        "in": "query",
        "name": "sig",
        "description": "A signed URL grants a read of exactly that URL until exp.",
    }


# Through a real gateway.


@pytest.fixture(scope="module")
def granting(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> ServiceProcess:
    env = {"IMAGESVC_API_KEYS": API_KEYS, "IMAGESVC_URL_SIGNING_KEYS": SIGNING_KEYS}
    return stack(env, processor=processor_server)


@pytest.fixture
def grant_http(granting: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=granting.url, timeout=30) as client:
        yield client


def upload_as(http: httpx.Client, key: str | None, seed: int, query: str = "") -> str:
    headers = {"Content-Type": "image/png", **(bearer(key) if key else {})}
    made = http.post(f"/images{query}", content=png_bytes(9, 7, seed=seed), headers=headers)
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def test_a_signed_url_reads_a_private_image_anonymously(grant_http: httpx.Client) -> None:
    image = upload_as(grant_http, ALICE, seed=131)
    path = f"/images/{image}"
    is_problem(grant_http.get(path), 404)
    is_problem(grant_http.get(f"{path}?w=3"), 404)  # grant: unsigned behaves as before
    later = int(time.time()) + 600
    original = grant_http.get(f"{path}?{sign(path, [], NEW, later)}")
    assert original.status_code == 200
    assert original.content == png_bytes(9, 7, seed=131)
    assert original.headers["cache-control"].startswith("private")
    variant = grant_http.get(f"{path}?{sign(path, [('w', '3')], OLD, later)}")
    assert variant.status_code == 200 and variant.headers["x-cache"] == "MISS"
    # Another signature of the same transformation is the same variant.
    again = grant_http.get(f"{path}?{sign(path, [('w', '3')], NEW, later + 1)}")
    assert again.headers["x-cache"] == "HIT" and again.headers["etag"] == variant.headers["etag"]
    head = grant_http.head(f"{path}?{sign(path, [('w', '3')], NEW)}")
    assert head.status_code == 200 and head.headers["etag"] == variant.headers["etag"]
    blurred = f"/blurred-images/{image}"
    assert grant_http.get(f"{blurred}?{sign(blurred, [], NEW, later)}").status_code == 200
    # Signed for one image, it reads no other.
    other = f"/images/{upload_as(grant_http, ALICE, seed=132)}"
    is_problem(grant_http.get(f"{other}?{sign(path, [], NEW, later)}"), 403)


def test_a_signature_is_checked_against_the_image_served_whatever_the_host_says(
    grant_http: httpx.Client,
) -> None:
    """A Host header can make the request's URL name another path than the one routed:
    the signature must be checked against the image served, never against that URL."""
    mine = upload_as(grant_http, BOB, seed=141)
    victim = upload_as(grant_http, ALICE, seed=142)
    signed = sign(f"/images/{mine}", [], NEW, int(time.time()) + 600)
    for host in (f"x/images/{mine}?", f"x/images/{mine}#"):
        answer = grant_http.get(f"/images/{victim}?{signed}", headers={"Host": host})
        assert answer.status_code in (400, 403), (host, answer.status_code)
        assert png_bytes(9, 7, seed=142) != answer.content


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda q: q.replace("w=3", "w=4"), "SIGNATURE_INVALID"),
        (lambda q: q + "&grayscale", "SIGNATURE_INVALID"),
        (lambda q: q.replace("w=3&", ""), "SIGNATURE_INVALID"),
        (lambda q: q.replace("kid=new", "kid=gone"), "UNKNOWN_KEY"),
        (lambda q: q.replace("sig=", "sig=A"), "SIGNATURE_INVALID"),
    ],
)
def test_a_tampered_signed_url_is_refused(
    grant_http: httpx.Client, tamper: Callable[[str], str], expected: str
) -> None:
    path = "/images/AAAAAAAAAAAAAAAAAAAAAA"  # refused before any image is looked at
    query = sign(path, [("w", "3")], NEW, int(time.time()) + 600)
    body = is_problem(grant_http.get(f"{path}?{tamper(query)}"), 403)
    assert body["reason"] == expected


def test_an_expired_signature_is_refused_even_from_memory(grant_http: httpx.Client) -> None:
    image = upload_as(grant_http, ALICE, seed=134, query="?visibility=public")
    path = f"/images/{image}"
    soon = int(time.time()) + 2
    url = f"{path}?{sign(path, [('w', '5')], NEW, soon)}"
    for _ in range(2):  # the second from the gateway's memory
        assert grant_http.get(url).status_code == 200
    # scenario: the signature's expiry passes
    time.sleep(max(0.0, soon - time.time()) + 0.1)
    body = is_problem(grant_http.get(url), 403)
    assert (body["reason"], body["type"]) == ("SIGNATURE_EXPIRED", "/problems/signature-expired")


def test_the_signed_urls_route(grant_http: httpx.Client) -> None:
    image = upload_as(grant_http, ALICE, seed=135)
    route = f"/images/{image}/signed-urls"
    asked = {"params": {"w": 4.0, "grayscale": True, "format": "png"}, "expires_in": 120}
    before = int(time.time())
    made = grant_http.post(route, json=asked, headers=bearer(ALICE))
    assert made.status_code == 200, made.text
    assert made.headers["cache-control"] == "no-store"
    answer = made.json()
    assert before + 120 <= answer["expires"] <= int(time.time()) + 120
    assert answer["url"].startswith(f"/images/{image}?w=4&grayscale=&format=png&kid=new&exp=")
    served = grant_http.get(answer["url"])  # anonymously
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    # Another owner cannot tell the image exists; an admin may sign it.
    is_problem(grant_http.post(route, json=asked, headers=bearer(BOB)), 404)
    is_problem(grant_http.post(route, json=asked), 401)
    by_admin = grant_http.post(route, headers=bearer(OPS))  # no body: the original
    assert by_admin.status_code == 200
    assert grant_http.get(by_admin.json()["url"]).content == png_bytes(9, 7, seed=135)
    is_problem(grant_http.post(route, json=asked, headers=bearer(READER)), 403)
    public = upload_as(grant_http, ALICE, seed=136, query="?visibility=public")
    is_problem(grant_http.post(f"/images/{public}/signed-urls", json={}, headers=bearer(BOB)), 403)
    is_problem(
        grant_http.post(
            "/images/MMMMMMMMMMMMMMMMMMMMMM/signed-urls", json={}, headers=bearer(ALICE)
        ),
        404,
    )


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        (b"{", None),
        (b"[]", None),
        (b'{"params": {}, "extra": 1}', None),
        (b'{"params": []}', None),
        (b'{"params": {"w": 0}}', "w"),
        (b'{"params": {"fit": "cover"}}', "fit"),
        (b'{"params": {"w": [1]}}', "w"),
        (b'{"params": {"sig": "x"}}', "sig"),
        (b'{"params": {"nope": "1"}}', "nope"),
        (b'{"expires_in": 0}', "expires_in"),
        (b'{"expires_in": 604801}', "expires_in"),
        (b'{"expires_in": 60.5}', "expires_in"),
        (b'{"expires_in": true}', "expires_in"),
    ],
)
def test_the_signed_urls_route_refuses_bad_bodies(
    grant_http: httpx.Client, body: bytes, parameter: str | None
) -> None:
    route = "/images/AAAAAAAAAAAAAAAAAAAAAA/signed-urls"
    headers = {"Content-Type": "application/json", **bearer(ALICE)}
    answer = is_problem(grant_http.post(route, content=body, headers=headers), 400)
    assert answer.get("parameter") == parameter


@pytest.fixture(scope="module")
def requiring(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> ServiceProcess:
    env = {
        "IMAGESVC_API_KEYS": API_KEYS,
        "IMAGESVC_URL_SIGNING_KEYS": SIGNING_KEYS,
        "IMAGESVC_SIGNATURES": "required",
    }
    return stack(env, processor=processor_server)


def test_required_mode_refuses_unsigned_transformations(requiring: ServiceProcess) -> None:
    with httpx.Client(base_url=requiring.url, timeout=30) as http:
        image = upload_as(http, ALICE, seed=137, query="?visibility=public")
        path = f"/images/{image}"
        assert http.get(path).status_code == 200  # the original asks no rendering
        for headers in ({}, bearer(READER)):
            body = is_problem(http.get(f"{path}?w=6", headers=headers), 403)
            assert body["reason"] == "SIGNATURE_REQUIRED"
        # Once rendered, still refused unsigned (not answered from memory).
        assert http.get(f"{path}?w=6", headers=bearer(ALICE)).status_code == 200
        is_problem(http.get(f"{path}?w=6"), 403)
        assert http.get(f"{path}?{sign(path, [('w', '6')], NEW)}").status_code == 200
        assert http.get(f"/blurred-images/{image}").status_code == 200
        made = http.post(f"{path}/signed-urls", json={"params": {"w": 7}}, headers=bearer(ALICE))
        assert http.get(made.json()["url"]).status_code == 200


def test_required_mode_without_api_keys(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> None:
    env = {"IMAGESVC_URL_SIGNING_KEYS": SIGNING_KEYS, "IMAGESVC_SIGNATURES": "required"}
    gateway = stack(env, processor=processor_server)
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        path = f"/images/{upload_as(http, None, seed=138)}"
        body = is_problem(http.get(f"{path}?w=6"), 403)
        assert body["reason"] == "SIGNATURE_REQUIRED"
        assert http.get(f"{path}?{sign(path, [('w', '6')], OLD)}").status_code == 200
        # Everyone is the same caller here: the route would sign for anyone.
        is_problem(http.post(f"{path}/signed-urls", json={}), 403)


def test_without_keys_signature_parameters_are_unknown(http: httpx.Client) -> None:
    path = f"/images/{upload_as(http, None, seed=139)}"
    for query in (sign(path, [], NEW), "sig=x"):
        body = is_problem(http.get(f"{path}?{query}"), 400)
        assert body["detail"] in ("kid: unknown parameter", "sig: unknown parameter")
    is_problem(http.post(f"{path}/signed-urls", json={}), 404)


def test_the_docs_sign_as_the_gateway_verifies() -> None:
    page = (ROOT / "docs" / "http.md").read_text()
    section = page[page.index("## Signed URLs") : page.index("## Errors")]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None and len([ln for ln in block.group(1).splitlines() if ln]) <= 10
    names: dict[str, Any] = {}
    exec(compile(block.group(1), "docs/http.md", "exec"), names)
    url = names["signed_url"](PATH, {"w": "300", "grayscale": "", "été": "a b"}, "new", "N" * 32)
    path, _, query = url.partition("?")
    verify(path, items(query), [NEW], time.time())
    assert reason(lambda: verify(path, items(query), [NEW], time.time() + 3600)) == (
        "SIGNATURE_EXPIRED"
    )
    assert "`/images/AAAAAAAAAAAAAAAAAAAAAA?%C3%A9t%C3%A9=a%20b%2F~&a-b=1" in section
    assert "`sig=eUdXz7r-Zs483kphN049ZzahEPKN9NUgO5RKiBeus34`" in section
