"""Who is calling: an owner from an API key, or the anonymous caller."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from common.caller import ANONYMOUS, EVERYONE, Caller
from gateway.config import Settings
from gateway.problems import HTTPProblem


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def identify(request: Request, settings: Settings) -> Caller:
    """The caller; a key that is presented but unknown is refused, never ignored."""
    if not settings.auth_enabled:
        return EVERYONE
    key = _presented_key(request)
    if key is None:
        return ANONYMOUS
    for known, holder in settings.api_keys.items():
        if hmac.compare_digest(known.encode(), key.encode()):
            return Caller(holder.owner, True, holder.scopes)
    raise unauthenticated("the API key is not valid")


def unauthenticated(detail: str) -> HTTPProblem:
    return HTTPProblem(
        401,
        "Unauthenticated",
        detail,
        kind="unauthenticated",
        headers={"WWW-Authenticate": 'Bearer realm="imageservice"'},
    )


def require_writer(request: Request, settings: Settings) -> Caller:
    """Where auth is configured, writes need a valid key."""
    caller = identify(request, settings)
    if settings.auth_enabled and not caller.authenticated:
        raise unauthenticated("this needs an API key (Authorization: Bearer <key>)")
    return caller
