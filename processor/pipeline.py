"""Decode, transform and encode one image with Pillow. Runs in worker threads.

Pillow releases the GIL while it decodes, resamples, filters and encodes, which is
most of the time spent here, so threads use every core (see docs/decisions.md).
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, cast

from PIL import Image, ImageCms, ImageMath, ImageSequence

from common.errors import Reason, ServiceError
from common.imaging import (
    SOURCE_FORMATS,
    decoding_errors,
    fast_decode,
    image_too_large,
    open_checked,
    too_many_pixels,
)
from processor.operations.base import RGBA, Memo, Step, Stored, grey
from processor.operations.crop import Crop
from processor.operations.resize import Resize
from processor.operations.trim import Trim
from processor.output import DEFAULT_QUALITY, Output
from processor.spec import Spec

# A render's media type, by output format (common.imaging has a stored original's).
OUTPUT_MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
    "gif": "image/gif",
    "heic": "image/heic",
    "jxl": "image/jxl",
}
PILLOW_NAMES = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "avif": "AVIF",
    "gif": "GIF",
    "heic": "HEIF",
    "jxl": "JXL",
}
# What "the source's kind" means for each source format. Browsers mostly cannot show
# HEIC or JPEG XL, so those come back as JPEG (PNG when they have alpha: SOURCE_KIND_ALPHA).
SOURCE_KIND = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "AVIF": "avif",
    "TIFF": "png",
    "BMP": "png",
    "ICO": "png",
    "HEIF": "jpeg",
    "JXL": "jpeg",
}
SOURCE_KIND_ALPHA = {"HEIF": "png", "JXL": "png"}
ANIMATED_OUTPUTS = {"gif", "webp", "png"}
ANIMATED_SOURCES = {"GIF", "WEBP", "PNG", "AVIF"}
ALPHA_OUTPUTS = {"png", "webp", "avif", "gif", "heic", "jxl"}
ORIENTATION = 0x0112  # the EXIF tag


@dataclass(frozen=True)
class RenderLimits:
    """What a render may decode and make: its source's frames and its result."""

    max_pixels: int  # of a source frame, and of a result (its frames together)
    max_frames: int
    max_output_dimension: int
    max_total_pixels: int  # of a source's frames together


@dataclass(frozen=True)
class Rendered:
    data: bytes
    media_type: str
    width: int
    height: int
    frames: int


def render(
    source: IO[bytes],
    spec: Spec,
    limits: RenderLimits,
    images: Mapping[str, bytes] | None = None,
    steps: dict[str, float] | None = None,
) -> Rendered:
    """Turn the image in source into the bytes spec asks for, or raise ServiceError.

    images holds the bytes of the other stored images spec's steps draw (Spec.images:
    a watermark's), by id. steps, when given, is filled with each operation's seconds
    (every frame's together), by operation name.
    """
    with (
        decoding_errors(source, limits.max_pixels),
        open_checked(
            source, frozenset(SOURCE_FORMATS), limits.max_pixels, limits.max_total_pixels
        ) as image,
    ):
        fmt = spec.output.format
        if spec.output.animation and _moving(image, spec):
            fmt = spec.output.animation  # what auto picked for a still would lose frames
        if fmt == "source":
            fmt = SOURCE_KIND[image.format or "PNG"]
            if "A" in image.mode:
                fmt = SOURCE_KIND_ALPHA.get(image.format or "", fmt)
            if spec.output.animation and _moving(image, spec) and fmt not in ANIMATED_OUTPUTS:
                fmt = "gif"  # an animated AVIF, kept animated
        # Read first: getexif() is one cached object, and _metadata works on a copy.
        orientation = _orientation(image)
        metadata = _metadata(image) if spec.output.keep_metadata else {}
        frames, durations = _frames(image, spec, fmt, orientation, limits, images or {}, steps)
        # None: play once (no loop extension); 0 would mean forever.
        loop = image.info.get("loop")
        return _encode(frames, durations, loop, fmt, spec.output, metadata)


