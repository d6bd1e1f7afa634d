"""The render pipeline in-process: output limits are judged before any pixel is decoded."""

from __future__ import annotations

import io
import itertools

import pytest
from imageservice.v1 import processor_service_pb2 as ppb
from PIL import Image

from common.errors import Reason, ServiceError
from processor import pipeline, spec
from processor.operations import resize
from processor.output import negotiate
from tests.support import (
    LIMITS,
    SPEC_LIMITS,
    animation,
    corner,
    encode,
    limits_of,
    marked,
    open_image,
    wanted,
)

Op = ppb.Operation


SIZES = [(300, 200), (200, 300), (97, 61), (1, 40)]
OPS = [
    (),
    (Op(resize=ppb.Resize(width=120)),),
    (Op(resize=ppb.Resize(width=150, height=40, fit=ppb.FIT_COVER)),),
    (Op(resize=ppb.Resize(width=150, height=40, fit=ppb.FIT_OUTSIDE, enlarge=True)),),
    (Op(resize=ppb.Resize(width=55, height=77, fit=ppb.FIT_FILL)),),
    (Op(crop=ppb.Crop(left=0, top=5, width=70, height=500)),),
    (Op(rotate=ppb.Rotate(angle=90)),),
    (Op(rotate=ppb.Rotate(angle=33.5)),),
    (Op(rotate=ppb.Rotate(angle=-1)),),
    (
        Op(crop=ppb.Crop(left=0, top=0, width=80, height=30)),
        Op(resize=ppb.Resize(width=64, height=64, fit=ppb.FIT_COVER)),
        Op(rotate=ppb.Rotate(angle=200)),
    ),
    (Op(pad=ppb.Pad(top=3, right=0, bottom=7, left=11)),),
    (Op(resize=ppb.Resize(width=90, height=70, fit=ppb.FIT_PAD, gravity=ppb.GRAVITY_EAST)),),
    (
        Op(crop=ppb.Crop(left=0, top=2, width=50, height=50)),
        Op(resize=ppb.Resize(width=150, height=40, fit=ppb.FIT_PAD, enlarge=True)),
        Op(pad=ppb.Pad(top=1, right=2, bottom=3, left=4)),
        Op(rotate=ppb.Rotate(angle=33.5)),
    ),
]
# What cannot grow a smaller image (no enlarge): planned on the untrimmed size, an upper
# bound of what trim then makes.
SHRINKING = [ops for ops in OPS if not any(op.resize.enlarge for op in ops)]


@pytest.mark.parametrize(("size", "ops"), list(itertools.product(SIZES, OPS)))
def test_the_plan_is_the_size_rendered(size: tuple[int, int], ops: tuple[Op, ...]) -> None:
    request = wanted(*ops, format=ppb.OUTPUT_FORMAT_PNG)
    rendered = pipeline.render(io.BytesIO(encode(marked(size))), request, LIMITS)
    assert pipeline.plan(size, 1, request, LIMITS) == (rendered.width, rendered.height)


def test_the_plan_follows_the_orientation_and_the_reduced_jpeg_decode() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    source = encode(marked((1600, 1200)), "JPEG", exif=exif.tobytes())
    request = wanted(Op(resize=ppb.Resize(width=101)), format=ppb.OUTPUT_FORMAT_PNG)
    rendered = pipeline.render(io.BytesIO(source), request, LIMITS)
    assert (rendered.width, rendered.height) == (101, 135)


def test_an_animation_too_large_as_a_whole_is_refused_before_any_frame_is_touched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transformed = 0
    transform = pipeline._transform

    def counting(*args: object) -> Image.Image:
        nonlocal transformed
        transformed += 1
        return transform(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "_transform", counting)
    limits = limits_of(100_000, 8192)
    source = animation((200, 200), 10)  # 40,000 pixels a frame, 400,000 in all
    with pytest.raises(ServiceError) as refused:
        pipeline.render(io.BytesIO(source), wanted(format=ppb.OUTPUT_FORMAT_GIF), limits)
    assert refused.value.reason == Reason.OUTPUT_TOO_LARGE
    assert "10 frames of 200x200" in refused.value.message
    assert transformed == 0
    # Small enough as a whole: every frame.
    small = wanted(Op(resize=ppb.Resize(width=90)), format=ppb.OUTPUT_FORMAT_GIF)
    assert pipeline.render(io.BytesIO(source), small, limits).frames == 10
    assert transformed == 10


