"""The image routes: upload, list, original or variant, info, delete, the blur endpoint."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from typing import Any, TypeVar, cast

import grpc
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import image_pb2
from imageservice.v1 import processor_service_pb2 as ppb
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from common.caller import DELETE, READ, Caller, can_read
from common.grpcclient import call_metadata
from common.hotcache import HotCache
from common.ids import ImageId, parse_image_id
from gateway import openapi, params, signing
from gateway.answers import MAX_ENTRY_BYTES, Entry, answer_key, from_memory, not_modified
from gateway.auth import forbidden, identify, require, require_writer
from gateway.config import Settings
from gateway.observability import Metrics
from gateway.problems import HTTPProblem
from gateway.problems import not_found as named_not_found
from gateway.ratelimit import Limiter, Standing, caller_key
from gateway.uploads import upload
from gateway.upstream import Upstream

IMMUTABLE = "max-age=31536000, immutable"
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
MAX_FILENAME = 255  # characters, as the cache service keeps them


def settings_of(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def upstream_of(request: Request) -> Upstream:
    return cast(Upstream, request.state.upstream)


def metrics_of(request: Request) -> Metrics:
    return cast(Metrics, request.app.state.metrics)


def params_of(request: Request) -> params.Parameters:
    return cast(params.Parameters, request.app.state.params)


def limiter_of(request: Request) -> Limiter:
    return cast(Limiter, request.state.limiter)


def hot_of(request: Request) -> HotCache[Entry]:
    return cast(HotCache[Entry], request.state.hot)


def not_found() -> HTTPProblem:
    return HTTPProblem(404, "Not found", "no such image", kind="not-found")


def image_id_of(request: Request) -> ImageId:
    try:
        return parse_image_id(request.path_params["image_id"])
    except ValueError:
        raise not_found() from None  # a malformed id names no image: same answer


def image_json(image: image_pb2.ImageMetadata) -> dict[str, Any]:
    created = image.created_time.ToDatetime(tzinfo=UTC)
    return {
        "id": image.id,
        "url": f"/images/{image.id}",
        "filename": image.original_filename,
        "media_type": image.media_type,
        "format": image.format,
        "width": image.width,
        "height": image.height,
        "frames": image.frames,
        "bytes": image.byte_size,
        "sha256": image.sha256,
        "created": created.isoformat().replace("+00:00", "Z"),
        "owner": image.owner,
        "visibility": "public" if image.visibility == image_pb2.VISIBILITY_PUBLIC else "private",
        # Placeholders to show while the image loads; null for an image stored before
        # they were made. ThumbHash in standard base64, as its decoders take it.
        "blurhash": image.blurhash or None,
        "thumbhash": base64.b64encode(image.thumbhash).decode() if image.thumbhash else None,
    }


def _cache_control(image_visibility: int) -> str:
    scope = "public" if image_visibility == image_pb2.VISIBILITY_PUBLIC else "private"
    return f"{scope}, {IMMUTABLE}"


def _scoped(image: image_pb2.ImageMetadata, caller: Caller) -> image_pb2.ImageMetadata:
    """image, once the caller's scopes let them read it.

    The cache service lets an owner read their own images (it knows owners, not
    scopes), so a private image it answered is the caller's own or they are an admin:
    only the images:read scope is left to check, and refusing that tells nothing.
    """
    private = image.visibility != image_pb2.VISIBILITY_PUBLIC
    if private and not caller.admin and not caller.may(READ):
        raise forbidden(f"reading a private image needs the {READ} scope")
    return image


async def _stat(request: Request, image_id: str, caller: Caller) -> image_pb2.ImageMetadata:
    """The image's metadata; NOT_FOUND too when the caller may not see it."""
    settings = settings_of(request)
    answer = await upstream_of(request).cache.StatImage(
        pb.StatImageRequest(id=image_id),
        timeout=settings.timeout_seconds,
        metadata=call_metadata() + caller.metadata(),
    )
    return answer.image


