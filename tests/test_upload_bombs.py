"""Uploads that cost far more to decode than their size says (issue 11, items 5 and 6)."""

from __future__ import annotations

import functools
import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import processor_service_pb2 as ppb
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc
from PIL import Image, ImageDraw, ImageSequence

from common.errors import Reason, ServiceError
from common.imaging import SourceLimits, inspect
from tests.support import (
    CORPUS,
    ServiceProcess,
    bytes_requests,
    channel,
    failure,
    process_request,
    upload,
    upload_requests,
)

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_TOTAL_PIXELS = 500_000_000


def _lzw_one_pixel(value: int) -> bytes:
    # Minimum code size 8, then clear (256), the pixel, end (257): 9-bit codes packed
    # from the least significant bit, in one 4-byte sub-block and its terminator.
    codes = 256 | value << 9 | 257 << 18
    return bytes([8, 4]) + codes.to_bytes(4, "little") + b"\0"


@functools.cache
def cost_bomb(size: int = 7000, frames: int = 120, repaint: bool = False) -> bytes:
    """A size x size GIF of frames frames: after the first, each changes one pixel (tens
    of KB holding size² x frames pixels to decode), or with repaint, each repaints the
    whole canvas (real decoding work in every frame)."""
    out = io.BytesIO()
    Image.new("P", (size, size)).save(out, "GIF", interlace=False)
    first = out.getvalue()
    start = 13 + 6  # header, logical screen, a two-colour table
    assert first[start : start + 1] == b"," and first.endswith(b";")
    whole_frame = first[start:-1]
    parts = [b"GIF89a", first[6:13], b"\0\0\0\xff\xff\xff", whole_frame]
    for n in range(1, frames):
        if repaint:
            parts.append(whole_frame)
        else:
            descriptor = struct.pack("<4HB", n % size, n // size, 1, 1, 0)
            parts.append(b"," + descriptor + _lzw_one_pixel(n % 2))
    return b"".join([*parts, b";"])


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


def test_pillows_warnings_stay_out_of_the_log(
    stub: pb_grpc.CacheServiceStub,
    pstub: ppb_grpc.ProcessorServiceStub,
    cache_server: ServiceProcess,
    processor_server: ServiceProcess,
) -> None:
    # Over our limit but under twice it, Pillow opens the image with a warning and we
    # refuse it; the warning is silenced once per process (configure_pillow), not
    # printed to stderr, which the log would carry.
    data = png_claiming(8000, 8000)
    assert DEFAULT_MAX_PIXELS < 8000 * 8000 < 2 * DEFAULT_MAX_PIXELS
    assert failure(stub.PutImage, upload_requests(data)).reason == Reason.IMAGE_TOO_LARGE
    error = failure(pstub.ProcessBytes, bytes_requests(data, format=ppb.OUTPUT_FORMAT_PNG))
    assert error.reason == Reason.IMAGE_TOO_LARGE
    for server in (cache_server, processor_server):
        server.log_entries()  # waits until the calls above are logged
        assert "Warning" not in server.log_path.read_text(errors="replace")


def test_a_gif_cost_bomb_is_refused_once_its_frames_pass_the_total(
    stub: pb_grpc.CacheServiceStub,
) -> None:
    # 7000x7000 x 120 frames: every frame is within the per-frame limit, together
    # they are 5.9 Gpx, twelve times the default total.
    bomb = cost_bomb()
    assert len(bomb) < 200_000
    error = failure(stub.PutImage, upload_requests(bomb), timeout=60)
    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, Reason.IMAGE_TOO_LARGE)
    assert f"{DEFAULT_MAX_TOTAL_PIXELS} pixels" in error.message
    # Refused the moment the sum passes (the 11th frame), so a last frame cut short
    # is never reached: the answer is still "too large", not "corrupt".
    error = failure(stub.PutImage, upload_requests(bomb[:-4]), timeout=60)
    assert error.reason == Reason.IMAGE_TOO_LARGE, error.message


def apng_declaring(frames: int, size: int = 2000) -> bytes:
    """A two-frame APNG whose acTL says it has frames frames, with a damaged IDAT CRC:
    only a refusal made from the header, before any decoding or checking, is not about
    the damage."""
    out = io.BytesIO()
    first = Image.new("RGB", (size, size), (200, 30, 30))
    second = Image.new("RGB", (size, size), (30, 30, 200))
    first.save(out, "PNG", save_all=True, append_images=[second])
    data = bytearray(out.getvalue())
    actl = data.index(b"acTL")
    data[actl + 4 : actl + 8] = struct.pack(">I", frames)
    data[actl + 12 : actl + 16] = struct.pack(">I", zlib.crc32(data[actl : actl + 12]))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    data[idat + 4 + length] ^= 0xFF
    return bytes(data)


def test_an_animation_declaring_too_many_pixels_is_refused_before_decoding(
    stub: pb_grpc.CacheServiceStub, pstub: ppb_grpc.ProcessorServiceStub
) -> None:
    assert DEFAULT_MAX_TOTAL_PIXELS < 200 * 2000 * 2000
    data = apng_declaring(200)
    error = failure(stub.PutImage, upload_requests(data), timeout=60)
    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, Reason.IMAGE_TOO_LARGE)
    assert f"{DEFAULT_MAX_TOTAL_PIXELS} pixels" in error.message
    error = failure(pstub.ProcessBytes, bytes_requests(data, format=ppb.OUTPUT_FORMAT_PNG))
    assert error.reason == Reason.IMAGE_TOO_LARGE, error.message
    # The same file declaring what it holds is only damaged.
    error = failure(stub.PutImage, upload_requests(apng_declaring(2)), timeout=60)
    assert error.reason == Reason.CORRUPT_IMAGE, error.message


