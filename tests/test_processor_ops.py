"""Each operation, fit mode and output option through the real processor and cache."""

from __future__ import annotations

import io

import grpc
import pytest
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import processor_service_pb2 as ppb
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc
from PIL import Image, ImageCms, ImageDraw, ImageStat

from common.errors import Reason
from tests.support import (
    collect,
    corner,
    encode,
    failure,
    marked,
    open_image,
    process_request,
    upload,
)

Op = ppb.Operation


def halves(size: tuple[int, int] = (400, 200)) -> Image.Image:
    """Red left half, blue right half."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return image


@pytest.fixture(scope="module")
def ids(stub_module: pb_grpc.CacheServiceStub) -> dict[str, str]:
    return {
        "halves": upload(stub_module, encode(halves())).id,
        "marked": upload(stub_module, encode(marked())).id,
    }


@pytest.fixture(scope="module")
def stub_module(cache_channel: grpc.Channel) -> pb_grpc.CacheServiceStub:
    return pb_grpc.CacheServiceStub(cache_channel)


def run(
    pstub: ppb_grpc.ProcessorServiceStub, image_id: str, *ops: ppb.Operation, **output: object
) -> tuple[Image.Image, ppb.ProcessResponse]:
    output.setdefault("format", ppb.OUTPUT_FORMAT_PNG)
    meta, data = collect(pstub.Process(process_request(image_id, *ops, **output), timeout=30))
    image = open_image(data)
    assert (meta.width, meta.height) == image.size
    assert meta.byte_size == len(data)
    return image, meta  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("resize", "size"),
    [
        (ppb.Resize(width=100, height=100, fit=ppb.FIT_CONTAIN), (100, 50)),
        (ppb.Resize(width=100, height=100, fit=ppb.FIT_INSIDE), (100, 50)),
        (ppb.Resize(width=100, height=100, fit=ppb.FIT_COVER), (100, 100)),
        (ppb.Resize(width=100, height=100, fit=ppb.FIT_FILL), (100, 100)),
        (ppb.Resize(width=100, height=100, fit=ppb.FIT_OUTSIDE), (200, 100)),
        (ppb.Resize(width=100), (100, 50)),
        (ppb.Resize(height=50), (100, 50)),
        (ppb.Resize(width=100, height=100, dpr=2), (200, 100)),
        (ppb.Resize(width=800, height=800), (400, 200)),  # never enlarged ...
        (ppb.Resize(width=800, height=800, enlarge=True), (800, 400)),  # ... unless asked
        (ppb.Resize(width=800, height=100, fit=ppb.FIT_FILL), (400, 100)),
        (ppb.Resize(width=1000, height=100, fit=ppb.FIT_COVER), (400, 40)),
    ],
)
def test_resize_fits(
    pstub: ppb_grpc.ProcessorServiceStub,
    ids: dict[str, str],
    resize: ppb.Resize,
    size: tuple[int, int],
) -> None:
    image, _ = run(pstub, ids["halves"], Op(resize=resize))
    assert image.size == size


@pytest.mark.parametrize(
    ("gravity", "colour"),
    [(ppb.GRAVITY_WEST, "red"), (ppb.GRAVITY_EAST, "blue"), (ppb.GRAVITY_NORTH_WEST, "red")],
)
def test_cover_gravity_keeps_the_named_side(
    pstub: ppb_grpc.ProcessorServiceStub, ids: dict[str, str], gravity: int, colour: str
) -> None:
    resize = ppb.Resize(width=50, height=50, fit=ppb.FIT_COVER, gravity=gravity)  # type: ignore[arg-type]
    image, _ = run(pstub, ids["halves"], Op(resize=resize))
    r, _, b = ImageStat.Stat(image.convert("RGB")).mean
    assert (r > 200 and b < 50) if colour == "red" else (b > 200 and r < 50)


def test_smart_gravity_finds_the_detail(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    image = Image.new("L", (600, 200), 200)
    draw = ImageDraw.Draw(image)
    for x in range(420, 600, 6):  # stripes only on the right: the detail is there
        draw.line((x, 0, x, 200), fill=0, width=3)
    image_id = upload(stub, encode(image)).id
    resize = ppb.Resize(width=100, height=100, fit=ppb.FIT_COVER, gravity=ppb.GRAVITY_SMART)
    result, _ = run(pstub, image_id, Op(resize=resize))
    assert ImageStat.Stat(result.convert("L")).stddev[0] > 50


def test_an_animation_keeps_one_smart_window_for_every_frame(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    frames = []
    for left in (420, 0):  # the detail is on the right, then on the left
        frame = Image.new("L", (600, 200), 200)
        draw = ImageDraw.Draw(frame)
        for x in range(left, left + 180, 6):
            draw.line((x, 0, x, 200), fill=0, width=3)
        frames.append(frame.convert("P"))
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    image_id = upload(stub, gif).id
    resize = ppb.Resize(width=100, height=100, fit=ppb.FIT_COVER, gravity=ppb.GRAVITY_SMART)
    result, _ = run(pstub, image_id, Op(resize=resize), format=ppb.OUTPUT_FORMAT_GIF)
    assert getattr(result, "n_frames", 1) == 2
    spread = []
    for n in range(2):
        result.seek(n)
        spread.append(ImageStat.Stat(result.convert("L")).stddev[0])
    # Chosen on the first frame, where the stripes are on the right; the same window
    # on the second frame sees flat grey, as a crop that does not jump about must.
    assert spread[0] > 50 and spread[1] < 5, spread


def test_crop_takes_the_rectangle(
    pstub: ppb_grpc.ProcessorServiceStub, ids: dict[str, str]
) -> None:
    image, _ = run(pstub, ids["halves"], Op(crop=ppb.Crop(left=190, top=10, width=20, height=30)))
    assert image.size == (20, 30)
    rgb = image.convert("RGB")
    assert rgb.getpixel((0, 0)) == (255, 0, 0) and rgb.getpixel((19, 0)) == (0, 0, 255)
    error = failure(
        pstub.Process,
        process_request(ids["halves"], Op(crop=ppb.Crop(left=500, top=0, width=5, height=5))),
    )
    assert (error.reason, error.metadata["field"]) == (Reason.CROP_OUTSIDE_IMAGE, "crop")


@pytest.mark.parametrize(
    ("op", "where", "size"),
    [
        (Op(rotate=ppb.Rotate(angle=90)), "tr", (200, 300)),  # clockwise
        (Op(rotate=ppb.Rotate(angle=180)), "br", (300, 200)),
        (Op(rotate=ppb.Rotate(angle=270)), "bl", (200, 300)),
        (Op(rotate=ppb.Rotate(angle=-90)), "bl", (200, 300)),
        (Op(flip=ppb.Flip()), "bl", (300, 200)),
        (Op(flop=ppb.Flop()), "tr", (300, 200)),
    ],
)
def test_rotations_and_mirrors_move_the_mark(
    pstub: ppb_grpc.ProcessorServiceStub,
    ids: dict[str, str],
    op: ppb.Operation,
    where: str,
    size: tuple[int, int],
) -> None:
    image, _ = run(pstub, ids["marked"], op)
    assert image.size == size
    assert corner(image) == where


def test_free_rotation_fills_with_the_background(
    pstub: ppb_grpc.ProcessorServiceStub, ids: dict[str, str]
) -> None:
    green = ppb.Color(red=0, green=255, blue=0, alpha=255)
    image, _ = run(pstub, ids["marked"], Op(rotate=ppb.Rotate(angle=30, background=green)))
    assert image.width > 300 and image.height > 200
    assert image.convert("RGB").getpixel((1, 1)) == (0, 255, 0)
    clear = ppb.Color(red=0, green=0, blue=0, alpha=0)
    image, _ = run(pstub, ids["marked"], Op(rotate=ppb.Rotate(angle=30, background=clear)))
    assert image.mode == "RGBA" and image.getpixel((1, 1))[3] == 0  # type: ignore[index]


def test_colour_operations(pstub: ppb_grpc.ProcessorServiceStub, ids: dict[str, str]) -> None:
    grey, _ = run(pstub, ids["halves"], Op(grayscale=ppb.Grayscale()))
    assert grey.mode == "L"
    dark, _ = run(pstub, ids["marked"], Op(adjust=ppb.Adjust(brightness=0.5)))
    assert (
        ImageStat.Stat(dark.convert("L")).mean[0]
        < 0.6 * ImageStat.Stat(marked().convert("L")).mean[0]
    )
    flat, _ = run(pstub, ids["halves"], Op(adjust=ppb.Adjust(saturation=0.01)))
    r, g, b = flat.convert("RGB").getpixel((10, 10))  # type: ignore[misc]
    assert max(r, g, b) - min(r, g, b) < 10
    contrast, _ = run(pstub, ids["marked"], Op(adjust=ppb.Adjust(contrast=0.01)))
    assert ImageStat.Stat(contrast.convert("L")).stddev[0] < 5


def test_blur_sharpen_and_pixelate(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    noise = Image.effect_noise((200, 200), 60).convert("RGB")
    image_id = upload(stub, encode(noise)).id
    spread = ImageStat.Stat(noise.convert("L")).stddev[0]
    blurred, _ = run(pstub, image_id, Op(blur=ppb.Blur(sigma=10)))
    assert ImageStat.Stat(blurred.convert("L")).stddev[0] < spread / 4
    sharp, _ = run(pstub, image_id, Op(sharpen=ppb.Sharpen(sigma=2)))
    assert ImageStat.Stat(sharp.convert("L")).stddev[0] > spread
    blocks, _ = run(pstub, image_id, Op(pixelate=ppb.Pixelate(size=20)))
    assert len(blocks.convert("RGB").getcolors(100_000) or []) <= 100


@pytest.mark.parametrize(
    ("fmt", "pillow", "media"),
    [
        (ppb.OUTPUT_FORMAT_JPEG, "JPEG", "image/jpeg"),
        (ppb.OUTPUT_FORMAT_PNG, "PNG", "image/png"),
        (ppb.OUTPUT_FORMAT_WEBP, "WEBP", "image/webp"),
        (ppb.OUTPUT_FORMAT_AVIF, "AVIF", "image/avif"),
        (ppb.OUTPUT_FORMAT_GIF, "GIF", "image/gif"),
    ],
)
def test_output_formats(
    pstub: ppb_grpc.ProcessorServiceStub, ids: dict[str, str], fmt: int, pillow: str, media: str
) -> None:
    image, meta = run(pstub, ids["halves"], Op(resize=ppb.Resize(width=100)), format=fmt)
    assert image.format == pillow and meta.media_type == media  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("accept", "pillow"),
    [
        (["image/avif", "image/webp", "*/*"], "AVIF"),
        (["image/webp", "*/*"], "WEBP"),
        (["*/*"], "PNG"),  # the source's own kind
        ([], "PNG"),
    ],
)
def test_auto_format_negotiates(
    pstub: ppb_grpc.ProcessorServiceStub, ids: dict[str, str], accept: list[str], pillow: str
) -> None:
    image, _ = run(
        pstub,
        ids["halves"],
        Op(resize=ppb.Resize(width=64)),
        format=ppb.OUTPUT_FORMAT_AUTO,
        accept=accept,
    )
    assert image.format == pillow


def test_encoder_options(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    photo = Image.effect_noise((300, 300), 40).convert("RGB")
    image_id = upload(stub, encode(photo)).id
    _, low = collect(
        pstub.Process(process_request(image_id, format=ppb.OUTPUT_FORMAT_JPEG, quality=20))
    )
    _, high = collect(
        pstub.Process(process_request(image_id, format=ppb.OUTPUT_FORMAT_JPEG, quality=95))
    )
    assert len(low) < len(high)
    progressive, _ = run(pstub, image_id, format=ppb.OUTPUT_FORMAT_JPEG, progressive=True)
    assert progressive.info.get("progressive")
    lossless, _ = run(pstub, image_id, format=ppb.OUTPUT_FORMAT_WEBP, lossless=True)
    assert lossless.convert("RGB").tobytes() == photo.tobytes()


def test_alpha_is_kept_or_flattened_onto_the_background(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    image = Image.new("RGBA", (50, 50), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 25, 50))
    image_id = upload(stub, encode(image)).id
    kept, _ = run(pstub, image_id, format=ppb.OUTPUT_FORMAT_WEBP, lossless=True)
    assert kept.mode == "RGBA" and kept.getpixel((5, 5))[3] == 0  # type: ignore[index]
    yellow = ppb.Color(red=255, green=255, blue=0, alpha=255)
    flat, _ = run(pstub, image_id, format=ppb.OUTPUT_FORMAT_JPEG, background=yellow)
    assert flat.mode == "RGB"
    r, g, b = flat.getpixel((5, 5))  # type: ignore[misc]
    assert r > 240 and g > 240 and b < 20
    white, _ = run(pstub, image_id, format=ppb.OUTPUT_FORMAT_JPEG)
    assert min(white.getpixel((5, 5))) > 240  # type: ignore[arg-type]


def test_metadata_is_stripped_but_icc_kept(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x0112] = 1
    exif.get_ifd(0x8825)[2] = (52.0, 30.0, 0.0)  # GPSLatitude
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(marked(), "JPEG", exif=exif.tobytes(), icc_profile=icc)
    image_id = upload(stub, source).id
    for fmt in (
        ppb.OUTPUT_FORMAT_JPEG,
        ppb.OUTPUT_FORMAT_WEBP,
        ppb.OUTPUT_FORMAT_PNG,
        ppb.OUTPUT_FORMAT_AVIF,
    ):
        image, _ = run(pstub, image_id, Op(resize=ppb.Resize(width=100)), format=fmt)
        assert not image.getexif(), fmt
        assert "xmp" not in image.info
        assert image.info.get("icc_profile") == icc, fmt
    grey, _ = run(pstub, image_id, Op(grayscale=ppb.Grayscale()), format=ppb.OUTPUT_FORMAT_PNG)
    assert grey.mode == "L" and "icc_profile" not in grey.info  # an RGB profile would lie
    kept, _ = run(pstub, image_id, format=ppb.OUTPUT_FORMAT_JPEG, keep_metadata=True)
    assert kept.getexif()[0x010F] == "CameraMaker" and kept.getexif()[0x0112] == 1


def test_bad_parameters_name_the_field(
    pstub: ppb_grpc.ProcessorServiceStub, ids: dict[str, str]
) -> None:
    image_id = ids["halves"]
    cases = [
        (Op(resize=ppb.Resize(width=9000)), "resize.width"),
        (Op(resize=ppb.Resize(width=5000, dpr=2)), "resize.width"),
        (Op(resize=ppb.Resize(width=10, dpr=5)), "resize.dpr"),
        (Op(resize=ppb.Resize()), "resize.width"),
        (Op(blur=ppb.Blur(sigma=51)), "blur.sigma"),
        (Op(blur=ppb.Blur(sigma=float("nan"))), "blur.sigma"),
        (Op(crop=ppb.Crop(width=0, height=5)), "crop"),
        (Op(adjust=ppb.Adjust(brightness=11)), "adjust"),
        (Op(), "operations"),
    ]
    for op, field in cases:
        error = failure(pstub.Process, process_request(image_id, op))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert (error.reason, error.metadata.get("field")) == (Reason.INVALID_ARGUMENT, field)
    twice = process_request(image_id, Op(flip=ppb.Flip()), Op(flip=ppb.Flip()))
    assert failure(pstub.Process, twice).metadata["field"] == "flip"
    quality = process_request(image_id, format=ppb.OUTPUT_FORMAT_JPEG, quality=101)
    assert failure(pstub.Process, quality).metadata["field"] == "output.quality"
    for bad_id in ("", "nope", "../" * 8):
        error = failure(pstub.Process, process_request(bad_id))
        assert error.metadata["field"] == "image_id"
    error = failure(pstub.Process, process_request("Z" * 22))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, Reason.IMAGE_NOT_FOUND)


def test_the_sources_own_kind_gets_the_formats_default_quality(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    photo = Image.effect_noise((300, 200), 40).convert("RGB")
    image_id = upload(stub, encode(photo, "JPEG", quality=95)).id
    auto = collect(pstub.Process(process_request(image_id, Op(resize=ppb.Resize(width=150)))))[1]
    explicit = collect(
        pstub.Process(
            process_request(
                image_id, Op(resize=ppb.Resize(width=150)), format=ppb.OUTPUT_FORMAT_JPEG
            )
        )
    )[1]
    assert auto == explicit  # JPEG at 82, not at quality 0


def test_a_gif_that_plays_once_still_plays_once(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    frames = [Image.new("RGB", (20, 20), (80 * n, 0, 0)) for n in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert "loop" not in Image.open(io.BytesIO(out.getvalue())).info
    image_id = upload(stub, out.getvalue()).id
    flipped, _ = run(pstub, image_id, Op(flip=ppb.Flip()), format=ppb.OUTPUT_FORMAT_GIF)
    assert getattr(flipped, "n_frames", 1) == 3 and "loop" not in flipped.info
    looping = io.BytesIO()
    frames[0].save(looping, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image_id = upload(stub, looping.getvalue()).id
    assert (
        run(pstub, image_id, Op(flop=ppb.Flop()), format=ppb.OUTPUT_FORMAT_GIF)[0].info["loop"] == 0
    )


BLUE = ppb.Color(red=0, green=0, blue=255, alpha=255)
CLEAR = ppb.Color(red=0, green=0, blue=0, alpha=0)


def rows(image: Image.Image, x: int) -> list[tuple[int, ...]]:
    """The colours down one column, each run once (top to bottom)."""
    rgb = image.convert("RGB")
    runs: list[tuple[int, ...]] = []
    for y in range(rgb.height):
        pixel = rgb.getpixel((x, y))
        if not runs or runs[-1] != pixel:
            runs.append(pixel)  # type: ignore[arg-type]
    return runs


def test_fit_pad_letterboxes_on_the_background(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    image_id = upload(stub, encode(Image.new("RGB", (200, 100), (255, 0, 0)))).id
    pad = ppb.Resize(width=100, height=100, fit=ppb.FIT_PAD, background=BLUE)
    image, _ = run(pstub, image_id, Op(resize=pad))
    assert image.size == (100, 100)
    rgb = image.convert("RGB")
    assert [rgb.getpixel((50, y)) for y in (0, 24, 25, 74, 75, 99)] == [
        (0, 0, 255),
        (0, 0, 255),
        (255, 0, 0),
        (255, 0, 0),
        (0, 0, 255),
        (0, 0, 255),
    ]
    # Placed by gravity: north puts the bands below, not around.
    north = ppb.Resize(
        width=100, height=100, fit=ppb.FIT_PAD, gravity=ppb.GRAVITY_NORTH, background=BLUE
    )
    image, _ = run(pstub, image_id, Op(resize=north))
    assert rows(image, 50) == [(255, 0, 0), (0, 0, 255)]
    assert image.convert("RGB").getpixel((50, 49)) == (255, 0, 0)
    # Not enlarged without enlarge: the canvas is still the box.
    small = ppb.Resize(width=300, height=300, fit=ppb.FIT_PAD, gravity=ppb.GRAVITY_SOUTH_EAST)
    image, _ = run(pstub, image_id, Op(resize=small))
    assert image.size == (300, 300)
    assert image.convert("RGB").getpixel((99, 199)) == (255, 255, 255)  # default white
    assert image.convert("RGB").getpixel((100, 200)) == (255, 0, 0)
    # A transparent background stays transparent where the format keeps alpha.
    clear = ppb.Resize(width=100, height=100, fit=ppb.FIT_PAD, background=CLEAR)
    image, _ = run(pstub, image_id, Op(resize=clear))
    assert image.mode == "RGBA"
    assert image.getpixel((50, 5))[3] == 0 and image.getpixel((50, 50)) == (255, 0, 0, 255)  # type: ignore[index]


def test_pad_adds_each_border_in_css_order(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    image_id = upload(stub, encode(Image.new("RGB", (100, 50), (255, 0, 0)))).id
    pad = ppb.Pad(top=10, right=20, bottom=30, left=40, background=BLUE)
    image, _ = run(pstub, image_id, Op(pad=pad))
    assert image.size == (40 + 100 + 20, 10 + 50 + 30)
    rgb = image.convert("RGB")
    assert rows(rgb, 60) == [(0, 0, 255), (255, 0, 0), (0, 0, 255)]
    assert [rgb.getpixel((60, y)) for y in (9, 10, 59, 60)] == [
        (0, 0, 255),
        (255, 0, 0),
        (255, 0, 0),
        (0, 0, 255),
    ]
    assert [rgb.getpixel((x, 30)) for x in (39, 40, 139, 140)] == [
        (0, 0, 255),
        (255, 0, 0),
        (255, 0, 0),
        (0, 0, 255),
    ]
    # After the resize, before the rotation: the borders are not scaled, and turn.
    image, _ = run(
        pstub,
        image_id,
        Op(rotate=ppb.Rotate(angle=90)),
        Op(pad=ppb.Pad(top=5, right=5, bottom=5, left=5)),
        Op(resize=ppb.Resize(width=50)),
    )
    assert image.size == (25 + 10, 50 + 10)
    # A grey image padded in colour is in colour; a transparent border is transparent.
    grey_id = upload(stub, encode(Image.new("L", (10, 10), 100))).id
    image, _ = run(pstub, grey_id, Op(pad=ppb.Pad(left=3, background=BLUE)))
    assert image.convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    image, _ = run(pstub, grey_id, Op(pad=ppb.Pad(left=3, background=CLEAR)))
    assert image.mode == "LA" and image.getpixel((0, 0))[1] == 0  # type: ignore[index]


def bordered(
    size: tuple[int, int] = (200, 200), box: tuple[int, int, int, int] = (70, 90, 120, 120)
) -> Image.Image:
    """A 50x30 green box inside a white canvas."""
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste((0, 160, 0), box)
    return image


def test_trim_keeps_the_inner_box(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    image_id = upload(stub, encode(bordered())).id
    image, _ = run(pstub, image_id, Op(trim=ppb.Trim()))
    assert image.size == (50, 30)
    assert image.convert("RGB").getcolors() == [(50 * 30, (0, 160, 0))]
    # First of all: a crop is of the trimmed image.
    crop = Op(crop=ppb.Crop(left=10, top=0, width=5, height=5))
    image, _ = run(pstub, image_id, crop, Op(trim=ppb.Trim()))
    assert image.size == (5, 5) and image.convert("RGB").getpixel((0, 0)) == (0, 160, 0)
    # One colour: nothing to keep, so the image is left as it is.
    flat_id = upload(stub, encode(Image.new("RGB", (40, 20), (9, 9, 9)))).id
    image, _ = run(pstub, flat_id, Op(trim=ppb.Trim()))
    assert image.size == (40, 20)


def test_trim_tolerates_jpeg_noise_within_its_threshold(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    noisy = bordered()
    # A faint speckle on the border, as a camera or a JPEG leaves.
    for n in range(0, 200, 7):
        noisy.putpixel((n, (n * 13) % 200), (250, 247, 252))
    image_id = upload(stub, encode(noisy, "JPEG", quality=75)).id
    image, _ = run(pstub, image_id, Op(trim=ppb.Trim(threshold=40)))
    # JPEG rings a pixel or two around the box: no more.
    assert 50 <= image.width <= 54 and 30 <= image.height <= 34, image.size
    exact, _ = run(pstub, image_id, Op(trim=ppb.Trim(threshold=1)))
    assert exact.width > 60  # the speckle counts at a threshold of 1


def test_trim_cuts_a_transparent_border(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    image = Image.new("RGBA", (120, 80), (0, 0, 0, 0))
    image.paste((255, 0, 0, 0), (0, 0, 60, 80))  # transparent too, whatever its colour
    image.paste((255, 0, 0, 255), (30, 20, 40, 70))
    image_id = upload(stub, encode(image)).id
    trimmed, _ = run(pstub, image_id, Op(trim=ppb.Trim()))
    assert trimmed.size == (10, 50)


def test_pad_and_trim_keep_an_animations_frames(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    frames = []
    for shade in (0, 120, 240):
        frame = bordered()
        frame.paste((shade, 0, 0), (70, 90, 120, 120))
        if shade == 120:  # later frames are cut by the first frame's box
            frame.paste((0, 0, 0), (0, 0, 10, 10))
        frames.append(frame)
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=60)
    image_id = upload(stub, gif).id
    image, _ = run(
        pstub,
        image_id,
        Op(trim=ppb.Trim()),
        Op(pad=ppb.Pad(top=2, right=2, bottom=2, left=2, background=BLUE)),
        format=ppb.OUTPUT_FORMAT_GIF,
    )
    assert (getattr(image, "n_frames", 1), image.size) == (3, (54, 34))
    for n, shade in enumerate((0, 120, 240)):
        image.seek(n)
        rgb = image.convert("RGB")
        assert rgb.getpixel((0, 0)) == (0, 0, 255)
        assert abs(rgb.getpixel((27, 17))[0] - shade) < 10  # type: ignore[index]
    letterbox = ppb.Resize(width=80, height=40, fit=ppb.FIT_PAD, background=BLUE)
    image, _ = run(pstub, image_id, Op(resize=letterbox), format=ppb.OUTPUT_FORMAT_WEBP)
    assert (getattr(image, "n_frames", 1), image.size) == (3, (80, 40))


def test_bad_pad_and_trim_name_the_field(
    pstub: ppb_grpc.ProcessorServiceStub, ids: dict[str, str]
) -> None:
    cases = [
        (Op(pad=ppb.Pad(top=9000)), "pad"),
        (Op(pad=ppb.Pad(left=-1)), "pad"),
        (Op(trim=ppb.Trim(threshold=256)), "trim.threshold"),
        (
            Op(resize=ppb.Resize(width=9, height=9, fit=ppb.FIT_PAD, gravity=ppb.GRAVITY_SMART)),
            "resize.gravity",
        ),
    ]
    for op, field in cases:
        error = failure(pstub.Process, process_request(ids["halves"], op))
        assert (error.reason, error.metadata.get("field")) == (Reason.INVALID_ARGUMENT, field)