async def readable(request: Request, named: list[tuple[str, str]], caller: Caller) -> bool:
    """Check that the caller may read every other image the query names (a watermark's,
    see Parameters.images) exactly as they must the image itself (_stat, _scoped), on
    every request, answers from memory included: a missing or hidden one is the same
    404, naming the parameter. Whether any of them is private."""
    private = False
    for name, image_id in named:
        try:
            image = _scoped(await _stat(request, image_id, caller), caller)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise named_not_found(name) from None
            raise
        private = private or image.visibility != image_pb2.VISIBILITY_PUBLIC
    return private


EOF = grpc.aio.EOF  # type: ignore[attr-defined]
M = TypeVar("M")


async def _first(call: Any, kind: type[M], deadline_seconds: float) -> M:
    """The stream's first message (the metadata), within the deadline.

    Streams get no gRPC deadline of their own: it would also cut off a slow client
    halfway through the body. The wait for each message is bounded instead.
    """
    try:
        message = await asyncio.wait_for(call.read(), deadline_seconds)
    except TimeoutError:
        call.cancel()
        raise HTTPProblem(504, "Upstream timed out", kind="timeout") from None
    except BaseException:
        call.cancel()
        raise
    if message is EOF:
        raise HTTPProblem(502, "Bad gateway", kind="upstream-error")
    return cast(M, message)


async def _body(call: Any | None, idle_seconds: float, head: bytes) -> AsyncIterator[bytes]:
    """head (bytes that came with the first message), then the rest of the stream (no
    call: head is the whole body)."""
    try:
        if head:
            yield head
        if call is None:
            return
        while (message := await asyncio.wait_for(call.read(), idle_seconds)) is not EOF:
            yield message.chunk
    finally:
        _hang_up(call)  # a client that went away, or an upstream that stalled


def _hang_up(call: Any | None) -> None:
    if call is not None:
        call.cancel()


def _answer(
    request: Request,
    call: Any | None,
    headers: dict[str, str],
    media_type: str,
    size: int,
    head: bytes,
) -> Response:
    """304, a HEAD answer or the streamed body, with the same validators on each."""
    if not_modified(request.headers.get("if-none-match"), headers["ETag"]):
        _hang_up(call)
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(size)
    if request.method == "HEAD":
        _hang_up(call)
        return Response(headers=headers, media_type=media_type)
    idle = settings_of(request).timeout_seconds
    return StreamingResponse(_body(call, idle, head), headers=headers, media_type=media_type)


async def _answer_and_keep(
    request: Request,
    call: Any | None,
    headers: dict[str, str],
    media_type: str,
    size: int,
    keep: tuple[str, str, str, int] | None,
    head: bytes = b"",
    shared: bool = False,
) -> Response:
    """Like _answer; small bodies are read whole and kept in the hot cache (shared: for
    any caller who presents no credential, see Entry.shared)."""
    hot = hot_of(request)
    if keep is None or size > MAX_ENTRY_BYTES or not hot.enabled or request.method != "GET":
        return _answer(request, call, headers, media_type, size, head)
    if not_modified(request.headers.get("if-none-match"), headers["ETag"]):
        _hang_up(call)
        return Response(status_code=304, headers=headers)
    idle = settings_of(request).timeout_seconds
    body = b"".join([chunk async for chunk in _body(call, idle, head)])
    image_id, key, owner, visibility = keep
    entry = Entry(body, media_type, dict(headers), owner, visibility, shared)
    hot.put(image_id, key, entry, request.state.hot_generation)
    return Response(body, headers=headers, media_type=media_type)


