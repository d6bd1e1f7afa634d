"""HEIC/HEIF (pillow-heif) and JPEG XL (pillow-jxl-plugin), in and out: in-process first,
then over HTTP against real services."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import httpx
import pytest
from imageservice.v1 import processor_service_pb2 as ppb
from PIL import Image, ImageChops

from common.env import Env
from common.errors import Reason, ServiceError
from common.imaging import SOURCE_FORMATS, SourceLimits, inspect, jxl_size
from gateway.params import Parameters, RequestLimits
from gateway.problems import HTTPProblem
from processor import output as outputs
from processor import pipeline, spec
from processor.config import Settings as ProcessorSettings
from tests.support import (
    CORPUS,
    LIMITS,
    ServiceProcess,
    corner,
    encode,
    is_problem,
    marked,
    wanted,
)

Op = ppb.Operation
IPHONE = CORPUS / "metadata-extractor-images" / "apple-iphone-11-pro_display-p3.heic"
HOPPER_HEIC = CORPUS / "pillow" / "avif" / "hopper.heif"
HOPPER_AVIF = CORPUS / "pillow" / "avif" / "hopper.avif"
INSPECT_LIMITS = SourceLimits(frozenset(SOURCE_FORMATS), 50_000_000, 1000, 500_000_000)


def transparent(size: tuple[int, int] = (120, 80)) -> Image.Image:
    """Half opaque red, half fully transparent."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, size[0] // 2, size[1]))
    return image


def jxl(image: Image.Image, **options: object) -> bytes:
    return encode(image, "JXL", lossless_jpeg=False, **options)


def render(data: bytes, *ops: Op, **output: object) -> tuple[pipeline.Rendered, Image.Image]:
    made = pipeline.render(io.BytesIO(data), wanted(*ops, **output), LIMITS)
    image = Image.open(io.BytesIO(made.data))
    image.load()
    return made, image


def refusal(data: bytes) -> str:
    with pytest.raises(ServiceError) as caught:
        inspect(io.BytesIO(data), INSPECT_LIMITS)
    with pytest.raises(ServiceError) as rendering:
        pipeline.render(io.BytesIO(data), wanted(format=ppb.OUTPUT_FORMAT_PNG), LIMITS)
    assert rendering.value.reason == caught.value.reason
    return str(caught.value.reason)


# --- JPEG XL's header ------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [(1, 1), (8, 8), (640, 480), (1920, 1080), (513, 1), (1, 9000), (1200, 1000), (7, 3)]
)
def test_jxl_size_reads_the_header_bare_and_boxed(size: tuple[int, int]) -> None:
    image = Image.new("RGB", size)
    exif = Image.Exif()
    exif[0x010F] = "camera"
    assert jxl_size(jxl(image, effort=1)) == size
    # In a container, behind an Exif box.
    boxed = jxl(image, effort=1, use_container=True, exif=exif.tobytes())
    assert boxed[4:8] == b"JXL " and jxl_size(boxed) == size


def test_jxl_size_reads_partial_and_large_boxes() -> None:
    stream = jxl(Image.new("RGB", (321, 123)), effort=1)
    signature = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
    ftyp = struct.pack(">I4s4sI4s", 20, b"ftyp", b"jxl ", 0, b"jxl ")
    exif = struct.pack(">I4s", 1, b"Exif") + struct.pack(">Q", 16 + 10) + bytes(10)
    part = struct.pack(">I4sI", 12 + len(stream), b"jxlp", 0) + stream
    assert jxl_size(signature + ftyp + exif + part) == (321, 123)
    info = inspect(io.BytesIO(signature + ftyp + part), INSPECT_LIMITS)
    assert (info.format, info.width, info.height) == ("JXL", 321, 123)


def test_jxl_size_of_no_header_is_none() -> None:
    assert jxl_size(b"\xff\x0a") is None
    assert jxl_size(b"\x00\x00\x00\x0cJXL \r\n\x87\n" + struct.pack(">I4s", 8, b"ftyp")) is None