def test_frames_first_and_all_or_first() -> None:
    limits = limits_of(100_000, 8192)
    source = animation((200, 200), 10)
    gif = ppb.OUTPUT_FORMAT_GIF
    still = pipeline.render(io.BytesIO(source), wanted(format=gif, frames=ppb.FRAMES_FIRST), limits)
    assert (still.frames, still.width) == (1, 200)
    # Too large whole: the first frame alone; small enough: all of them.
    fallback = wanted(Op(blur=ppb.Blur(sigma=2)), format=gif, frames=ppb.FRAMES_ALL_OR_FIRST)
    assert pipeline.render(io.BytesIO(source), fallback, limits).frames == 1
    roomy = limits_of(1_000_000, 8192)
    assert pipeline.render(io.BytesIO(source), fallback, roomy).frames == 10
    # A source too costly to decode whole (stored under a laxer total) falls back too.
    costly = pipeline.RenderLimits(1_000_000, 1000, 8192, max_total_pixels=300_000)
    assert pipeline.render(io.BytesIO(source), fallback, costly).frames == 1
    with pytest.raises(ServiceError) as refused:
        pipeline.render(io.BytesIO(source), wanted(format=gif), costly)
    assert refused.value.reason == Reason.IMAGE_TOO_LARGE


def test_a_result_as_large_as_its_source_is_never_refused_for_its_size() -> None:
    # A long panorama within the pixel limit, longer than the largest side asked for.
    limits = limits_of(50_000_000, 500)
    source = encode(marked((900, 100)))
    blurred = wanted(Op(blur=ppb.Blur(sigma=3)), format=ppb.OUTPUT_FORMAT_PNG)
    assert pipeline.render(io.BytesIO(source), blurred, limits).width == 900
    bigger = wanted(Op(rotate=ppb.Rotate(angle=10)), format=ppb.OUTPUT_FORMAT_PNG)
    with pytest.raises(ServiceError) as refused:
        pipeline.render(io.BytesIO(source), bigger, limits)
    assert refused.value.reason == Reason.OUTPUT_TOO_LARGE


BROWSER_ACCEPT = ["image/avif", "image/webp", "image/apng", "image/*", "*/*;q=0.8"]


@pytest.mark.parametrize(
    ("accept", "preference", "expected"),
    [
        (BROWSER_ACCEPT, ("avif", "webp"), ("avif", "webp")),
        (["image/avif;q=0", "image/webp"], ("avif", "webp"), ("webp", "webp")),
        (["image/avif", "image/webp;q=0"], ("avif", "webp"), ("avif", "source")),
        (["image/webp;q=0.5", "image/avif"], ("webp", "avif"), ("webp", "webp")),
        (["IMAGE/AVIF ; Q=0.1"], ("avif", "webp"), ("avif", "source")),
        (["image/avif;q=zero"], ("avif", "webp"), ("source", "source")),
        (["*/*", "image/*"], ("avif", "webp"), ("source", "source")),
        (BROWSER_ACCEPT, ("webp",), ("webp", "webp")),
        (BROWSER_ACCEPT, (), ("source", "source")),
    ],
)
def test_auto_reads_accept_with_its_q_values(
    accept: list[str], preference: tuple[str, ...], expected: tuple[str, str]
) -> None:
    assert negotiate(accept, preference) == expected


def auto(accept: list[str], *ops: ppb.Operation) -> spec.Spec:
    output = ppb.OutputOptions(format=ppb.OUTPUT_FORMAT_AUTO, accept=accept)
    return spec.parse(list(ops), output, SPEC_LIMITS)


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (BROWSER_ACCEPT, "image/webp"),  # what a browser sends: AVIF would lose frames
        (["image/avif", "*/*"], "image/gif"),  # no WebP: the source's own kind
    ],
)
def test_an_animation_stays_animated_through_auto(accept: list[str], media_type: str) -> None:
    made = pipeline.render(
        io.BytesIO(animation((64, 48), 5)), auto(accept, Op(resize=ppb.Resize(width=32))), LIMITS
    )
    assert (made.media_type, made.frames, made.width) == (media_type, 5, 32)
    with Image.open(io.BytesIO(made.data)) as image:
        assert getattr(image, "n_frames", 1) == 5


def test_a_still_through_auto_takes_the_best_format_accepted() -> None:
    still = encode(Image.new("RGB", (64, 48), (200, 30, 30)), "GIF")
    made = pipeline.render(io.BytesIO(still), auto(BROWSER_ACCEPT), LIMITS)
    assert made.media_type == "image/avif"
    # An animation asked for its first frame alone is a still: AVIF too.
    one = spec.parse(
        [],
        ppb.OutputOptions(
            format=ppb.OUTPUT_FORMAT_AUTO, accept=BROWSER_ACCEPT, frames=ppb.FRAMES_FIRST
        ),
        SPEC_LIMITS,
    )
    made_first = pipeline.render(io.BytesIO(animation((64, 48), 5)), one, LIMITS)
    assert (made_first.media_type, made_first.frames) == ("image/avif", 1)


