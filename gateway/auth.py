"""Who is calling: an owner from an API key or a JWT, or the anonymous caller."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from common.caller import ANONYMOUS, EVERYONE, WRITE, Caller
from gateway.config import Settings
from gateway.problems import HTTPProblem
from gateway.tokens import InvalidToken, KeysUnavailable


def _presented(request: Request) -> tuple[str | None, bool]:
    """The credential presented, and whether it came as a Bearer one (only those may be
    tokens)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), True
    return request.headers.get("x-api-key") or None, False


async def identify(request: Request, settings: Settings) -> Caller:
    """The caller; a credential that is presented but not valid is refused, never
    ignored."""
    if not settings.auth_enabled:
        return EVERYONE
    credential, bearer = _presented(request)
    if credential is None:
        return ANONYMOUS
    for known, holder in settings.api_keys.items():
        if hmac.compare_digest(known.encode(), credential.encode()):
            return Caller(holder.owner, True, holder.scopes)
    if bearer and settings.tokens is not None:
        try:
            return await settings.tokens.caller(credential)
        except InvalidToken as exc:
            raise unauthenticated(str(exc)) from None
        except KeysUnavailable:
            retry = settings.retry_after_seconds
            raise HTTPProblem(
                503,
                "Service unavailable",
                f"the keys that verify tokens cannot be fetched; retry after {retry} s",
                kind="unavailable",
                headers={"Retry-After": str(retry)},
            ) from None
    raise unauthenticated("the API key is not valid")


def unauthenticated(detail: str) -> HTTPProblem:
    return HTTPProblem(
        401,
        "Unauthenticated",
        detail,
        kind="unauthenticated",
        headers={"WWW-Authenticate": 'Bearer realm="imageservice"'},
    )


def forbidden(detail: str) -> HTTPProblem:
    return HTTPProblem(403, "Forbidden", detail, kind="forbidden")


async def require(request: Request, settings: Settings, scope: str) -> Caller:
    """The caller, who must be authenticated (where auth is configured) and hold scope."""
    caller = await identify(request, settings)
    if settings.auth_enabled and not caller.authenticated:
        raise unauthenticated("this needs an API key or a token (Authorization: Bearer ...)")
    if not caller.may(scope):
        raise forbidden(f"this needs the {scope} scope")
    return caller


async def require_writer(request: Request, settings: Settings) -> Caller:
    """Where auth is configured, uploads need a valid credential with images:write."""
    return await require(request, settings, WRITE)