async def get_image(request: Request) -> Response:
    """The original, or with transformation parameters a variant."""
    image_id = image_id_of(request)
    query = list(request.query_params.multi_items())
    caller = await _reader(request, f"/images/{image_id}", query)
    asked = settings_of(request).signing.asked(query)
    presets = settings_of(request).presets
    # A watermark (wm) is checked before any answer, from memory included: an entry is
    # held under the image's owner, and the watermark may be gone since it was made.
    named = params_of(request).images(presets.expand(asked))
    private = await readable(request, named, caller) if named else False
    key = answer_key(request.scope["query_string"], request.headers.get("accept", ""))
    hot = hot_of(request)
    request.state.hot_generation = hot.generation  # a put after a watch gap is refused
    entry = hot.get(image_id, key)
    # An answer held for its owner is no answer for another caller: theirs is asked of
    # the cache service like any miss, so it reads, and takes as long, as a missing id's.
    if entry is not None and can_read(entry.owner, entry.visibility, caller):
        if key:
            metrics = metrics_of(request)
            metrics.tally.inc(metrics.variants.labels("gateway"))
        return from_memory(entry, request.method, request.headers.get("if-none-match"))
    wanted = presets.parse(asked, params_of(request), request.headers.get("accept", ""))
    if wanted is None:
        return await _original(request, image_id, caller, key)
    return await _variant(request, image_id, caller, wanted, key, private, draws=bool(named))


async def get_blurred(request: Request) -> Response:
    """The original service's blur endpoint, kept for its clients."""
    image_id = image_id_of(request)
    query = list(request.query_params.multi_items())
    params.only(name for name, _ in settings_of(request).signing.asked(query))
    caller = await _reader(request, f"/blurred-images/{image_id}", query)
    return await _variant(request, image_id, caller, params_of(request).blurred(), None)


async def _reader(request: Request, path: str, query: list[tuple[str, str]]) -> Caller:
    """The caller, or whoever holds a validly signed URL; checked before anything is
    answered, from memory included (an expired signature is refused even there).

    path is built from the image id the route serves, never taken from the request's
    URL: a URL rebuilt from a Host header an attacker wrote could name another image
    than the one served.
    """
    settings = settings_of(request)
    caller = await identify(request, settings)
    return signing.reader(settings.signing, path, query, caller, time.time())


async def _original(request: Request, image_id: str, caller: Caller, key: str) -> Response:
    settings = settings_of(request)
    call = upstream_of(request).cache.GetImage(
        pb.GetImageRequest(id=image_id), metadata=call_metadata() + caller.metadata()
    )
    image = (await _first(call, pb.GetImageResponse, settings.timeout_seconds)).image
    try:
        _scoped(image, caller)
    except HTTPProblem:
        _hang_up(call)
        raise
    headers = {"ETag": f'"{image.sha256}"', "Cache-Control": _cache_control(image.visibility)}
    keep = (image_id, key, image.owner, int(image.visibility))
    shared = image.visibility == image_pb2.VISIBILITY_PUBLIC
    return await _answer_and_keep(
        request, call, headers, image.media_type, image.byte_size, keep, shared=shared
    )