def _moving(image: Image.Image, spec: Spec) -> bool:
    """Whether the source is an animation the caller may want whole."""
    return (
        image.format in ANIMATED_SOURCES
        and getattr(image, "is_animated", False)
        and spec.output.frames != "first"
    )


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, 1 (as stored) when absent or not one of the eight."""
    if image.format == "JXL" and not getattr(image, "jpeg", False):
        # libjxl has turned the pixels by the codestream's orientation, which is the one
        # JPEG XL obeys; an Exif box's is informative. (A JPEG XL that is a recompressed
        # JPEG decodes to that JPEG, pixels as stored: its EXIF orientation applies.)
        # pillow-heif turns HEIF pixels and sets their EXIF orientation to 1 itself.
        return 1
    value = image.getexif().get(ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _metadata(image: Image.Image) -> dict[str, object]:
    """EXIF (orientation reset: the pixels are upright now) and XMP, for keep_metadata."""
    kept: dict[str, object] = {}
    if image.getexif():
        # EXIF that Pillow cannot write back is dropped, as it is by default.
        with contextlib.suppress(ValueError, TypeError, struct.error, OverflowError):
            exif = Image.Exif()
            exif.load(image.getexif().tobytes())
            if ORIENTATION in exif:
                exif[ORIENTATION] = 1
            kept["exif"] = exif.tobytes()
    if xmp := image.info.get("xmp"):
        kept["xmp"] = xmp
    return kept


def _frames(
    image: Image.Image,
    spec: Spec,
    fmt: str,
    orientation: int,
    limits: RenderLimits,
    images: Mapping[str, bytes],
    steps: dict[str, float] | None,
) -> tuple[list[Image.Image], list[int]]:
    animated = _moving(image, spec) and fmt in ANIMATED_OUTPUTS
    if image.format == "JPEG":
        _draft(image, spec, orientation)  # before planning: it changes the size decoded
    # Every limit on the result is judged here, from the header, before any pixel is
    # decoded: a refusal costs nothing, however large the source.
    width, height = plan(image.size, orientation, spec, limits)
    if animated:
        count = _frame_count(image, limits)
        # Too costly to decode whole (a source stored under a laxer limit), or too large
        # a result: refused, or the first frame alone where the caller allows it.
        if count * image.size[0] * image.size[1] > limits.max_total_pixels:
            if spec.output.frames != "all_or_first":
                raise too_many_pixels(limits.max_total_pixels)
            animated = False
        elif count * width * height > limits.max_pixels:
            if spec.output.frames != "all_or_first":
                raise ServiceError(
                    Reason.OUTPUT_TOO_LARGE,
                    f"the animation's {count} frames of {width}x{height} together would "
                    f"exceed {limits.max_pixels} pixels; ask for a smaller size, or for "
                    "the first frame alone",
                )
            animated = False
    # What a step chooses on the first frame (a smart crop's window) holds for all.
    memo: Memo = _stored(spec, images, limits)
    if not animated:
        fast_decode(image)
        image.load()
        return [_transform(image, spec, orientation, memo, limits, steps)], [0]
    frames: list[Image.Image] = []
    durations: list[int] = []
    held = 0
    for frame in ImageSequence.Iterator(image):
        # The iterator re-uses one object; each frame needs its own pixels. (Loading
        # first also matters: WebP sets a frame's duration when it loads.)
        pixels = frame.copy()
        durations.append(int(frame.info.get("duration", 0)))
        frames.append(_transform(pixels, spec, orientation, memo, limits, steps))
        # A backstop for a file whose frames differ from its header (a GIF frame can
        # grow the canvas): every frame is held until the encode.
        held += frames[-1].width * frames[-1].height
        if held > limits.max_pixels or len(frames) > limits.max_frames:
            raise ServiceError(
                Reason.OUTPUT_TOO_LARGE,
                f"the animation's frames together would exceed {limits.max_pixels} pixels",
            )
    return frames, durations


def _stored(spec: Spec, images: Mapping[str, bytes], limits: RenderLimits) -> Memo:
    """A memo holding the other stored images spec's steps draw (a watermark): each one's
    first frame, upright, in RGBA, decoded under the limits an original is."""
    memo: Memo = {}
    for field, image_id in spec.images().items():
        data = images.get(image_id)
        if data is None:  # the processor fetches every image Spec.images names
            raise ServiceError(Reason.INTERNAL, f"{field}: the image was not fetched")
        source = io.BytesIO(data)
        with (
            decoding_errors(source, limits.max_pixels),
            open_checked(
                source, frozenset(SOURCE_FORMATS), limits.max_pixels, limits.max_total_pixels
            ) as image,
        ):
            fast_decode(image)
            image.load()  # the first frame alone
            upright = _upright(_normalise(image), _orientation(image))
            memo[Stored(image_id)] = upright.convert("RGBA")
    return memo


def _frame_count(image: Image.Image, limits: RenderLimits) -> int:
    """How many frames an animated source has, read without decoding any."""
    count = int(getattr(image, "n_frames", 1))
    if count > limits.max_frames:
        raise image_too_large(f"more than {limits.max_frames} frames")
    return count


def plan(
    size: tuple[int, int], orientation: int, spec: Spec, limits: RenderLimits
) -> tuple[int, int]:
    """The size each frame of a source this size comes out at, or OUTPUT_TOO_LARGE.

    Follows _transform's every step without touching a pixel, and judges each size a
    step would allocate (a cover resize is larger than its box before the crop). A
    side may be as long as the source's own: a result is never refused for being as
    large as the image that was accepted.

    A step whose result's size depends on its pixels (trim, `SIZED_BY_PIXELS`) gives an
    upper bound, its input's size; _transform judges the steps after it again once it
    has run (see judge), so a limit is never passed, only judged a little later.
    """
    if orientation in (5, 6, 7, 8):
        size = (size[1], size[0])
    return judge(size, spec.ops, limits, longest=max(limits.max_output_dimension, *size))


def judge(
    size: tuple[int, int], ops: Sequence[Step], limits: RenderLimits, longest: int
) -> tuple[int, int]:
    """The size ops make of an image this size, every size they allocate judged: at most
    longest on a side (the limit, or the source's own side if longer) and the pixel
    limit; OUTPUT_TOO_LARGE otherwise."""
    for op in ops:
        for allocated in op.sizes(size):
            if max(allocated) > longest:
                raise ServiceError(
                    Reason.OUTPUT_TOO_LARGE,
                    f"the result would exceed {limits.max_output_dimension} pixels on a side",
                )
            if allocated[0] * allocated[1] > limits.max_pixels:
                raise ServiceError(
                    Reason.OUTPUT_TOO_LARGE, f"the result would exceed {limits.max_pixels} pixels"
                )
        size = allocated
    return size


def _draft(image: Image.Image, spec: Spec, orientation: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the output is that much smaller."""
    resize = next((op for op in spec.ops if isinstance(op, Resize)), None)
    # A crop or a trim first: the resize's scale is of a part, unknown here.
    if resize is None or any(isinstance(op, Crop | Trim) for op in spec.ops):
        return
    width, height = image.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    target, _ = resize.geometry((width, height))
    scale = max(target[0] / width, target[1] / height)
    if scale >= 0.5:
        return
    needed = (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale))
    image.draft(image.mode, needed)


