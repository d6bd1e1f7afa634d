"""The signed-URL scheme itself (issue 13), pure: what the gateway verifies and what any
client signs with, importing neither Starlette nor gRPC.

For a GET of path P with query parameters Q (including kid=KID and an optional
exp=UNIX_SECONDS, excluding sig):

    canonical = P + "?" + "&".join(sorted(quote(name) + "=" + quote(value)))
    sig = base64url_without_padding(HMAC-SHA256(SECRET, canonical))

where quote keeps A-Z a-z 0-9 - . _ ~ and writes every other byte of the UTF-8 text as
%XX (uppercase), the pairs are sorted as encoded strings, and a flag's value is "".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote as _urlquote

KID, EXP, SIG = "kid", "exp", "sig"
SIGNATURE_PARAMS = frozenset({KID, EXP, SIG})


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: bytes = field(repr=False)  # a secret is never printed


def quote(text: str) -> str:
    """Every byte of the UTF-8 text but A-Z a-z 0-9 - . _ ~ as %XX, uppercase."""
    # urllib's always-safe set is exactly those; safe="" adds nothing (not even "/").
    return _urlquote(text, safe="", encoding="utf-8", errors="strict")


def canonical(path: str, query: Iterable[tuple[str, str]]) -> str:
    """What is signed: the path and every parameter but sig, encoded and sorted."""
    pairs = sorted(quote(name) + "=" + quote(value) for name, value in query if name != SIG)
    return path + "?" + "&".join(pairs)


def signature(secret: bytes, text: str) -> str:
    digest = hmac.new(secret, text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(
    path: str, params: Sequence[tuple[str, str]], key: SigningKey, expires: int | None = None
) -> str:
    """The query string (no "?") of a signed URL of path: params, kid, exp if given, sig."""
    names = {name for name, _ in params}
    if names & SIGNATURE_PARAMS:
        raise ValueError(f"{', '.join(sorted(names & SIGNATURE_PARAMS))}: the signature's own")
    query = [*params, (KID, key.kid)]
    if expires is not None:
        query.append((EXP, str(expires)))
    query.append((SIG, signature(key.secret, canonical(path, query))))
    return "&".join(quote(name) + "=" + quote(value) for name, value in query)