async def _variant(
    request: Request,
    image_id: str,
    caller: Caller,
    wanted: params.Transformation,
    key: str | None,
    private: bool = False,
    draws: bool = False,
) -> Response:
    """A variant; draws: it draws another image (a watermark), private: a private one,
    so it is cached as private as the image itself is (in shared caches and in memory)."""
    settings = settings_of(request)
    visibility: int = image_pb2.VISIBILITY_PUBLIC
    owner = ""
    if settings.auth_enabled:  # private images exist only where there are owners
        image = _scoped(await _stat(request, image_id, caller), caller)
        visibility, owner = image.visibility, image.owner
    if private:
        visibility = image_pb2.VISIBILITY_PRIVATE
    # A render's cost is known only once the processor has answered (a hit costs
    # nothing): the budget is looked at before asking, and spent after a miss. So a
    # caller with nothing left is refused what the gateway cannot answer from memory,
    # and concurrent misses may pass the budget by as many as are in flight.
    budget, standing = settings.render_budget, None
    if budget is not None:
        who = caller_key(request, caller, settings.trusted_proxies)
        standing = await limiter_of(request).check(budget, who)
    processor = upstream_of(request).processor
    transformation = ppb.Transformation(operations=wanted.operations, output=wanted.output)
    # No gRPC deadline: it would also cut a slow client off mid-body. The processor is
    # told how long we wait for the first message instead (it waits for another
    # replica's render for half of that), and _first bounds that wait here too.
    request_message = ppb.ProcessRequest(image_id=image_id, transformation=transformation)
    request_message.render_timeout.FromTimedelta(timedelta(seconds=settings.timeout_seconds))
    call = processor.Process(request_message, metadata=call_metadata())
    try:
        first = await _first(call, ppb.ProcessResponse, settings.timeout_seconds)
    except (grpc.aio.AioRpcError, HTTPProblem):
        # A render that failed or ran out of time cost what a miss does: it spends too.
        if budget is not None:
            await limiter_of(request).spend(budget, who, refuse=False)
        raise
    variant, head, cache_hit = first.variant, first.chunk, first.cache_hit
    served = "hit" if cache_hit else "miss"
    metrics_of(request).variants.labels(served).inc()
    if budget is not None and not cache_hit:
        standing = await limiter_of(request).spend(budget, who, refuse=False)
    headers = {
        "ETag": f'"{variant.sha256}"',
        "Cache-Control": _cache_control(visibility),
        "X-Cache": served.upper(),
    }
    if wanted.negotiated:
        headers["Vary"] = "Accept"
    keep = None if key is None else (image_id, key, owner, visibility)
    shared = visibility == image_pb2.VISIBILITY_PUBLIC and not draws
    response = await _answer_and_keep(
        request, call, headers, variant.media_type, variant.byte_size, keep, head, shared
    )
    return _with_standing(response, standing)


def _with_standing(response: Response, standing: Standing | None) -> Response:
    """response with the RateLimit headers of the budget it counted against (added
    after the hot cache took its copy: they are this caller's, and of this moment)."""
    if standing is not None:
        response.headers.update(standing.headers())
    return response


async def list_presets(request: Request) -> Response:
    """GET /presets: each preset's parameters, as the presets file gives them."""
    params.only(request.query_params)
    listing = settings_of(request).presets.listing
    return JSONResponse({name: dict(values) for name, values in listing.items()})


