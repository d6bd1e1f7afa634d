"""POST /images/{id}/signed-urls: a signed URL of one image, for those who may share it."""

from __future__ import annotations

import json
import time
from typing import Any

from imageservice.v1 import cache_service_pb2 as pb
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.caller import WRITE
from common.grpcclient import call_metadata
from gateway import images, openapi, params, signing
from gateway.auth import require_writer
from gateway.problems import HTTPProblem

DEFAULT_EXPIRES_IN = 3600
# A URL outlives every check made when it was given out (the image may turn private,
# its owner lose their key): a week at most, then ask again.
MAX_EXPIRES_IN = 7 * 24 * 3600
MAX_BODY_BYTES = 64 * 1024


def _bad_body(detail: str) -> HTTPProblem:
    return HTTPProblem(400, "Bad request", detail, kind="bad-request")


def forbidden(detail: str) -> HTTPProblem:
    return HTTPProblem(403, "Forbidden", detail, kind="forbidden")


async def _json(request: Request) -> Any:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPProblem(
                413,
                "Content too large",
                f"the body is over {MAX_BODY_BYTES} bytes",
                kind="payload-too-large",
            )
    try:
        return json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise _bad_body('the body must be JSON: {"params": {...}, "expires_in": 3600}') from None


def _query_value(name: str, value: Any) -> str:
    """A JSON value as it is written in a query: a flag that is true is given bare."""
    if isinstance(value, bool):
        return "" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # JSON's 300.0 is the integer 300 (and w takes digits)
    if isinstance(value, str | int | float):
        return str(value)
    raise params.bad(name, "must be a string, a number or a boolean")


def _request(body: Any) -> tuple[list[tuple[str, str]], int]:
    """The transformation parameters and the lifetime the body asks for."""
    if not isinstance(body, dict):
        raise _bad_body("the body must be a JSON object")
    unknown = set(body) - {"params", "expires_in"}
    if unknown:
        raise _bad_body(f"unknown member {sorted(unknown)[0]!r}: give params and expires_in")
    asked = body.get("params", {})
    if not isinstance(asked, dict):
        raise _bad_body("params must be an object of query parameter names and values")
    for name in asked:
        if name in signing.SIGNATURE_PARAMS:
            raise params.bad(name, "the signature's own, not a transformation parameter")
    query = [(name, _query_value(name, value)) for name, value in asked.items()]
    expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN)
    if isinstance(expires_in, float) and expires_in.is_integer():
        expires_in = int(expires_in)  # JSON's 60.0 is the integer 60
    if type(expires_in) is not int or not 1 <= expires_in <= MAX_EXPIRES_IN:
        raise params.bad("expires_in", f"must be whole seconds between 1 and {MAX_EXPIRES_IN}")
    return query, expires_in


async def post_signed_url(request: Request) -> Response:
    """A URL that reads the image with these parameters until it expires, whoever holds
    it: for the image's owner with images:write, or images:admin with it."""
    settings = images.settings_of(request)
    caller = await require_writer(request, settings)
    image_id = images.image_id_of(request)
    query, expires_in = _request(await _json(request))
    images.params_of(request).parse(query, "")  # a URL that could only fail is not given
    # Whoever holds the URL reads what it names: a watermark (wm) too, so its signer must
    # be allowed to read that (the same 404 as a missing one otherwise).
    await images.readable(request, images.params_of(request).images(query), caller)
    image = (
        await images.upstream_of(request).cache.StatImage(
            pb.StatImageRequest(id=image_id),
            timeout=settings.timeout_seconds,
            metadata=call_metadata() + caller.metadata(),
        )
    ).image  # NOT_FOUND too for an image the caller cannot see
    if image.owner != caller.owner and not caller.admin:
        raise forbidden("only the image's owner (or images:admin) may sign URLs of it")
    if not caller.may(WRITE):
        raise forbidden("signing URLs needs images:write")
    if settings.signing.mode == "required" and not signing.may_render_unsigned(caller):
        # Without API keys everyone is this caller: the route would sign for anyone.
        raise forbidden("in required mode, signing URLs needs an API key with images:write")
    expires = int(time.time()) + expires_in
    path = f"/images/{image_id}"
    signed = signing.sign(path, query, settings.signing.keys[0], expires)
    return JSONResponse(
        {"url": f"{path}?{signed}", "expires": expires}, headers={"Cache-Control": "no-store"}
    )


class SignedUrls(HTTPEndpoint):
    """/images/{image_id}/signed-urls, which exists where signing is on."""

    async def post(self, request: Request) -> Response:
        return await post_signed_url(request)

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        return {
            "post": {
                "summary": "A signed URL of the image (its owner with images:write, or an admin)",
                "parameters": [openapi.ID],
                "requestBody": {
                    "required": False,  # none: the original, for an hour
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "params": {
                                        "type": "object",
                                        "description": "Transformation parameters, as in the "
                                        "query of GET /images/{image_id}; a flag is true.",
                                        "properties": context.values(),
                                        "additionalProperties": False,
                                    },
                                    "expires_in": {
                                        "type": "integer",
                                        "minimum": 1,
                                        "maximum": MAX_EXPIRES_IN,
                                        "default": DEFAULT_EXPIRES_IN,
                                    },
                                },
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The URL (path and query) and when it expires.",
                        "headers": {"Cache-Control": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "url": {"type": "string"},
                                        "expires": {"type": "integer"},
                                    },
                                    "required": ["url", "expires"],
                                }
                            }
                        },
                    },
                    **openapi.errors(400, 401, 403, 404, 413, 503, 504),
                },
            }
        }
