"""Uploads streamed from HTTP to the cache service's PutImage, never held whole.

Raw bodies go chunk by chunk; multipart bodies go through python-multipart's push
parser, which hands over the `file` field's bytes as they arrive. Passing the byte
limit cancels the gRPC call at once (the cache service then drops what it staged)
and the caller gets 413 without the gateway reading the rest.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import image_pb2
from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from common.caller import Caller
from common.grpcclient import call_metadata
from gateway.problems import HTTPProblem
from gateway.upstream import Upstream

MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file's bytes
MAX_BOUNDARY = 70  # RFC 2046
RAW_TYPES = ("image/", "application/octet-stream")


def upload_too_large(limit: int) -> HTTPProblem:
    return HTTPProblem(
        413,
        "Content too large",
        f"uploads are limited to {limit} bytes",
        kind="payload-too-large",
        limit=limit,
    )


class _FilePart:
    """Feeds a multipart body through the parser and collects the `file` field's bytes."""

    def __init__(self, boundary: bytes) -> None:
        self.filename = ""
        self.started = False  # the file field's headers are done; its bytes follow
        self.finished = False
        self._in_file = False
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._out: list[bytes] = []
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks, max_header_count=16)
        except FormParserError as exc:
            raise HTTPProblem(
                400, "Bad request", f"bad multipart boundary: {exc}", kind="bad-multipart"
            ) from None

    def feed(self, chunk: bytes) -> list[bytes]:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise HTTPProblem(
                400, "Bad request", f"malformed multipart body: {exc}", kind="bad-multipart"
            ) from None
        out, self._out = self._out, []
        return out

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") == b"file" and not self.started:
            self.started = self._in_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._out.append(data[start:end])

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self.finished = True


@dataclass
class _Upload:
    limit: int
    body_limit: int
    idle_seconds: float
    total_seconds: float
    sent: int = 0
    received: int = 0
    over: bool = False
    error: HTTPProblem | None = None
    call: Any = None
    pending: list[bytes] = field(default_factory=list)


def bad_multipart(detail: str) -> HTTPProblem:
    return HTTPProblem(400, "Bad request", detail, kind="bad-multipart")


async def _body(request: Request, state: _Upload) -> AsyncIterator[bytes]:
    """The request body, counted against the limit; cut off by a pause longer than the
    idle timeout, or when the whole upload takes longer than its own cap."""
    stream = request.stream().__aiter__()
    ends = time.monotonic() + state.total_seconds
    while True:
        left = ends - time.monotonic()
        try:
            chunk = await asyncio.wait_for(anext(stream), min(state.idle_seconds, left))
        except StopAsyncIteration:
            return
        except TimeoutError:
            if left <= state.idle_seconds:
                detail = f"the upload took longer than the {state.total_seconds:g}s allowed"
            else:
                detail = f"the upload paused longer than {state.idle_seconds:g}s"
            raise HTTPProblem(408, "Request timeout", detail, kind="timeout") from None
        state.received += len(chunk)
        if state.received > state.body_limit:
            state.over = True
            raise upload_too_large(state.limit)
        if chunk:
            yield chunk


async def upload(
    request: Request,
    upstream: Upstream,
    *,
    caller: Caller,
    visibility: image_pb2.Visibility.ValueType,
    limit: int,
    idle_seconds: float,
    total_seconds: float,
) -> image_pb2.ImageMetadata:
    """Stream the request's image to PutImage; raise HTTPProblem on bad input.

    Only a pause longer than idle_seconds, or an upload longer than total_seconds,
    cuts a client off: a slow one that keeps sending is never cut off mid-body.
    """
    declared = request.headers.get("content-length")
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    kind = media_type.decode("latin-1").lower()
    multipart = kind == "multipart/form-data"
    slack = MULTIPART_SLACK if multipart else 0
    if declared and re.fullmatch(r"[0-9]{1,19}", declared) and int(declared) > limit + slack:
        raise upload_too_large(limit)
    state = _Upload(limit, limit + slack, idle_seconds, total_seconds)
    body = _body(request, state)
    filename = request.query_params.get("filename", "")
    if multipart:
        boundary = options.get(b"boundary", b"")
        if not 1 <= len(boundary) <= MAX_BOUNDARY:
            raise bad_multipart(f"the boundary must be 1-{MAX_BOUNDARY} characters")
        part = _FilePart(boundary)
        async for chunk in body:
            state.pending += part.feed(chunk)
            if part.started:
                break
        if not part.started:
            raise HTTPProblem(
                400, "Bad request", 'the multipart field "file" is missing', kind="missing-file"
            )
        filename = part.filename
        chunks = _multipart_rest(body, part, state)
    elif kind.startswith(RAW_TYPES):
        chunks = body
    else:
        raise HTTPProblem(
            415,
            "Unsupported media type",
            "send multipart/form-data with a file field, or the image itself with an "
            "image/* Content-Type",
            kind="unsupported-media-type",
        )
    header = pb.PutImageHeader(
        original_filename=filename,
        owner=caller.owner,
        visibility=visibility,
    )
    # The body is bounded by the caps above; the deadline only adds time to validate.
    state.call = upstream.cache.PutImage(
        _requests(header, chunks, state),
        timeout=total_seconds + idle_seconds,
        # The cache service checks the owner against the caller too.
        metadata=call_metadata() + caller.metadata(),
    )
    try:
        response: pb.PutImageResponse = await state.call
    except (asyncio.CancelledError, grpc.aio.AioRpcError):
        if state.error is not None:
            raise state.error from None
        if state.over:
            raise upload_too_large(limit) from None
        raise
    return response.image


async def _multipart_rest(
    body: AsyncIterator[bytes], part: _FilePart, state: _Upload
) -> AsyncIterator[bytes]:
    for piece in state.pending:
        yield piece
    state.pending = []
    async for chunk in body:
        for piece in part.feed(chunk):
            yield piece
        if part.finished:
            return  # later fields are not read
    if not part.finished:
        raise bad_multipart("the body ends before the file part does")


async def _requests(
    header: pb.PutImageHeader, chunks: AsyncIterator[bytes], state: _Upload
) -> AsyncIterator[pb.PutImageRequest]:
    yield pb.PutImageRequest(header=header)
    try:
        async for chunk in chunks:
            state.sent += len(chunk)
            if state.sent > state.limit:
                state.over = True
                state.call.cancel()
                return
            yield pb.PutImageRequest(chunk=chunk)
    except HTTPProblem as problem:
        # Raised here, gRPC would swallow it: keep it for the handler, stop the call.
        state.error = problem
        state.call.cancel()
    except ClientDisconnect:
        state.error = HTTPProblem(400, "Bad request", "the client went away")
        state.call.cancel()