async def get_info(request: Request) -> Response:
    image_id = image_id_of(request)
    caller = await identify(request, settings_of(request))
    image = _scoped(await _stat(request, image_id, caller), caller)
    body = json.dumps(image_json(image), separators=(",", ":")).encode()
    headers = {
        "ETag": f'"info-{hashlib.sha256(body).hexdigest()[:32]}"',
        "Cache-Control": "private, no-cache",
    }
    if not_modified(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return Response(body, headers=headers, media_type="application/json")


async def post_image(request: Request) -> Response:
    settings = settings_of(request)
    caller = await require_writer(request, settings)
    params.only(request.query_params, ("visibility", "filename"))
    default = "private" if settings.auth_enabled else "public"
    chosen = request.query_params.get("visibility", default)
    if chosen not in ("public", "private"):
        raise params.bad("visibility", "must be public or private")
    if len(request.query_params.get("filename", "")) > MAX_FILENAME:
        # Checked here as a parameter: a multipart body's own name is the cache's to check.
        raise params.bad("filename", f"longer than {MAX_FILENAME} characters")
    standing = None
    if settings.upload_budget is not None:
        # Every attempt counts, valid or not: validating it is the work being limited.
        who = caller_key(request, caller, settings.trusted_proxies)
        standing = await limiter_of(request).spend(settings.upload_budget, who)
    image = await upload(
        request,
        upstream_of(request),
        caller=caller,
        visibility=image_pb2.VISIBILITY_PUBLIC
        if chosen == "public"
        else image_pb2.VISIBILITY_PRIVATE,
        limit=settings.max_upload_bytes,
        idle_seconds=settings.timeout_seconds,
        total_seconds=settings.upload_timeout_seconds,
    )
    response = JSONResponse(
        image_json(image), status_code=201, headers={"Location": f"/images/{image.id}"}
    )
    return _with_standing(response, standing)


async def list_images(request: Request) -> Response:
    settings = settings_of(request)
    caller = await identify(request, settings)
    if caller.authenticated and not caller.may(READ):
        raise forbidden(f"listing one's images needs the {READ} scope")
    params.only(request.query_params, ("limit", "cursor", "sha256"))
    raw = request.query_params.get("limit", str(LIST_LIMIT_DEFAULT))
    if not re.fullmatch(r"[0-9]{1,3}", raw) or not 1 <= int(raw) <= LIST_LIMIT_MAX:
        raise params.bad("limit", f"must be between 1 and {LIST_LIMIT_MAX}")
    cursor = request.query_params.get("cursor")
    if cursor is not None and not re.fullmatch(params.CURSOR, cursor):
        raise params.bad("cursor", "not a cursor this service gave out")
    # A lookup by content: the caller's own images of these bytes (scoped as any list).
    sha256 = request.query_params.get("sha256", "")
    if "sha256" in request.query_params and not re.fullmatch(params.SHA256, sha256):
        raise params.bad("sha256", "must be 64 lower-case hex digits")
    try:
        page = await upstream_of(request).cache.ListImages(
            pb.ListImagesRequest(
                owner=caller.owner, page_size=int(raw), page_token=cursor or "", sha256=sha256
            ),
            timeout=settings.timeout_seconds,
            metadata=call_metadata() + caller.metadata(),
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise params.bad("cursor", "not a cursor this service gave out") from None
        raise
    body = {
        "images": [image_json(image) for image in page.images],
        "next_cursor": page.next_page_token or None,
    }
    headers = {"Cache-Control": "no-store"}
    if page.next_page_token:
        also = f"&sha256={sha256}" if sha256 else ""
        link = f"/images?limit={raw}{also}&cursor={page.next_page_token}"
        headers["Link"] = f'<{link}>; rel="next"'
    return JSONResponse(body, headers=headers)


async def delete_image(request: Request) -> Response:
    settings = settings_of(request)
    caller = await require(request, settings, DELETE)
    image_id = image_id_of(request)
    if settings.auth_enabled:
        image = await _stat(request, image_id, caller)  # 404 for one the caller cannot see
        if image.owner != caller.owner and not caller.admin:
            raise forbidden("only the owner may delete it")
    await upstream_of(request).cache.DeleteImage(
        pb.DeleteImageRequest(id=image_id),
        timeout=settings.timeout_seconds,
        metadata=call_metadata() + caller.metadata(),
    )
    # This process forgets at once; the others hear of it through WatchDeletions.
    hot_of(request).forget(image_id)
    return Response(status_code=204)


# The endpoints: Starlette dispatches on the method, answering 405 with Allow itself
# (HEAD goes to get). Each describes its path for openapi.document.


class Images(HTTPEndpoint):
    """/images: the caller's images (GET), an upload (POST)."""

    async def get(self, request: Request) -> Response:
        return await list_images(request)

    async def post(self, request: Request) -> Response:
        return await post_image(request)

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        return {
            "post": {
                "summary": "Upload an image",
                "description": "multipart/form-data with a `file` field, or the raw bytes "
                "with an image/* Content-Type. Streamed; refused with 413 as soon as the "
                "byte limit is passed.",
                "parameters": [
                    {
                        "name": "visibility",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["public", "private"]},
                        "description": "Default: private where auth is configured, else public.",
                    },
                    {
                        "name": "filename",
                        "in": "query",
                        "schema": {"type": "string", "maxLength": MAX_FILENAME},
                        "description": "Original filename for raw uploads.",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "file": {"type": "string", "format": "binary", "minLength": 1}
                                },
                                "required": ["file"],
                            }
                        },
                        "image/*": {
                            "schema": {"type": "string", "format": "binary", "minLength": 1}
                        },
                    },
                },
                "responses": {
                    "201": {
                        **openapi.IMAGE_JSON,
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    **openapi.errors(400, 401, 403, 408, 413, 415, 422, 429, 503, 504, 507),
                },
            },
            "get": {
                "summary": "The caller's images, newest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT_MAX},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string", "pattern": f"^{params.CURSOR}$"},
                        "description": "Where the page starts: an opaque value, the previous "
                        "page's next_cursor (also in its Link header). Any value of this shape "
                        "is a position in the caller's own list.",
                    },
                    {
                        "name": "sha256",
                        "in": "query",
                        "schema": {"type": "string", "pattern": f"^{params.SHA256}$"},
                        "description": "Only the caller's images whose original has this "
                        "SHA-256 (lower-case hex, as `sha256` in the metadata): a lookup by "
                        "content, e.g. to skip an upload already stored. Others' images are "
                        "never found.",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "A page of images.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "images": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Image"},
                                        },
                                        "next_cursor": {"type": ["string", "null"]},
                                    },
                                }
                            }
                        },
                    },
                    **openapi.errors(400, 401, 403, 503, 504),
                },
            },
        }


