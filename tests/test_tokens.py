"""JWT bearer tokens, unit by unit: keys, algorithms, claims, JWKS files and URLs."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from common.caller import READ, SCOPES, WRITE, Caller
from common.env import ConfigError, Env
from gateway.config import Settings
from gateway.tokens import (
    FileKeys,
    InvalidToken,
    KeysUnavailable,
    RemoteKeys,
    SecretKey,
    Tokens,
    parse_jwks,
)
from tests.support import b64, forged

SECRET = "s" * 32
ISSUER = "https://idp.example"
AUDIENCE = "imagesvc"


@dataclass(frozen=True)
class Signer:
    """A private key, its algorithm and its public JWK."""

    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any] = field(hash=False)

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **header}
        )


def rsa_signer(kid: str = "rsa-1") -> Signer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return Signer(kid, "RS256", key, {**jwk, "kid": kid})


def ec_signer(kid: str = "ec-1") -> Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return Signer(kid, "ES256", key, {**jwk, "kid": kid})


def ed_signer(kid: str = "ed-1") -> Signer:
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return Signer(kid, "EdDSA", key, {**jwk, "kid": kid})


def jwks(*signers: Signer) -> str:
    return json.dumps({"keys": [signer.jwk for signer in signers]})


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "exp": now + 300, "scope": "images:read", **extra}


def check(tokens: Tokens, token: str) -> Caller:
    return asyncio.run(tokens.caller(token))


def refused(tokens: Tokens, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        check(tokens, token)
    return str(caught.value)


def secret_tokens(issuer: str | None = None, audience: str | None = None) -> Tokens:
    return Tokens(SecretKey(SECRET.encode()), issuer, audience)


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


# --- the caller a token names ---------------------------------------------------------


def test_sub_is_the_owner_and_scope_grants_known_scopes_only() -> None:
    token = hs256(claims(scope="openid images:write profile images:read images:everything"))
    assert check(secret_tokens(), token) == Caller("alice", True, frozenset({READ, WRITE}))


def test_admin_scope_makes_an_admin_and_no_scope_grants_nothing() -> None:
    admin = check(secret_tokens(), hs256(claims(scope="images:admin")))
    assert admin.admin and admin.owner == "alice"
    bare = check(secret_tokens(), hs256({k: v for k, v in claims().items() if k != "scope"}))
    assert bare == Caller("alice", True, frozenset())
    every = " ".join(sorted(SCOPES))
    assert check(secret_tokens(), hs256(claims(scope=every))).scopes == SCOPES


DROP = object()  # a claim left out


@pytest.mark.parametrize(
    ("changed", "why"),
    [
        ({"sub": DROP}, "the token has no sub claim"),
        ({"exp": DROP}, "the token has no exp claim"),
        ({"sub": ""}, "sub must be 1-128 characters"),
        ({"sub": "a" * 129}, "sub must be 1-128 characters"),
        ({"scope": ["images:read"]}, "scope must be a space-separated string"),
    ],
)
def test_claims_a_token_must_carry(changed: dict[str, Any], why: str) -> None:
    # Made when the test runs: a collection-time exp could expire before it does.
    payload = {k: v for k, v in {**claims(), **changed}.items() if v is not DROP}
    assert why in refused(secret_tokens(), hs256(payload))


def test_a_non_string_sub_is_refused() -> None:
    refused(secret_tokens(), hs256(claims(sub=42)))


# --- time ---------------------------------------------------------------------------


def test_expiry_and_not_before_have_30_seconds_of_leeway() -> None:
    now = int(time.time())
    tokens = secret_tokens()
    assert check(tokens, hs256(claims(exp=now - 10))).owner == "alice"
    assert check(tokens, hs256(claims(nbf=now + 10))).owner == "alice"
    assert refused(tokens, hs256(claims(exp=now - 60))) == "the token has expired"
    assert refused(tokens, hs256(claims(nbf=now + 60))) == "the token is not valid yet"


# --- issuer and audience ------------------------------------------------------------


def test_issuer_and_audience_are_checked_when_set() -> None:
    tokens = secret_tokens(ISSUER, AUDIENCE)
    good = claims(iss=ISSUER, aud=AUDIENCE)
    assert check(tokens, hs256(good)).owner == "alice"
    assert check(tokens, hs256({**good, "aud": ["other", AUDIENCE]})).owner == "alice"
    assert refused(tokens, hs256({**good, "iss": "https://evil.example"})) == (
        "the token is from another issuer"
    )
    assert refused(tokens, hs256({**good, "aud": "other"})) == "the token is for another audience"
    assert refused(tokens, hs256(claims(aud=AUDIENCE))) == "the token has no iss claim"
    assert refused(tokens, hs256(claims(iss=ISSUER))) == "the token has no aud claim"


def test_issuer_and_audience_are_not_checked_when_unset() -> None:
    token = hs256(claims(iss="https://anyone.example", aud="anything"))
    assert check(secret_tokens(), token).owner == "alice"


# --- algorithms follow the key ------------------------------------------------------


def test_a_secret_verifies_hs256_alone() -> None:
    tokens = secret_tokens()
    assert refused(tokens, hs256(claims(), "t" * 32)) == "the token's signature does not verify"
    assert refused(tokens, jwt.encode(claims(), SECRET * 2, algorithm="HS512")) == (
        "the token's algorithm is not accepted for this key"
    )
    assert refused(tokens, rsa_signer().sign(claims())) == (
        "the token's algorithm is not accepted for this key"
    )
    assert refused(tokens, forged({"alg": "none", "typ": "JWT"}, claims(), None)) == (
        "the token's algorithm is not accepted for this key"
    )
    assert refused(tokens, "not-a-token") == "the credential is neither an API key nor a token"


def test_alg_none_is_refused_with_a_jwks(tmp_path: Path) -> None:
    signer = rsa_signer()
    tokens = Tokens(FileKeys(write(tmp_path, jwks(signer))))
    unsigned = forged({"alg": "none", "kid": signer.kid}, claims(), None)
    assert refused(tokens, unsigned) == "the token's algorithm is not accepted for this key"


def test_hs256_signed_with_the_rsa_public_key_is_refused(tmp_path: Path) -> None:
    # The classic confusion: the public key, which anyone may read, used as an HMAC secret.
    signer = rsa_signer()
    tokens = Tokens(FileKeys(write(tmp_path, jwks(signer))))
    public = signer.private.public_key()
    for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
        key = public.public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo)
        token = forged({"alg": "HS256", "kid": signer.kid}, claims(), key)
        assert refused(tokens, token) == "the token's algorithm is not accepted for this key"
    # While the real thing passes, so the refusal above is for the algorithm.
    assert check(tokens, signer.sign(claims())).owner == "alice"


def test_a_token_claiming_another_algorithm_of_the_same_family_is_refused(
    tmp_path: Path,
) -> None:
    signer = rsa_signer()
    tokens = Tokens(FileKeys(write(tmp_path, jwks(signer))))
    other = jwt.encode(claims(), signer.private, algorithm="RS512", headers={"kid": signer.kid})
    assert refused(tokens, other) == "the token's algorithm is not accepted for this key"


# --- JWKS files ---------------------------------------------------------------------


def write(folder: Path, text: str, name: str = "jwks.json") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("make", [rsa_signer, ec_signer, ed_signer])
def test_each_key_type_verifies_its_own_algorithm(tmp_path: Path, make: Any) -> None:
    signer: Signer = make()
    others = [rsa_signer("other-rsa"), ec_signer("other-ec"), ed_signer("other-ed")]
    tokens = Tokens(FileKeys(write(tmp_path, jwks(signer, *others))))
    assert check(tokens, signer.sign(claims())) == Caller("alice", True, frozenset({READ}))
    # Signed by this key but naming another key of the set: the signature fails.
    same_kind = next(o for o in others if o.alg == signer.alg)
    wrong_kid = signer.sign(claims(), kid=same_kind.kid)
    assert refused(tokens, wrong_kid) == "the token's signature does not verify"


def test_a_token_must_name_a_key_of_the_set(tmp_path: Path) -> None:
    signer = ec_signer()
    tokens = Tokens(FileKeys(write(tmp_path, jwks(signer))))
    no_kid = jwt.encode(claims(), signer.private, algorithm="ES256")
    assert refused(tokens, no_kid) == "the token names no key of the JWKS (kid)"
    assert refused(tokens, signer.sign(claims(), kid="elsewhere")) == (
        "the token names no key of the JWKS (kid)"
    )


def test_symmetric_and_unnamed_keys_of_a_jwks_are_not_used(tmp_path: Path) -> None:
    signer = ed_signer()
    oct_key = {"kty": "oct", "kid": "shared", "k": b64(SECRET.encode())}
    unnamed = {k: v for k, v in rsa_signer().jwk.items() if k != "kid"}
    encrypting = {**ec_signer("enc").jwk, "use": "enc"}
    text = json.dumps({"keys": [signer.jwk, oct_key, unnamed, encrypting]})
    assert set(parse_jwks(text)) == {signer.kid}
    tokens = Tokens(FileKeys(write(tmp_path, text)))
    hs = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "shared"})
    assert refused(tokens, hs) == "the token names no key of the JWKS (kid)"


def test_a_jwks_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    first, second = rsa_signer("k1"), ed_signer("k2")
    path = write(tmp_path, jwks(first))
    tokens = Tokens(FileKeys(path, check_seconds=0))
    assert check(tokens, first.sign(claims())).owner == "alice"
    assert refused(tokens, second.sign(claims())) == "the token names no key of the JWKS (kid)"
    path.write_text(jwks(second))  # rotated: the first key is withdrawn
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))
    assert check(tokens, second.sign(claims())).owner == "alice"
    assert refused(tokens, first.sign(claims())) == "the token names no key of the JWKS (kid)"
    # A file half-written by its rotation is no reason to lose the keys it had.
    path.write_text('{"keys": [')
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert check(tokens, second.sign(claims())).owner == "alice"


def test_a_jwks_file_is_looked_at_no_more_often_than_asked(tmp_path: Path) -> None:
    first, second = rsa_signer("k1"), ed_signer("k2")
    path = write(tmp_path, jwks(first))
    tokens = Tokens(FileKeys(path, check_seconds=3600))
    path.write_text(jwks(second))
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))
    assert check(tokens, first.sign(claims())).owner == "alice"


# --- JWKS over HTTP -----------------------------------------------------------------


class JwksServer:
    """A tiny issuer: serves whatever JWKS it is given, and counts the fetches."""

    def __init__(self) -> None:
        self.body = jwks()
        self.fetches = 0
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.fetches += 1
                data = served.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuer() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


def test_a_jwks_url_is_fetched_once_and_cached(issuer: JwksServer) -> None:
    signers = [rsa_signer(), ec_signer(), ed_signer()]
    issuer.body = jwks(*signers)
    tokens = Tokens(RemoteKeys(issuer.url, cooldown=0))
    assert issuer.fetches == 0  # nothing is fetched before a token needs it
    for signer in signers * 2:
        assert check(tokens, signer.sign(claims())).owner == "alice"
    assert issuer.fetches == 1


def test_a_rotated_key_is_fetched_and_a_withdrawn_one_refused(issuer: JwksServer) -> None:
    old, new = rsa_signer("2026-01"), rsa_signer("2026-02")
    issuer.body = jwks(old)
    tokens = Tokens(RemoteKeys(issuer.url, cooldown=0))
    assert check(tokens, old.sign(claims())).owner == "alice"
    issuer.body = jwks(new)
    assert check(tokens, new.sign(claims())).owner == "alice"
    assert issuer.fetches == 2
    assert refused(tokens, old.sign(claims())) == "the token names no key of the JWKS (kid)"


def test_unknown_kids_fetch_no_more_than_once_per_cooldown(issuer: JwksServer) -> None:
    known = ec_signer()
    issuer.body = jwks(known)
    tokens = Tokens(RemoteKeys(issuer.url, cooldown=60))
    assert check(tokens, known.sign(claims())).owner == "alice"
    for n in range(5):
        stranger = known.sign(claims(), kid=f"unknown-{n}")
        assert refused(tokens, stranger) == "the token names no key of the JWKS (kid)"
    assert issuer.fetches == 1


def test_the_set_is_fetched_again_after_its_lifespan(issuer: JwksServer) -> None:
    old, new = ed_signer("a"), ed_signer("b")
    issuer.body = jwks(old)
    tokens = Tokens(RemoteKeys(issuer.url, lifespan=0.2, cooldown=60))
    assert check(tokens, old.sign(claims())).owner == "alice"
    issuer.body = jwks(new)
    # scenario: the cached set outlives its 0.2 s lifespan
    time.sleep(0.3)
    # Withdrawn at the issuer: refused once the cached set has expired, cooldown or not.
    assert refused(tokens, old.sign(claims())) == "the token names no key of the JWKS (kid)"
    assert check(tokens, new.sign(claims())).owner == "alice"
    assert issuer.fetches == 2


def test_an_issuer_that_cannot_be_reached_is_no_verdict_on_the_token(
    issuer: JwksServer,
) -> None:
    signer = rsa_signer()
    url = issuer.url
    issuer.close()
    tokens = Tokens(RemoteKeys(url, timeout=2))
    with pytest.raises(KeysUnavailable):
        check(tokens, signer.sign(claims()))


# --- configuration ------------------------------------------------------------------


def settings(**variables: str) -> Settings:
    return Settings.from_env(Env({f"IMAGESVC_{k}": v for k, v in variables.items()}))


def test_jwt_alone_turns_auth_on() -> None:
    assert not settings().auth_enabled
    configured = settings(JWT_SECRET=SECRET, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE)
    assert configured.auth_enabled and not configured.api_keys
    assert configured.tokens is not None
    assert (configured.tokens.issuer, configured.tokens.audience) == (ISSUER, AUDIENCE)


def test_a_jwks_setting_takes_a_file_or_a_url(tmp_path: Path) -> None:
    path = write(tmp_path, jwks(ed_signer()))
    from_file = settings(JWT_JWKS=str(path)).tokens
    assert from_file is not None and isinstance(from_file.keys, FileKeys)
    from_url = settings(JWT_JWKS="https://idp.example/jwks.json").tokens
    assert from_url is not None and isinstance(from_url.keys, RemoteKeys)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"JWT_SECRET": "s" * 31}, "IMAGESVC_JWT_SECRET must be at least 32 bytes"),
        (
            {"JWT_SECRET": SECRET, "JWT_JWKS": "https://idp.example/jwks.json"},
            "IMAGESVC_JWT_SECRET and IMAGESVC_JWT_JWKS exclude each other",
        ),
        ({"JWT_JWKS": "/nonexistent/jwks.json"}, "IMAGESVC_JWT_JWKS='/nonexistent/jwks.json'"),
        ({"JWT_ISSUER": ISSUER}, "need IMAGESVC_JWT_SECRET or IMAGESVC_JWT_JWKS"),
        ({"JWT_AUDIENCE": AUDIENCE}, "need IMAGESVC_JWT_SECRET or IMAGESVC_JWT_JWKS"),
    ],
)
def test_bad_jwt_settings_are_refused(variables: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        settings(**variables)
    assert "s" * 31 not in str(caught.value)  # a secret is never printed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not a JWKS"),
        ('{"keys": []}', "not a JWKS"),
        ('{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}', "holds no signing key"),
    ],
)
def test_a_jwks_file_without_usable_keys_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"IMAGESVC_JWT_JWKS=.*{message}"):
        settings(JWT_JWKS=str(path))


def test_an_unreadable_jwks_file_is_refused(tmp_path: Path) -> None:
    # A folder where the file should be: unreadable even to root, as the tests run.
    (tmp_path / "jwks.json").mkdir()
    with pytest.raises(ConfigError, match=r"IMAGESVC_JWT_JWKS=.*cannot be read"):
        settings(JWT_JWKS=str(tmp_path / "jwks.json"))