def test_the_processor_refuses_a_cost_bomb_sent_to_it(
    pstub: ppb_grpc.ProcessorServiceStub,
) -> None:
    small = ppb.Operation(resize=ppb.Resize(width=64))
    requests = bytes_requests(cost_bomb(), small, format=ppb.OUTPUT_FORMAT_GIF)
    error = failure(pstub.ProcessBytes, requests, timeout=120)
    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, Reason.IMAGE_TOO_LARGE)
    assert f"{DEFAULT_MAX_TOTAL_PIXELS} pixels" in error.message


@pytest.fixture
def roomy_cache(tmp_path: Path) -> Iterator[ServiceProcess]:
    """A cache of its own that takes the cost bomb whole (so it validates every frame)."""
    env = {"IMAGESVC_MAX_TOTAL_PIXELS": "10000000000"}
    server = ServiceProcess("cache", tmp_path / "roomy", env).start()
    yield server
    server.kill()


def peak_rss(pid: int) -> int:
    """The most memory the process has held so far, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_validating_a_cost_bomb_holds_about_one_frame(roomy_cache: ServiceProcess) -> None:
    before = peak_rss(roomy_cache.pid)
    with channel(roomy_cache.address) as ch:
        meta = upload(pb_grpc.CacheServiceStub(ch), cost_bomb())
    grown = peak_rss(roomy_cache.pid) - before
    assert meta.frames == 120
    # A 7000x7000 frame is 49 MB at a byte a pixel (GIF's palette indices) and 196 MB
    # as RGBA; Pillow's compositing reader held about 440 MB.
    assert grown < 7000 * 7000 * 4, f"{grown / 1e6:.0f} MB"


def test_the_processor_refuses_to_decode_a_stored_image_over_its_total(
    roomy_cache: ServiceProcess, tmp_path: Path
) -> None:
    # Stored by a cache with a higher limit (or before there was one): the processor
    # holds the sources it decodes to its own limit too.
    env = {"IMAGESVC_CACHE_ADDRESS": roomy_cache.address}
    processor = ServiceProcess("processor", tmp_path / "processor", env).start()
    try:
        with channel(roomy_cache.address) as ch:
            image_id = upload(pb_grpc.CacheServiceStub(ch), cost_bomb()).id
        small = ppb.Operation(resize=ppb.Resize(width=64))
        with channel(processor.address) as ch:
            process = ppb_grpc.ProcessorServiceStub(ch).Process
            error = failure(process, process_request(image_id, small), timeout=120)
    finally:
        processor.kill()
    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, Reason.IMAGE_TOO_LARGE)
    assert f"{DEFAULT_MAX_TOTAL_PIXELS} pixels" in error.message


def pillow_reads(data: bytes) -> bool:
    """Whether Pillow's own reader (the processor's) composites every frame of data."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            for frame in ImageSequence.Iterator(image):
                frame.load()
    except Exception:
        return False
    return True


def test_gif_validation_accepts_what_pillow_reads_cut_anywhere() -> None:
    # Validation reads GIFs as the processor does (frames kept in palette mode); cut
    # short anywhere, it must accept exactly what the processor's reader reads.
    frames = []
    for n in range(4):
        frame = Image.new("RGBA", (60, 40), (0, 0, 0, 0))
        ImageDraw.Draw(frame).rectangle((n * 10, 5, n * 10 + 15, 30), fill=(255, 60 * n, 0))
        frames.append(frame)
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], disposal=2, loop=0)
    data = out.getvalue()
    limits = SourceLimits(frozenset({"GIF"}), DEFAULT_MAX_PIXELS, 1000, DEFAULT_MAX_TOTAL_PIXELS)
    for end in range(len(data) + 1):
        try:
            accepted = inspect(io.BytesIO(data[:end]), limits).frames > 0
        except ServiceError:
            accepted = False
        assert accepted == pillow_reads(data[:end]), end


def test_a_small_upload_does_not_wait_behind_big_validations(tmp_path: Path) -> None:
    # Four uploads that are big but allowed occupy both validation workers for seconds:
    # two say so in their header (20 whole 7000x7000 frames), two only as their frames
    # are read (100 whole 3000x3000 frames: a small canvas). A small BMP sent while they
    # validate answers at once.
    env = {"IMAGESVC_MAX_TOTAL_PIXELS": "2000000000", "IMAGESVC_VALIDATION_WORKERS": "2"}
    server = ServiceProcess("cache", tmp_path / "data", env).start()
    bigs = [cost_bomb(7000, 20, repaint=True), cost_bomb(3000, 100, repaint=True)] * 2
    small = (CORPUS / "pillow/bmp/g/pal8rle.bmp").read_bytes()
    finished: list[float] = []

    def sent_whole(big: bytes, done: threading.Event) -> Iterator[pb.PutImageRequest]:
        yield from upload_requests(big)
        done.set()  # gRPC has asked past the last chunk: the upload is the server's now

    try:
        with channel(server.address) as ch:
            stub = pb_grpc.CacheServiceStub(ch)
            sent = [threading.Event() for _ in bigs]
            calls = [
                stub.PutImage.future(sent_whole(big, done), timeout=300)
                for big, done in zip(bigs, sent, strict=True)
            ]
            for call in calls:
                call.add_done_callback(lambda _: finished.append(time.monotonic()))
            assert all(done.wait(60) for done in sent)
            start = time.monotonic()
            assert upload(stub, small).format == "BMP"
            answered = time.monotonic()
            stored = [call.result().image for call in calls]
    finally:
        server.kill()
    assert answered - start < 2.0, f"the small upload took {answered - start:.1f} s"
    assert [image.frames for image in stored] == [20, 100] * 2
    # They were still validating when the small one was answered.
    assert min(finished) > answered, [round(t - answered, 2) for t in finished]