def test_a_jxl_bomb_is_refused_from_its_header_before_the_plugin_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pillow_jxl import JpegXLImagePlugin

    def never(self: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(JpegXLImagePlugin.JXLImageFile, "_open", never)
    data = jxl(Image.new("RGB", (400, 300)), effort=1)
    small = SourceLimits(frozenset(SOURCE_FORMATS), 100_000, 1000, 500_000_000)
    with pytest.raises(ServiceError) as caught:
        inspect(io.BytesIO(data), small)
    assert caught.value.reason == Reason.IMAGE_TOO_LARGE
    assert "400x300" in str(caught.value)
    only_png = SourceLimits(frozenset({"PNG"}), 50_000_000, 1000, 500_000_000)
    with pytest.raises(ServiceError) as refused:
        inspect(io.BytesIO(data), only_png)
    assert refused.value.reason == Reason.UNSUPPORTED_MEDIA_TYPE


# --- sources ---------------------------------------------------------------------------


def test_heic_sources_are_read_with_their_media_type_and_upright_size() -> None:
    info = inspect(io.BytesIO(IPHONE.read_bytes()), INSPECT_LIMITS)
    # Stored 4032x3024 turned by the container's rotation, as libheif decodes it.
    assert (info.format, info.media_type, info.width, info.height, info.frames) == (
        "HEIF",
        "image/heic",
        3024,
        4032,
        1,
    )
    hopper = inspect(io.BytesIO(HOPPER_HEIC.read_bytes()), INSPECT_LIMITS)
    assert (hopper.format, hopper.media_type, hopper.width) == ("HEIF", "image/heic", 128)
    # AVIF stays Pillow's own.
    assert inspect(io.BytesIO(HOPPER_AVIF.read_bytes()), INSPECT_LIMITS).format == "AVIF"


def test_a_heic_bomb_is_refused_from_its_header() -> None:
    small = SourceLimits(frozenset(SOURCE_FORMATS), 1_000_000, 1000, 500_000_000)
    with pytest.raises(ServiceError) as caught:
        inspect(io.BytesIO(IPHONE.read_bytes()), small)
    assert caught.value.reason == Reason.IMAGE_TOO_LARGE


def test_jxl_sources_are_read() -> None:
    info = inspect(io.BytesIO(jxl(transparent())), INSPECT_LIMITS)
    assert (info.format, info.media_type, info.width, info.height) == (
        "JXL",
        "image/jxl",
        120,
        80,
    )


def test_truncated_and_mislabelled_heic_and_jxl_are_refused_clearly() -> None:
    heic = HOPPER_HEIC.read_bytes()
    data = jxl(marked((200, 100)))
    boxed = jxl(marked((200, 100)), use_container=True)
    for damaged in (heic[: len(heic) // 2], heic[:200] + bytes(len(heic) - 200)):
        assert refusal(damaged) == Reason.CORRUPT_IMAGE
    for damaged in (data[: len(data) // 2], data[:4], boxed[: len(boxed) // 2]):
        assert refusal(damaged) == Reason.CORRUPT_IMAGE
    assert refusal(data[:20] + b"\xff" * (len(data) - 20)) == Reason.CORRUPT_IMAGE
    # AV1 in a file whose brand says HEIC: no HEVC to decode, a coding this build lacks.
    avif_as_heic = HOPPER_AVIF.read_bytes().replace(b"ftypavif", b"ftypheic", 1)
    assert refusal(avif_as_heic) in (Reason.UNSUPPORTED_MEDIA_TYPE, Reason.CORRUPT_IMAGE)
    # An ISO-BMFF file of no image brand is still a format we do not take.
    video = struct.pack(">I4s4s", 16, b"ftyp", b"isom") + bytes(4) + bytes(64)
    assert refusal(video) == Reason.UNSUPPORTED_MEDIA_TYPE


def test_a_jxl_exif_orientation_is_not_applied_twice() -> None:
    # libjxl obeys the codestream's orientation; an Exif box's is informative.
    exif = Image.Exif()
    exif[0x0112] = 6
    _made, image = render(jxl(marked(), exif=exif.tobytes()), format=ppb.OUTPUT_FORMAT_PNG)
    assert image.size == (300, 200) and corner(image) == "tl"


def test_the_kind_of_a_heic_or_jxl_source_is_jpeg_or_png_with_alpha() -> None:
    heic = HOPPER_HEIC.read_bytes()
    made, _ = render(heic, format=ppb.OUTPUT_FORMAT_AUTO, accept=["*/*"])
    assert made.media_type == "image/jpeg"
    made, _ = render(jxl(marked()), format=ppb.OUTPUT_FORMAT_AUTO)
    assert made.media_type == "image/jpeg"
    made, image = render(jxl(transparent()), format=ppb.OUTPUT_FORMAT_AUTO)
    assert made.media_type == "image/png" and image.mode == "RGBA"


# --- outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "pillow", "media_type"),
    [(ppb.OUTPUT_FORMAT_HEIC, "HEIF", "image/heic"), (ppb.OUTPUT_FORMAT_JXL, "JXL", "image/jxl")],
)
def test_png_and_jpeg_render_to_heic_and_jxl(fmt: int, pillow: str, media_type: str) -> None:
    for source in (encode(marked((300, 200))), encode(marked((300, 200)), "JPEG")):
        made, image = render(source, Op(resize=ppb.Resize(width=150)), format=fmt)
        assert (made.media_type, image.format, image.size, image.mode) == (
            media_type,
            pillow,
            (150, 100),
            "RGB",
        )
        assert corner(image) == "tl"
    made, image = render(encode(transparent()), format=fmt)
    assert image.mode == "RGBA" and image.getpixel((100, 40))[3] == 0  # type: ignore[index]
    made, image = render(encode(Image.new("L", (40, 30), 90)), format=fmt)
    assert image.size == (40, 30)


def test_quality_applies_to_heic_and_jxl() -> None:
    source = encode(Image.effect_noise((200, 200), 60).convert("RGB"))
    for fmt in (ppb.OUTPUT_FORMAT_HEIC, ppb.OUTPUT_FORMAT_JXL):
        low, _ = render(source, format=fmt, quality=20)
        high, _ = render(source, format=fmt, quality=95)
        assert len(low.data) < len(high.data), fmt
    assert wanted(format=ppb.OUTPUT_FORMAT_HEIC).output.quality == 60
    assert wanted(format=ppb.OUTPUT_FORMAT_JXL).output.quality == 75


def test_a_lossless_jxl_round_trip_keeps_every_pixel() -> None:
    source = Image.effect_noise((64, 48), 80).convert("RGB")
    request = wanted(format=ppb.OUTPUT_FORMAT_JXL, lossless=True)
    assert (request.output.lossless, request.output.quality) == (True, 0)
    made = pipeline.render(io.BytesIO(encode(source)), request, LIMITS)
    _again, image = render(made.data, format=ppb.OUTPUT_FORMAT_PNG)
    assert ImageChops.difference(image.convert("RGB"), source).getbbox() is None
    # And JPEG XL in, JPEG XL out.
    made_again, out = render(made.data, Op(flop=ppb.Flop()), format=ppb.OUTPUT_FORMAT_JXL)
    assert (made_again.media_type, out.size) == ("image/jxl", (64, 48))


def test_heic_keeps_the_icc_profile_and_jxl_converts_to_srgb() -> None:
    source = IPHONE.read_bytes()
    resize = Op(resize=ppb.Resize(width=120))
    icc = Image.open(io.BytesIO(source)).info["icc_profile"]
    _, heic = render(source, resize, format=ppb.OUTPUT_FORMAT_HEIC)
    assert heic.info.get("icc_profile") == icc and heic.size == (120, 160)
    _, jxl_out = render(source, resize, format=ppb.OUTPUT_FORMAT_JXL)
    _, png = render(source, resize, format=ppb.OUTPUT_FORMAT_PNG)
    assert jxl_out.size == png.size == (120, 160)


def test_metadata_is_kept_in_heic_and_jxl_when_asked() -> None:
    exif = Image.Exif()
    exif[0x010F] = "camera"
    exif[0x0112] = 6
    source = encode(marked(), "JPEG", exif=exif.tobytes())
    for fmt in (ppb.OUTPUT_FORMAT_HEIC, ppb.OUTPUT_FORMAT_JXL):
        _, kept = render(source, format=fmt, keep_metadata=True)
        assert kept.size == (200, 300) and corner(kept) == "tr", fmt
        assert kept.getexif().get(0x010F) == "camera", fmt
        assert kept.getexif().get(0x0112) in (None, 1), fmt
        _, stripped = render(source, format=fmt)
        assert 0x010F not in stripped.getexif(), fmt


# --- format=auto, parameters and settings ----------------------------------------------


def test_auto_picks_jxl_only_where_the_settings_list_it() -> None:
    accept = ["image/jxl", "image/webp", "*/*"]
    assert outputs.negotiate(accept, outputs.DEFAULT_AUTO_FORMATS) == ("webp", "webp")
    assert outputs.negotiate(accept, ("jxl", "avif", "webp")) == ("jxl", "webp")
    assert outputs.negotiate(["image/jxl;q=0", "image/webp"], ("jxl", "webp")) == ("webp", "webp")
    limits = spec.RequestLimits(8192, 50, auto_formats=("jxl", "webp"))
    output = ppb.OutputOptions(format=ppb.OUTPUT_FORMAT_AUTO, accept=accept, lossless=True)
    chosen = spec.parse([], output, limits).output
    assert (chosen.format, chosen.lossless) == ("jxl", True)
    made = pipeline.render(io.BytesIO(encode(marked())), spec.parse([], output, limits), LIMITS)
    assert made.media_type == "image/jxl"


def test_auto_formats_may_name_jxl_and_default_to_avif_and_webp() -> None:
    assert ProcessorSettings.from_env(Env({})).auto_formats == ("avif", "webp")
    chosen = ProcessorSettings.from_env(Env({"IMAGESVC_AUTO_FORMATS": "jxl,avif,webp"}))
    assert chosen.auto_formats == ("jxl", "avif", "webp")


PARAMS = Parameters(RequestLimits(max_output_dimension=8192, max_blur_sigma=50))


def problem(query: str) -> str | None:
    pairs = [tuple(p.split("=", 1)) if "=" in p else (p, "") for p in query.split("&")]
    try:
        PARAMS.parse(pairs, "*/*")  # type: ignore[arg-type]
    except HTTPProblem as exc:
        return str(exc.detail)
    return None


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        ("format=heic&q=40", None),
        ("format=jxl&q=40", None),
        ("format=jxl&lossless", None),
        ("format=heic&lossless", "lossless"),
        ("format=heic&frames=first", "frames"),
        ("format=jxl&frames=all", "frames"),
        ("format=jxl&lossless&q=50", "q"),
        ("format=heic&bg=ff0000", "bg"),
        ("format=jxl&metadata=keep", None),
        ("format=heic&progressive", "progressive"),
    ],
)
def test_gateway_parameters_for_heic_and_jxl(query: str, refused: str | None) -> None:
    detail = problem(query)
    if refused is None:
        assert detail is None
    else:
        assert detail is not None and detail.startswith(f"{refused}:"), detail


# --- over HTTP -------------------------------------------------------------------------


def opened(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def test_a_heic_upload_is_stored_and_rendered(http: httpx.Client) -> None:
    data = IPHONE.read_bytes()
    created = http.post("/images", files={"file": ("IMG_2927.HEIC", data, "image/heic")})
    assert created.status_code == 201, created.text
    meta = created.json()
    assert (meta["format"], meta["media_type"], meta["width"], meta["height"]) == (
        "HEIF",
        "image/heic",
        3024,
        4032,
    )
    original = http.get(f"/images/{meta['id']}")
    assert original.content == data and original.headers["content-type"] == "image/heic"
    for fmt, pillow in (("jpeg", "JPEG"), ("webp", "WEBP")):
        variant = http.get(f"/images/{meta['id']}?w=300&format={fmt}")
        assert variant.status_code == 200, variant.text
        assert variant.headers["content-type"] == f"image/{fmt}"
        image = opened(variant.content)
        assert (image.format, image.size) == (pillow, (300, 400))
    # Auto with nothing better accepted: a kind browsers show.
    plain = http.get(f"/images/{meta['id']}?w=90", headers={"Accept": "*/*"})
    assert plain.headers["content-type"] == "image/jpeg" and opened(plain.content).size == (
        90,
        120,
    )


def test_png_and_jpeg_render_to_heic_and_jxl_over_http(http: httpx.Client) -> None:
    png = http.post("/images", content=encode(transparent()), headers={"Content-Type": "image/png"})
    jpeg = http.post(
        "/images", content=encode(marked(), "JPEG"), headers={"Content-Type": "image/jpeg"}
    )
    assert png.status_code == jpeg.status_code == 201
    for created, mode in ((png, "RGBA"), (jpeg, "RGB")):
        image_id = created.json()["id"]
        for fmt, pillow in (("heic", "HEIF"), ("jxl", "JXL")):
            variant = http.get(f"/images/{image_id}?w=60&format={fmt}&q=70")
            assert variant.status_code == 200, variant.text
            assert variant.headers["content-type"] == f"image/{fmt}"
            image = opened(variant.content)
            assert (image.format, image.width, image.mode) == (pillow, 60, mode)
    refused = http.get(f"/images/{jpeg.json()['id']}?format=heic&frames=first")
    assert is_problem(refused, 400)["parameter"] == "frames"


def test_a_jxl_round_trip_over_http(http: httpx.Client) -> None:
    source = Image.effect_noise((80, 60), 70).convert("RGB")
    data = jxl(source, lossless=True)
    created = http.post("/images", content=data, headers={"Content-Type": "image/jxl"})
    assert created.status_code == 201, created.text
    meta = created.json()
    assert (meta["format"], meta["media_type"], meta["width"], meta["height"]) == (
        "JXL",
        "image/jxl",
        80,
        60,
    )
    assert http.get(f"/images/{meta['id']}").content == data
    again = http.get(f"/images/{meta['id']}?format=jxl&lossless&flop")
    assert again.headers["content-type"] == "image/jxl"
    flopped = opened(again.content).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert ImageChops.difference(flopped, source).getbbox() is None


@pytest.mark.parametrize("kind", ["heic", "jxl"])
def test_truncated_heic_and_jxl_uploads_are_422(http: httpx.Client, kind: str) -> None:
    data = HOPPER_HEIC.read_bytes() if kind == "heic" else jxl(marked((200, 100)))
    truncated = http.post(
        "/images", content=data[: len(data) // 2], headers={"Content-Type": f"image/{kind}"}
    )
    body = is_problem(truncated, 422)
    assert "corrupt" in str(body["detail"])


def test_accept_jxl_gets_jxl_where_the_processor_lists_it(
    stack: Callable[..., ServiceProcess],
) -> None:
    gateway = stack(processor_env={"IMAGESVC_AUTO_FORMATS": "jxl,avif,webp"})
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        created = client.post(
            "/images", content=encode(marked()), headers={"Content-Type": "image/png"}
        )
        image_id = created.json()["id"]
        got = client.get(f"/images/{image_id}?w=100", headers={"Accept": "image/jxl,image/*"})
        assert got.headers["content-type"] == "image/jxl" and got.headers["vary"] == "Accept"
        assert opened(got.content).size == (100, 67)
        other = client.get(f"/images/{image_id}?w=100", headers={"Accept": "image/webp,*/*"})
        assert other.headers["content-type"] == "image/webp"