def _normalise(image: Image.Image) -> Image.Image:
    """Bring any source mode to L, LA, RGB or RGBA, keeping alpha where there is some."""
    mode = image.mode
    key = image.info.get("transparency")
    if mode in ("RGB", "L") and key is not None:
        return image.convert("RGBA")  # a tRNS colour key becomes real alpha
    if mode in ("RGB", "RGBA", "L", "LA"):
        return image
    if mode == "P":
        alpha = "transparency" in image.info or (
            image.palette is not None and image.palette.mode == "RGBA"
        )
        return image.convert("RGBA" if alpha else "RGB")
    if mode == "PA":
        return image.convert("RGBA")
    if mode == "1":
        return image.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and 32-bit grey: scale into 8 bits instead of clipping at 255.
        scale = 1 / 256 if mode.startswith("I;16") or image.getextrema()[1] > 255 else 1  # type: ignore[operator]
        wide = image.convert("I")
        grey = wide.point(lambda v: v * scale).convert("L")
        if isinstance(key, int):
            alpha = ImageMath.lambda_eval(lambda e: (e["x"] != key) * 255, x=wide)
            grey.putalpha(alpha.convert("L"))
        return grey
    if mode in ("RGBa", "La"):
        return image.convert("RGBA" if mode == "RGBa" else "LA")
    if mode == "CMYK" and image.info.get("icc_profile"):
        return _cmyk_to_srgb(image)
    return image.convert("RGB")  # CMYK (Adobe inversion handled by the decoder), YCbCr, LAB...