class Image(HTTPEndpoint):
    """/images/{image_id}: the original or a variant (GET, HEAD), deletion (DELETE)."""

    async def get(self, request: Request) -> Response:
        return await get_image(request)

    async def delete(self, request: Request) -> Response:
        return await delete_image(request)

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        get = {
            "summary": "The original, or with transformation parameters a variant",
            "parameters": [openapi.ID, *context.transform(), *context.signature()],
            "responses": {
                "200": openapi.IMAGE_BYTES,
                "304": {"description": "Not modified (If-None-Match matched the ETag)."},
                **openapi.errors(400, 401, 403, 404, 413, 422, 429, 503, 504),
            },
        }
        return {
            "get": get,
            "head": {**get, "summary": "Headers of GET /images/{image_id}"},
            "delete": {
                "summary": "Delete the image and all its variants",
                "parameters": [openapi.ID],
                "responses": {
                    "204": {"description": "Deleted."},
                    **openapi.errors(401, 403, 404, 503, 504),
                },
            },
        }


class ImageInfo(HTTPEndpoint):
    """/images/{image_id}/info: the image's metadata."""

    async def get(self, request: Request) -> Response:
        return await get_info(request)

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        return {
            "get": {
                "summary": "Metadata",
                "parameters": [openapi.ID],
                "responses": {
                    "200": openapi.IMAGE_JSON,
                    **openapi.errors(401, 403, 404, 503, 504),
                },
            }
        }


class BlurredImage(HTTPEndpoint):
    """/blurred-images/{image_id}: the original service's blur endpoint."""

    async def get(self, request: Request) -> Response:
        return await get_blurred(request)

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        return {
            "get": {
                "summary": "The image blurred (sigma 10), as the original service had it",
                "parameters": [openapi.ID, *context.signature()],
                "responses": {
                    "200": openapi.IMAGE_BYTES,
                    **openapi.errors(400, 401, 403, 404, 429, 503, 504),
                },
            }
        }


class PresetList(HTTPEndpoint):
    """/presets: the configured presets."""

    async def get(self, request: Request) -> Response:
        return await list_presets(request)

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        values = {"type": "object", "properties": context.values(), "additionalProperties": False}
        return {
            "get": {
                "summary": "The presets: each one's name and transformation parameters",
                "responses": {
                    "200": {
                        "description": "Preset name to its parameters (empty when none are "
                        "configured).",
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "additionalProperties": values}
                            }
                        },
                    },
                    **openapi.errors(400),
                },
            }
        }
