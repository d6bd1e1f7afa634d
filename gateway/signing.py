"""Signed URLs: the exact scheme of issue 13 (written once, in common/urlsigning.py, so
clients sign with the code that verifies here), its keys, modes and checks.

The first key signs, every key verifies (so a new key can be put first while URLs signed
with the old one still work).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from common.caller import ADMIN, READ, WRITE, Caller
from common.env import ConfigError

# The scheme itself is common's, so clients sign with the very code that verifies here.
from common.urlsigning import EXP as EXP
from common.urlsigning import KID as KID
from common.urlsigning import SIG as SIG
from common.urlsigning import SIGNATURE_PARAMS as SIGNATURE_PARAMS
from common.urlsigning import SigningKey as SigningKey
from common.urlsigning import canonical as canonical
from common.urlsigning import quote as quote
from common.urlsigning import sign as sign
from common.urlsigning import signature as signature
from gateway.problems import HTTPProblem

MIN_SECRET = 32  # characters
# A kid travels in every URL: the characters quote keeps, so it reads the same signed.
_KID = re.compile(r"[A-Za-z0-9._~-]{1,64}")
_EXP = re.compile(r"[0-9]{1,12}")

Mode = Literal["off", "grant", "required"]

# Whoever holds a validly signed URL reads that URL's image, private or not: the
# signature names the image (its path), so this caller never reaches another one.
URL_HOLDER = Caller("", False, frozenset({READ, ADMIN}))


@dataclass(frozen=True)
class Signing:
    """The keys (the first signs) and what a signature is for; no keys: off."""

    keys: tuple[SigningKey, ...] = ()
    mode: Mode = "off"

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def asked(self, query: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The parameters that ask for something: where signing is on, all but kid, exp
        and sig (a signature never changes the variant); else all, so those are unknown."""
        if not self.enabled:
            return list(query)
        return [(name, value) for name, value in query if name not in SIGNATURE_PARAMS]


def parse_keys(items: Iterable[str]) -> tuple[SigningKey, ...]:
    """`KID:SECRET` items, secrets of MIN_SECRET or more characters, distinct kids."""
    keys: list[SigningKey] = []
    for item in items:
        kid, _, secret = item.partition(":")
        if not _KID.fullmatch(kid) or len(secret) < MIN_SECRET:
            raise ConfigError(
                "IMAGESVC_URL_SIGNING_KEYS takes KID:SECRET, comma-separated: kids of "
                "A-Z a-z 0-9 - . _ ~ (at most 64), secrets of "
                f"{MIN_SECRET} or more characters without ','"
            )
        if any(key.kid == kid for key in keys):
            raise ConfigError(f"IMAGESVC_URL_SIGNING_KEYS lists the kid {kid} twice")
        keys.append(SigningKey(kid, secret.encode()))
    return tuple(keys)


def parse_signing(keys: tuple[SigningKey, ...], mode: str | None) -> Signing:
    """The settings from the keys and IMAGESVC_SIGNATURES (None: not set)."""
    if mode is None:
        return Signing(keys, "grant" if keys else "off")
    if mode not in ("grant", "required"):
        raise ConfigError(f"IMAGESVC_SIGNATURES={mode!r} must be grant or required")
    if not keys:
        raise ConfigError("IMAGESVC_SIGNATURES needs IMAGESVC_URL_SIGNING_KEYS")
    return Signing(keys, "grant" if mode == "grant" else "required")


def refused(reason: str, detail: str) -> HTTPProblem:
    return HTTPProblem(
        403, "Forbidden", detail, kind=reason.lower().replace("_", "-"), reason=reason
    )


def is_signed(query: Iterable[tuple[str, str]]) -> bool:
    """Whether the query means to be signed (names any signature parameter)."""
    return any(name in SIGNATURE_PARAMS for name, _ in query)


def verify(
    path: str, query: Sequence[tuple[str, str]], keys: Sequence[SigningKey], now: float
) -> None:
    """Return when query signs path with one of keys and has not expired; else raise
    the 403 problem saying why (SIGNATURE_INVALID, SIGNATURE_EXPIRED, UNKNOWN_KEY)."""
    found: dict[str, str] = {}
    for name, value in query:
        if name in SIGNATURE_PARAMS:
            if name in found:
                raise refused("SIGNATURE_INVALID", f"{name} given more than once")
            found[name] = value
    if KID not in found:
        raise refused("SIGNATURE_INVALID", "a signed URL names its key with kid")
    key = next((k for k in keys if k.kid == found[KID]), None)  # kids are no secret
    if key is None:
        raise refused("UNKNOWN_KEY", "kid names no key this service has")
    given = found.get(SIG)
    expected = signature(key.secret, canonical(path, query))
    # Both as bytes: compare_digest takes str of ASCII alone, and sig is the caller's.
    if given is None or not hmac.compare_digest(expected.encode(), given.encode()):
        raise refused("SIGNATURE_INVALID", "the signature does not match the URL")
    exp = found.get(EXP)
    if exp is not None:
        if not _EXP.fullmatch(exp):
            raise refused("SIGNATURE_INVALID", "exp must be UNIX seconds, digits only")
        if now >= int(exp):
            raise refused("SIGNATURE_EXPIRED", "the signed URL has expired")


def preset_only(names: Collection[str]) -> bool:
    """Whether a named preset is all that is asked for: the operator chose its sizes, so
    it needs no signature."""
    return set(names) == {"preset"}


def may_render_unsigned(caller: Caller) -> bool:
    """A caller who may upload may ask for any size anyway. Where there are no API keys
    nobody is authenticated, so nobody may."""
    return caller.authenticated and caller.may(WRITE)


def reader(
    signing: Signing, path: str, query: Sequence[tuple[str, str]], caller: Caller, now: float
) -> Caller:
    """Who a read of path with query is made for: with a valid signature, whoever holds
    the URL; refused (403) for a bad signature, and in required mode for a transformation
    neither signed nor asked by a caller who may render unsigned."""
    if not signing.enabled:
        return caller  # kid, exp and sig are then unknown parameters, as before
    if is_signed(query):
        verify(path, query, signing.keys, now)
        return URL_HOLDER
    asked = {name for name, _ in query}
    if (
        signing.mode == "required"
        and asked
        and not preset_only(asked)
        and not may_render_unsigned(caller)
    ):
        raise refused(
            "SIGNATURE_REQUIRED", "transformations need a signed URL (or a key that may write)"
        )
    return caller