def _cmyk_to_srgb(image: Image.Image) -> Image.Image:
    """Convert through the image's own CMYK profile, so colours come out right."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
        converted = ImageCms.profileToProfile(image, source, SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        converted = None
    if converted is None:
        converted = image.convert("RGB")
    converted.info["icc_profile"] = SRGB_BYTES
    return converted


def _transform(
    image: Image.Image,
    spec: Spec,
    orientation: int,
    memo: Memo,
    limits: RenderLimits,
    steps: dict[str, float] | None,
) -> Image.Image:
    """One frame through spec's operations (their sizes already judged by plan; after a
    step whose size depends on its pixels, such as trim, the rest judged again)."""
    image = _upright(_normalise(image), orientation)
    # The source's allowance on a side, as plan judged it (orientation applied).
    longest = max(limits.max_output_dimension, *image.size)
    for n, op in enumerate(spec.ops):
        start = time.perf_counter()
        image = op.apply(image, memo)
        if steps is not None:
            name = type(op).__name__.lower()
            steps[name] = steps.get(name, 0.0) + time.perf_counter() - start
        if getattr(op, "SIZED_BY_PIXELS", False):
            # Planned on its input's size, an upper bound: a smaller image can come out
            # larger (fit=outside with enlarge on a thin strip), so judge the rest again.
            judge(image.size, spec.ops[n + 1 :], limits, longest)
    return image


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """The frame turned as its EXIF orientation says it is seen."""
    if orientation != 1:
        method = {
            2: Image.Transpose.FLIP_LEFT_RIGHT,
            3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270,
            7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90,
        }.get(orientation)
        if method is not None:
            image = image.transpose(method)
    return image


def _flatten(image: Image.Image, background: RGBA) -> Image.Image:
    """Composite onto the background colour (for outputs without alpha)."""
    if "A" not in image.mode:
        return image
    rgb = background[:3] if image.mode == "RGBA" else (grey(background),)
    base = Image.new(image.mode[:-1], image.size, rgb if len(rgb) == 3 else rgb[0])
    base.paste(image, mask=image.getchannel("A"))
    return base


def _has_alpha(image: Image.Image) -> bool:
    if "A" not in image.mode:
        return False
    low, _ = cast(tuple[int, int], image.getchannel("A").getextrema())
    return low < 255


ENCODE_ERRORS = (OSError, ValueError, TypeError, struct.error)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
SRGB_BYTES = SRGB.tobytes()
# An ICC profile's colour space (header bytes 16-20) must match the pixels it describes.
PROFILE_SPACES = {"L": b"GRAY", "LA": b"GRAY", "RGB": b"RGB ", "RGBA": b"RGB ", "P": b"RGB "}


def _profile_fits(icc: bytes, mode: str) -> bool:
    return icc[16:20] == PROFILE_SPACES.get(mode)


def _to_srgb(image: Image.Image) -> Image.Image:
    """The pixels converted from their ICC profile to sRGB (colour ones only)."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA") or not _profile_fits(icc, image.mode):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(image, source, SRGB, outputMode=image.mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image
    return converted if converted is not None else image


def _save(image: Image.Image, fmt: str, options: dict[str, object]) -> io.BytesIO:
    out = io.BytesIO()
    image.save(out, PILLOW_NAMES[fmt], **options)
    return out


def _encode(
    frames: list[Image.Image],
    durations: list[int],
    loop: int | None,
    fmt: str,
    output: Output,
    metadata: dict[str, object],
) -> Rendered:
    if fmt not in ALPHA_OUTPUTS:
        frames = [_flatten(f, output.background) for f in frames]
    elif not any(_has_alpha(f) for f in frames):
        frames = [f.convert(f.mode[:-1]) if "A" in f.mode else f for f in frames]
    first = frames[0]
    icc = first.info.get("icc_profile")
    options: dict[str, object] = dict(metadata) if fmt != "gif" else {}
    # Always said: some encoders fall back to the image's own profile when not told.
    options["icc_profile"] = icc if icc and _profile_fits(icc, first.mode) else None
    # 0 means the format's default: "source" learns its format only here.
    quality = output.quality or DEFAULT_QUALITY.get(fmt, 0)
    if fmt == "jpeg":
        options.update(quality=quality, progressive=output.progressive)
    elif fmt == "webp":
        options.update(quality=quality, lossless=output.lossless, method=4)
    elif fmt == "avif":
        options.update(quality=quality, speed=8)
    elif fmt == "png":
        options.update(compress_level=6)
    elif fmt == "heic":
        # Not told otherwise, pillow-heif writes the frame's own EXIF and XMP (and turns
        # the picture back by the EXIF orientation): say "none" where nothing is kept.
        options.update(quality=quality, exif=metadata.get("exif"), xmp=metadata.get("xmp"))
    elif fmt == "jxl":
        # The plugin embeds no ICC profile: the pixels go in as sRGB. Effort 4 of 1-9
        # (libjxl's default is 7): 4x faster, files no larger (docs/decisions.md). Like
        # pillow-heif, it writes the frame's own EXIF unless told (b"": none).
        first = _to_srgb(first)
        options.update(quality=quality, lossless=output.lossless, effort=4, lossless_jpeg=False)
        options.setdefault("exif", b"")
    if len(frames) > 1:
        options.update(save_all=True, append_images=frames[1:], duration=durations)
        if loop is not None:
            options["loop"] = loop
        if fmt == "gif":
            options.update(disposal=2)
    try:
        out = _save(first, fmt, options)
    except ENCODE_ERRORS as exc:
        if not metadata:
            # A decoded image that will not encode is our failure, not a corrupt upload.
            raise ServiceError(Reason.INTERNAL, f"could not encode {fmt}: {exc}") from None
        # Kept metadata an encoder rejects is dropped rather than failing the image.
        plain = {k: v for k, v in options.items() if k not in metadata}
        try:
            out = _save(first, fmt, plain)
        except ENCODE_ERRORS as again:
            raise ServiceError(Reason.INTERNAL, f"could not encode {fmt}: {again}") from None
    return Rendered(out.getvalue(), OUTPUT_MEDIA_TYPES[fmt], first.width, first.height, len(frames))
