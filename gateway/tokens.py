"""JWT bearer tokens: who a token says its holder is, once PyJWT has checked it.

The key decides the algorithm, never the token: a shared secret verifies HS256 alone,
and each key of a JWKS its own algorithm (RS256, ES256 or EdDSA), so neither `alg:
none` nor an HS256 token "signed" with a published RSA key can pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

from common.caller import SCOPES, Caller

log = logging.getLogger("gateway")

LEEWAY_SECONDS = 30  # clocks of the issuer and the gateway disagree by this much
MIN_SECRET_BYTES = 32  # HS256's own output size; anything shorter is guessable sooner
MAX_OWNER = 128  # characters, as the cache service keeps owners
# What a JWKS key may sign with. HS256 is left out: a symmetric key in a published set
# would let anyone who can read the set sign.
JWKS_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
# A URL's set is fetched again after this long, and at most this often for a token
# naming a key the set lacks (a rotation), so unknown kids cannot hammer the issuer.
JWKS_LIFESPAN_SECONDS = 300.0
JWKS_COOLDOWN_SECONDS = 30.0
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
# How often a JWKS file is looked at for a change (rotation, revocation).
JWKS_FILE_CHECK_SECONDS = 1.0


class InvalidToken(Exception):
    """The token does not prove who its holder is; the message says why, for them."""


class KeysUnavailable(Exception):
    """The JWKS could not be fetched, so no token can be checked for now."""


class KeysError(ValueError):
    """A JWKS cannot be used at all (unreadable, not JSON, no usable key)."""


class KeySource(Protocol):
    async def key(self, kid: str | None) -> PyJWK | None:
        """The key named kid, or None when there is none."""


def _usable(keys: PyJWKSet) -> dict[str, PyJWK]:
    """The set's signing keys by kid: those of an accepted algorithm, named, for signing."""
    return {
        key.key_id: key
        for key in keys.keys
        if key.key_id
        and key.algorithm_name in JWKS_ALGORITHMS
        and key.public_key_use in (None, "sig")
    }


def parse_jwks(text: str) -> dict[str, PyJWK]:
    """A JWKS document's usable keys; KeysError if it has none."""
    try:
        keys = _usable(PyJWKSet.from_dict(json.loads(text)))
    except (ValueError, TypeError, AttributeError, jwt.PyJWTError) as exc:
        raise KeysError(f"not a JWKS ({exc})") from None
    if not keys:
        raise KeysError(
            "holds no signing key with a kid for RS256, ES256 or EdDSA (RSA, EC P-256, Ed25519)"
        )
    return keys


class FileKeys:
    """A JWKS file, read at start and again whenever it changes."""

    def __init__(self, path: Path, check_seconds: float = JWKS_FILE_CHECK_SECONDS) -> None:
        self.path = path
        self._check_seconds = check_seconds
        self._stamp = self._stat()
        self._keys = self._read()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int]:
        try:
            found = self.path.stat()
        except OSError as exc:
            raise KeysError(f"cannot be read ({exc.strerror})") from None
        return (found.st_mtime_ns, found.st_size, found.st_ino)

    def _read(self) -> dict[str, PyJWK]:
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeysError(f"cannot be read ({exc})") from None
        return parse_jwks(text)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._check_seconds:
            return
        self._checked = now
        try:
            stamp = self._stat()
            if stamp != self._stamp:
                self._keys, self._stamp = self._read(), stamp
        except KeysError as exc:
            # Half-written or briefly missing while replaced: the keys it had still hold.
            log.warning("JWKS file unusable, keeping its previous keys", extra={"err": str(exc)})

    async def key(self, kid: str | None) -> PyJWK | None:
        self._refresh()
        return self._keys.get(kid) if kid else None


class RemoteKeys:
    """A JWKS at an http(s) URL, through PyJWT's client: cached for a lifespan, fetched
    again early (once per cooldown) for a kid it lacks."""

    def __init__(
        self,
        url: str,
        lifespan: float = JWKS_LIFESPAN_SECONDS,
        cooldown: float = JWKS_COOLDOWN_SECONDS,
        timeout: float = JWKS_FETCH_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url
        self._client = PyJWKClient(
            url, lifespan=lifespan, cooldown_duration=cooldown, timeout=timeout
        )

    def _cached(self, kid: str) -> PyJWK | None:
        cache = self._client.jwk_set_cache
        keys = cache.get() if cache is not None else None
        return None if keys is None else _usable(keys).get(kid)

    def _fetched(self, kid: str) -> PyJWK | None:
        try:
            key = self._client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("JWKS fetch failed", extra={"url": self.url, "err": str(exc)})
            raise KeysUnavailable from None
        except (jwt.PyJWKClientError, jwt.PyJWKSetError):
            return None  # no such kid (or a set without usable keys): the token fails
        return key if key.algorithm_name in JWKS_ALGORITHMS else None

    async def key(self, kid: str | None) -> PyJWK | None:
        if not kid:
            return None
        # The cached set answers on the event loop; only a fetch goes to a thread
        # (PyJWT's client is synchronous).
        return self._cached(kid) or await asyncio.to_thread(self._fetched, kid)


def jwks_source(where: str) -> KeySource:
    """The key source a JWKS setting names: an http(s) URL, else a file path."""
    if where.startswith(("http://", "https://")):
        return RemoteKeys(where)
    return FileKeys(Path(os.path.expanduser(where)))


@dataclass(frozen=True)
class SecretKey:
    """A shared HS256 secret."""

    secret: bytes


_WHY: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is for another audience"),
    (jwt.InvalidIssuerError, "the token is from another issuer"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted for this key"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
)


class Tokens:
    """Checks bearer tokens and says whom they name."""

    def __init__(
        self, keys: SecretKey | KeySource, issuer: str | None = None, audience: str | None = None
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience

    async def _key(self, token: str) -> tuple[PyJWK | bytes, list[str]]:
        if isinstance(self.keys, SecretKey):
            return self.keys.secret, ["HS256"]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise InvalidToken("the credential is neither an API key nor a token") from None
        key = await self.keys.key(kid if isinstance(kid, str) else None)
        if key is None:
            raise InvalidToken("the token names no key of the JWKS (kid)")
        return key, [key.algorithm_name]

    async def caller(self, token: str) -> Caller:
        """The caller the token names; InvalidToken or KeysUnavailable otherwise."""
        key, algorithms = await self._key(token)
        required = (
            ["exp", "sub"] + (["iss"] if self.issuer else []) + (["aud"] if self.audience else [])
        )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_SECONDS,
                # An audience the gateway was not told to check is no reason to refuse.
                options={"require": required, "verify_aud": self.audience is not None},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token has no {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            why = next((words for kind, words in _WHY if isinstance(exc, kind)), None)
            raise InvalidToken(why or "the credential is neither an API key nor a token") from None
        owner, scope = claims.get("sub"), claims.get("scope", "")
        if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER:
            raise InvalidToken(f"the token's sub must be 1-{MAX_OWNER} characters")
        if not isinstance(scope, str):
            raise InvalidToken("the token's scope must be a space-separated string")
        # Scopes meant for other services are none of ours.
        return Caller(owner, True, frozenset(scope.split()) & SCOPES)