def framed(size: tuple[int, int]) -> Image.Image:
    """marked() at half the size, amid a white border trim cuts away."""
    image = Image.new("RGB", size, (255, 255, 255))
    inner = marked((max(1, size[0] // 2), max(1, size[1] // 2)))
    image.paste(inner, ((size[0] - inner.width) // 2, (size[1] - inner.height) // 2))
    return image


TRIM = Op(trim=ppb.Trim())


@pytest.mark.parametrize(("size", "ops"), list(itertools.product(SIZES, SHRINKING)))
def test_a_trim_is_planned_on_the_untrimmed_size_an_upper_bound(
    size: tuple[int, int], ops: tuple[Op, ...]
) -> None:
    request = wanted(TRIM, *ops, format=ppb.OUTPUT_FORMAT_PNG)
    rendered = pipeline.render(io.BytesIO(encode(framed(size))), request, LIMITS)
    width, height = pipeline.plan(size, 1, request, LIMITS)
    assert rendered.width <= width and rendered.height <= height
    # Exactly what the steps after it make of the size trim made.
    trimmed = (max(1, size[0] // 2), max(1, size[1] // 2))
    after = wanted(*ops, format=ppb.OUTPUT_FORMAT_PNG)
    assert pipeline.plan(trimmed, 1, after, LIMITS) == (rendered.width, rendered.height)


def strip(size: tuple[int, int] = (400, 400), width: int = 4) -> bytes:
    """A black strip width wide down the middle of a white square: trim keeps the strip."""
    image = Image.new("L", size, 255)
    image.paste(0, ((size[0] - width) // 2, 0, (size[0] + width) // 2, size[1]))
    return encode(image)


def test_what_follows_a_trim_is_judged_again_before_it_grows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Untrimmed, a 400x400 fits outside 100x100 as itself (100x100); trimmed to a 4x400
    # strip, it would be 100x10000: refused before the resize allocates it.
    resampled: list[tuple[int, int]] = []
    resample = resize.resample

    def recording(image: Image.Image, size: tuple[int, int]) -> Image.Image:
        resampled.append(size)
        return resample(image, size)

    monkeypatch.setattr(resize, "resample", recording)
    outside = Op(resize=ppb.Resize(width=100, height=100, fit=ppb.FIT_OUTSIDE, enlarge=True))
    request = wanted(TRIM, outside, format=ppb.OUTPUT_FORMAT_PNG)
    assert pipeline.plan((400, 400), 1, request, LIMITS) == (100, 100)
    with pytest.raises(ServiceError) as refused:
        pipeline.render(io.BytesIO(strip()), request, LIMITS)
    assert refused.value.reason == Reason.OUTPUT_TOO_LARGE
    assert "8192 pixels on a side" in refused.value.message
    assert resampled == []
    # The pixel limit, and an animation's every frame, alike.
    few = limits_of(60_000, 8192)
    animated = wanted(TRIM, outside, format=ppb.OUTPUT_FORMAT_GIF)
    frames = [Image.open(io.BytesIO(strip((200, 200), w))).convert("P") for w in (20, 30)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40)
    assert pipeline.plan((200, 200), 1, animated, few) == (100, 100)  # 2 x 10,000: fits
    with pytest.raises(ServiceError) as refused:  # but 100x1000 a frame once trimmed
        pipeline.render(io.BytesIO(gif), animated, few)
    assert refused.value.reason == Reason.OUTPUT_TOO_LARGE
    assert resampled == []
    # Within the limits, it renders what the steps after trim make of the trimmed size.
    made = pipeline.render(io.BytesIO(strip(width=40)), request, LIMITS)
    after = wanted(outside, format=ppb.OUTPUT_FORMAT_PNG)
    assert (made.width, made.height) == pipeline.plan((40, 400), 1, after, LIMITS) == (100, 1000)


def test_a_trimmed_jpeg_is_not_decoded_at_a_reduced_scale() -> None:
    # The resize's scale is of the trimmed part: a draft judged on the whole would have
    # decoded at 1/4 and left 100 pixels where 300 were asked for.
    image = Image.new("RGB", (1600, 1600), (255, 255, 255))
    image.paste((0, 0, 0), (600, 600, 1000, 1000))
    request = wanted(TRIM, Op(resize=ppb.Resize(width=300)), format=ppb.OUTPUT_FORMAT_PNG)
    made = pipeline.render(io.BytesIO(encode(image, "JPEG", quality=90)), request, LIMITS)
    assert made.width == 300 and 299 <= made.height <= 302


def test_only_a_letterbox_key_carries_a_background() -> None:
    blue = ppb.Color(blue=255, alpha=255)
    plain = wanted(Op(resize=ppb.Resize(width=10, height=10, background=blue)))
    assert '"background"' not in plain.canonical().split('"out"')[0]
    assert plain.key("I" * 22) == wanted(Op(resize=ppb.Resize(width=10, height=10))).key("I" * 22)
    # One side alone: every fit is contain, pad too; nothing to fill.
    one = wanted(Op(resize=ppb.Resize(width=10, fit=ppb.FIT_PAD, background=blue)))
    assert one.key("I" * 22) == wanted(Op(resize=ppb.Resize(width=10))).key("I" * 22)
    boxed = [
        wanted(Op(resize=ppb.Resize(width=10, height=10, fit=ppb.FIT_PAD, background=colour)))
        for colour in (blue, ppb.Color(red=255, alpha=255))
    ]
    assert '"letterbox"' in boxed[0].canonical()
    assert boxed[0].key("I" * 22) != boxed[1].key("I" * 22)
    # Unset is opaque white, as asked for.
    white = ppb.Color(red=255, green=255, blue=255, alpha=255)
    assert wanted(
        Op(resize=ppb.Resize(width=10, height=10, fit=ppb.FIT_PAD, background=white))
    ).key("I" * 22) == wanted(Op(resize=ppb.Resize(width=10, height=10, fit=ppb.FIT_PAD))).key(
        "I" * 22
    )


def rendered(source: bytes, *ops: Op, **output: object) -> tuple[pipeline.Rendered, Image.Image]:
    """source rendered in this process, and the result decoded."""
    result = pipeline.render(io.BytesIO(source), wanted(*ops, **output), LIMITS)
    return result, open_image(result.data)


@pytest.mark.parametrize(
    ("op", "where", "size"),
    [
        (Op(rotate=ppb.Rotate(angle=90)), "tr", (200, 300)),
        (Op(rotate=ppb.Rotate(angle=180)), "br", (300, 200)),
        (Op(rotate=ppb.Rotate(angle=-90)), "bl", (200, 300)),
        (Op(flip=ppb.Flip()), "bl", (300, 200)),
        (Op(flop=ppb.Flop()), "tr", (300, 200)),
        (Op(resize=ppb.Resize(width=150)), "tl", (150, 100)),
    ],
)
def test_a_render_in_memory_moves_the_mark(op: Op, where: str, size: tuple[int, int]) -> None:
    result, image = rendered(encode(marked()), op, format=ppb.OUTPUT_FORMAT_PNG)
    assert (result.width, result.height) == image.size == size
    assert corner(image) == where


def test_a_crop_takes_the_rectangle_asked_for() -> None:
    # The red mark is the top-left 60x40 of the grey 300x200: a crop inside it is all red.
    _, red = rendered(encode(marked()), Op(crop=ppb.Crop(left=5, top=5, width=40, height=30)))
    assert red.size == (40, 30)
    assert red.convert("RGB").getcolors() == [(40 * 30, (255, 0, 0))]
    _, grey = rendered(encode(marked()), Op(crop=ppb.Crop(left=100, top=100, width=10, height=10)))
    assert grey.convert("RGB").getcolors() == [(100, (128, 128, 128))]


@pytest.mark.parametrize(
    ("fmt", "pillow", "media_type"),
    [
        (ppb.OUTPUT_FORMAT_PNG, "PNG", "image/png"),
        (ppb.OUTPUT_FORMAT_JPEG, "JPEG", "image/jpeg"),
        (ppb.OUTPUT_FORMAT_WEBP, "WEBP", "image/webp"),
        (ppb.OUTPUT_FORMAT_GIF, "GIF", "image/gif"),
    ],
)
def test_a_render_is_encoded_in_the_format_asked_for(
    fmt: int, pillow: str, media_type: str
) -> None:
    result, image = rendered(encode(marked()), Op(resize=ppb.Resize(width=30)), format=fmt)
    assert (image.format, result.media_type) == (pillow, media_type)
    assert image.size == (30, 20)


def test_grayscale_leaves_no_colour() -> None:
    _, image = rendered(encode(marked()), Op(grayscale=ppb.Grayscale()))
    assert image.mode == "L"
    assert len(image.getcolors() or []) == 2  # the mark and the grey, each a shade of grey
