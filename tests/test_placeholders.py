"""Placeholders (issue 14): a BlurHash and a ThumbHash of every image, made at upload, in
ImageMetadata and in the gateway's JSON; upright, first frame, any mode, never a reason
to refuse an upload."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import blurhash
import httpx
import pytest
import thash
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from PIL import Image

from cache.placeholders import THUMBHASH_BOX, placeholders, upright_thumbnail
from common.imaging import SOURCE_FORMATS, SourceLimits, inspect
from tests.support import CORPUS, ServiceProcess, channel, download, upload

RED = (255, 0, 0)
BLUE = (0, 0, 255)
ORIENTATION = 0x0112
LIMITS = SourceLimits(frozenset(SOURCE_FORMATS), 50_000_000, 1000, 200_000_000)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def average(thumbhash: bytes) -> tuple[float, float, float, float]:
    found = thash.thumb_hash_to_average_rgba(list(thumbhash))
    assert found is not None
    return found


def thumbhash_pixels(thumbhash: bytes) -> Image.Image:
    """The ThumbHash decoded, as its clients show it."""
    width, height, rgba = thash.thumb_hash_to_rgba(list(thumbhash))
    return Image.frombytes("RGBA", (width, height), rgba)


def assert_valid(blur: str, thumb: bytes) -> None:
    """Both decode with their libraries."""
    assert blurhash.is_valid_blurhash(blur), blur
    assert blurhash.decode(blur, 8, 8).size == (8, 8)
    assert 5 <= len(thumb) <= 25
    assert thumbhash_pixels(thumb).width > 0


def near(color: tuple[float, ...], expected: tuple[int, ...], tolerance: float = 0.08) -> bool:
    return all(abs(c - e / 255) <= tolerance for c, e in zip(color, expected, strict=False))


def test_an_upload_over_http_has_placeholders_of_its_colour_in_info(http: httpx.Client) -> None:
    red = encoded(Image.new("RGB", (640, 480), RED), "JPEG", quality=95)
    answer = http.post("/images", content=red, headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 201
    info = http.get(f"/images/{answer.json()['id']}/info").json()
    # The upload's answer says the same.
    assert (answer.json()["blurhash"], answer.json()["thumbhash"]) == (
        info["blurhash"],
        info["thumbhash"],
    )

    thumb = base64.b64decode(info["thumbhash"], validate=True)
    assert_valid(info["blurhash"], thumb)
    assert near(average(thumb), (*RED, 255))
    aspect = thash.thumb_hash_to_approximate_aspect_ratio(list(thumb))
    assert aspect is not None and aspect > 1  # landscape
    # The BlurHash decodes back to red, 4x3 components for a landscape image.
    assert info["blurhash"][0] == "L"  # (4 - 1) + (3 - 1) * 9 = 21, base83 "L"
    pixels = blurhash.decode(info["blurhash"], 4, 3).convert("RGB")
    for x, y in ((0, 0), (3, 2), (2, 1)):
        assert near(tuple(c / 255 for c in pixels.getpixel((x, y))), RED)


def test_stat_get_and_list_carry_the_placeholders(stub: pb_grpc.CacheServiceStub) -> None:
    data = encoded(Image.new("RGB", (300, 600), BLUE), "PNG")
    put = upload(stub, data, owner="")
    assert put.blurhash and put.thumbhash
    assert put.blurhash[0] == "T"  # 3x4 components for a portrait image: 2 + 3 * 9 = 29
    stat = stub.StatImage(pb.StatImageRequest(id=put.id), timeout=10).image
    got, _ = download(stub, put.id)
    assert (stat.blurhash, stat.thumbhash) == (put.blurhash, put.thumbhash)
    assert (got.blurhash, got.thumbhash) == (put.blurhash, put.thumbhash)
    listed = stub.ListImages(pb.ListImagesRequest(owner="", page_size=50), timeout=10).images
    assert [(i.blurhash, i.thumbhash) for i in listed if i.id == put.id] == [
        (put.blurhash, put.thumbhash)
    ]
    assert near(average(put.thumbhash), (*BLUE, 255))


def test_placeholders_are_upright_as_the_renders_are(stub: pb_grpc.CacheServiceStub) -> None:
    # Stored 200x100, red above blue, with EXIF orientation 6 (turn 90 degrees clockwise to
    # view): upright it is 100x200, blue on the left and red on the right.
    stored = Image.new("RGB", (200, 100), RED)
    stored.paste(BLUE, (0, 50, 200, 100))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    meta = upload(stub, encoded(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert (meta.width, meta.height) == (200, 100)  # the stored pixels'
    aspect = thash.thumb_hash_to_approximate_aspect_ratio(list(meta.thumbhash))
    assert aspect is not None and aspect < 1  # portrait, as shown
    shown = thumbhash_pixels(meta.thumbhash).convert("RGB")
    left = shown.getpixel((1, shown.height // 2))
    right = shown.getpixel((shown.width - 2, shown.height // 2))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[2] > left[0] and right[0] > right[2]
    assert meta.blurhash[0] == "T"  # portrait components


def test_the_eight_orientations_of_one_photo_give_one_placeholder(
    stub: pb_grpc.CacheServiceStub,
) -> None:
    folder = CORPUS / "exif-orientation"
    metas = [upload(stub, (folder / f"Landscape_{n}.jpg").read_bytes()) for n in range(1, 9)]
    first = average(metas[0].thumbhash)
    for meta in metas:
        aspect = thash.thumb_hash_to_approximate_aspect_ratio(list(meta.thumbhash))
        assert aspect is not None and aspect > 1
        assert all(abs(a - b) < 0.03 for a, b in zip(average(meta.thumbhash), first, strict=True))
        assert meta.blurhash[0] == "L"


def _gif_red_then_green() -> bytes:
    frames = [Image.new("RGB", (64, 48), RED), Image.new("RGB", (64, 48), (0, 255, 0))]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


@pytest.mark.parametrize(
    "name",
    [
        "pillow/iss634.gif",  # animated GIF, 42 frames
        "pillow/iss634.webp",  # animated WebP
        "pillow/iss634.apng",  # animated PNG
        "pngsuite/basn6a08.png",  # RGBA
        "pillow/p_trns_single.png",  # palette with a transparent index
        "pngsuite/tbrn2c08.png",  # RGB with a tRNS colour key
        "pillow/pil_sample_cmyk.jpg",  # CMYK JPEG (Adobe)
        "metadata-extractor-images/cmyk_swop-icc-multi-app2.jpg",  # CMYK with its ICC profile
        "pngsuite/basn0g16.png",  # 16-bit grey
        "pillow/i_trns.png",  # 16-bit grey with tRNS
        "pngsuite/basn0g01.png",  # 1-bit
        "pngsuite/s01n3p01.png",  # 1x1 palette
        "pillow/pillow.ico",
        "pillow/multipage.tiff",
        "pillow/frozenpond.mpo",
    ],
)
def test_every_kind_of_image_uploads_with_placeholders(
    stub: pb_grpc.CacheServiceStub, name: str
) -> None:
    meta = upload(stub, (CORPUS / name).read_bytes(), filename=Path(name).name)
    assert_valid(meta.blurhash, meta.thumbhash)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (1, 1), RED),
        Image.new("RGB", (4000, 1), RED),  # extreme aspect ratios
        Image.new("RGB", (1, 3000), RED),
        Image.new("L", (3, 700), 255),
    ],
    ids=["1x1", "4000x1", "1x3000", "3x700"],
)
def test_tiny_and_extreme_images_upload_with_placeholders(
    stub: pb_grpc.CacheServiceStub, image: Image.Image
) -> None:
    meta = upload(stub, encoded(image, "PNG"))
    assert_valid(meta.blurhash, meta.thumbhash)
    if image.mode == "RGB":
        assert near(average(meta.thumbhash), (*RED, 255))


def test_an_animation_is_placed_by_its_first_frame(stub: pb_grpc.CacheServiceStub) -> None:
    meta = upload(stub, _gif_red_then_green())
    assert meta.frames == 2
    assert near(average(meta.thumbhash), (*RED, 255))


def test_transparency_is_kept_by_thumbhash_and_flattened_onto_white_by_blurhash(
    stub: pb_grpc.CacheServiceStub,
) -> None:
    half_red = Image.new("RGBA", (120, 90), (*RED, 128))
    meta = upload(stub, encoded(half_red, "PNG"))
    r, g, b, a = average(meta.thumbhash)
    assert near((r, g, b), RED) and 0.4 < a < 0.6
    pink = blurhash.decode(meta.blurhash, 4, 3).convert("RGB").getpixel((1, 1))
    assert isinstance(pink, tuple)
    assert pink[0] > 240 and 100 < pink[1] < 160 and 100 < pink[2] < 160


def test_a_large_upload_is_placed_from_its_reduced_decode() -> None:
    # What PutImage hands over for a 4000x3000 JPEG is its 1/8 draft; the placeholders
    # come from at most THUMBHASH_BOX pixels a side whatever the frame's size.
    frame = Image.new("RGB", (4000, 3000), RED)
    thumb = upright_thumbnail(frame, THUMBHASH_BOX)
    assert thumb.size == (100, 75) and thumb.mode == "RGBA"
    assert upright_thumbnail(Image.new("P", (5000, 2)), THUMBHASH_BOX).size == (100, 1)


@pytest.mark.parametrize(
    ("size", "shown"),
    [((4000, 3000), (500, 375)), ((400, 300), (100, 75)), ((64, 48), (64, 48))],
)
def test_validation_shows_a_jpeg_reduced_but_never_below_a_placeholders_size(
    size: tuple[int, int], shown: tuple[int, int]
) -> None:
    seen: list[tuple[int, int]] = []
    data = io.BytesIO(encoded(Image.new("RGB", size, RED), "JPEG"))
    info = inspect(data, LIMITS, first_frame=lambda frame: seen.append(frame.size))
    assert (info.width, info.height) == size  # the stored pixels', whatever was decoded
    assert seen == [shown]


def test_a_frame_no_placeholder_can_be_made_of_gives_none_and_no_error() -> None:
    frame = Image.new("RGB", (10, 10), RED)
    frame.close()  # every pixel operation now raises
    made = placeholders(frame)
    assert (made.blurhash, made.thumbhash) == ("", b"")
    assert made.error


@pytest.fixture(scope="module")
def postgres_cache(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[str]:
    server = ServiceProcess(
        "cache",
        tmp_path_factory.mktemp("placeholders-pg") / "data",
        {"IMAGESVC_METADATA_URL": postgres_url},
    ).start()
    yield server.address
    assert server.terminate() == 0


def test_a_cache_on_postgresql_keeps_the_placeholders(postgres_cache: str) -> None:
    with channel(postgres_cache) as ch:
        stub = pb_grpc.CacheServiceStub(ch)
        put = upload(stub, encoded(Image.new("RGB", (50, 40), RED), "PNG"))
        stat = stub.StatImage(pb.StatImageRequest(id=put.id), timeout=10).image
        assert stat.blurhash and stat.thumbhash
        assert (stat.blurhash, stat.thumbhash) == (put.blurhash, put.thumbhash)
        assert near(average(stat.thumbhash), (*RED, 255))
