"""Uploads streamed from HTTP to the cache service's PutImage, never held whole.

Raw bodies go chunk by chunk; multipart bodies go through python-multipart's push
parser, which hands over the `file` field's bytes as they arrive. Passing the byte
limit cancels the gRPC call at once (the cache service then drops what it staged)
and the caller gets 413 without the gateway reading the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import image_pb2
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from common.grpcclient import call_metadata
from gateway.problems import HTTPProblem
from gateway.upstream import Upstream

MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file's bytes
RAW_TYPES = ("image/", "application/octet-stream")


def too_large(limit: int) -> HTTPProblem:
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
        self._parser = MultipartParser(boundary, callbacks, max_header_count=16)

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
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")[:255]

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
    sent: int = 0
    over: bool = False
    call: Any = None
    pending: list[bytes] = field(default_factory=list)


async def upload(
    request: Request,
    upstream: Upstream,
    *,
    owner: str,
    visibility: image_pb2.Visibility.ValueType,
    limit: int,
    deadline_seconds: float,
) -> image_pb2.ImageMetadata:
    """Stream the request's image to PutImage; raise HTTPProblem on bad input."""
    declared = request.headers.get("content-length")
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    kind = media_type.decode("latin-1").lower()
    multipart = kind == "multipart/form-data"
    slack = MULTIPART_SLACK if multipart else 0
    if declared and declared.isdigit() and int(declared) > limit + slack:
        raise too_large(limit)
    state = _Upload(limit)
    body = request.stream()
    filename = request.query_params.get("filename", "")[:255]
    if multipart:
        boundary = options.get(b"boundary")
        if not boundary:
            raise HTTPProblem(400, "Bad request", "multipart body without a boundary")
        part = _FilePart(boundary)
        received = 0
        async for chunk in body:
            received += len(chunk)
            if received > limit + slack:
                raise too_large(limit)
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
        chunks = _raw(body)
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
        claimed_media_type=kind,
        owner=owner,
        visibility=visibility,
    )
    state.call = upstream.cache.PutImage(
        _requests(header, chunks, state),
        timeout=deadline_seconds,
        metadata=call_metadata(),
    )
    try:
        response: pb.PutImageResponse = await state.call
    except asyncio.CancelledError:
        if state.over:
            raise too_large(limit) from None
        raise
    except grpc.aio.AioRpcError as exc:
        if state.over:
            raise too_large(limit) from None
        raise exc
    return response.image


async def _raw(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in body:
        if chunk:
            yield chunk


async def _multipart_rest(
    body: AsyncIterator[bytes], part: _FilePart, state: _Upload
) -> AsyncIterator[bytes]:
    for piece in state.pending:
        yield piece
    state.pending = []
    async for chunk in body:
        if part.finished:
            continue  # drain the rest of the body; later fields are ignored
        for piece in part.feed(chunk):
            yield piece


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
    except ClientDisconnect:
        state.call.cancel()
