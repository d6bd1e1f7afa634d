"""Signed URLs made on the client's side, with a key the service has
(IMAGESVC_URL_SIGNING_KEYS): the scheme of common/urlsigning.py, the very code the
gateway verifies with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from common.urlsigning import SIGNATURE_PARAMS, SigningKey, sign
from imagesvc.urls import Params, query


@dataclass(frozen=True)
class Signer:
    """Signs URLs with one key: `Signer("k1", secret).sign(url, expires_in=3600)`."""

    kid: str
    secret: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Signer:
        """From `KID:SECRET`, as IMAGESVC_URL_SIGNING_KEYS writes one key."""
        kid, sep, secret = text.partition(":")
        if not sep or not kid or not secret:
            raise ValueError("a signing key is KID:SECRET")
        return cls(kid, secret.encode())

    def sign(
        self,
        url: str,
        params: Params | None = None,
        *,
        expires_in: float | None = None,
        expires: int | None = None,
        now: float | None = None,
    ) -> str:
        """url (a path such as `/images/ID`, or an absolute URL, with a query or not)
        with params added, signed: it reads the image until `expires` (UNIX seconds), or
        `expires_in` seconds from now, or for good when neither is given. What is signed
        is the URL's path, as the gateway sees it."""
        parts = urlsplit(url)
        given = parse_qsl(parts.query, keep_blank_values=True)
        if any(name in SIGNATURE_PARAMS for name, _ in given) or (
            params and SIGNATURE_PARAMS & set(params)
        ):
            raise ValueError("the URL is signed already (kid, exp or sig)")
        pairs = [*given, *query(params or {})]
        if expires is None and expires_in is not None:
            expires = int((time.time() if now is None else now) + expires_in)
        signed = sign(parts.path, pairs, SigningKey(self.kid, self.secret), expires)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, signed, ""))
