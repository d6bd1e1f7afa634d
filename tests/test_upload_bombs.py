"""Uploads that cost far more to decode than their size says (issue 11, items 5 and 6)."""

from __future__ import annotations

import struct
import zlib

import grpc
import httpx
from imageservice.v1 import processor_service_pb2 as ppb
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc

from common.errors import Reason
from tests.support import bytes_requests, failure

DEFAULT_MAX_PIXELS = 50_000_000


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over a few bytes of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(b"\0" * 64)),
            _chunk(b"IEND", b""),
        ]
    )


def test_a_png_bomb_is_refused_quoting_our_pixel_limit(
    http: httpx.Client, pstub: ppb_grpc.ProcessorServiceStub
) -> None:
    # Past twice the limit Pillow refuses the image itself, in its own words and with
    # its own threshold (twice ours); the refusal must quote the limit we configured.
    data = png_claiming(20_000, 20_000)
    response = http.post("/images", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["reason"] == Reason.IMAGE_TOO_LARGE
    assert f"{DEFAULT_MAX_PIXELS} pixels" in body["detail"], body
    assert str(2 * DEFAULT_MAX_PIXELS) not in body["detail"], body
    error = failure(pstub.ProcessBytes, bytes_requests(data, format=ppb.OUTPUT_FORMAT_PNG))
    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, Reason.IMAGE_TOO_LARGE)
    assert f"{DEFAULT_MAX_PIXELS} pixels" in error.message
    assert str(2 * DEFAULT_MAX_PIXELS) not in error.message
