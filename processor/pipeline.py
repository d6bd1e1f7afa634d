"""Decode, transform and encode one image with Pillow. Runs in worker threads.

Pillow releases the GIL while it decodes, resamples, filters and encodes, which is
most of the time spent here, so threads use every core (see docs/decisions.md).
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
from dataclasses import dataclass
from typing import IO, cast

from PIL import Image, ImageCms, ImageEnhance, ImageFilter, ImageMath, ImageSequence

from common.errors import Reason, ServiceError
from common.imaging import (
    SOURCE_FORMATS,
    decoding_errors,
    fast_decode,
    open_checked,
    too_large,
    too_many_pixels,
)
from processor import smartcrop
from processor.spec import (
    DEFAULT_QUALITY,
    RGBA,
    Adjust,
    Blur,
    Crop,
    Flip,
    Flop,
    Grayscale,
    Op,
    Output,
    Pixelate,
    Resize,
    Rotate,
    Sharpen,
    Spec,
)

MEDIA_TYPES = {
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
class Limits:
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


def render(source: IO[bytes], spec: Spec, limits: Limits) -> Rendered:
    """Turn the image in source into the bytes spec asks for, or raise ServiceError."""
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
        frames, durations = _frames(image, spec, fmt, orientation, limits)
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
    image: Image.Image, spec: Spec, fmt: str, orientation: int, limits: Limits
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
    if not animated:
        fast_decode(image)
        image.load()
        return [_transform(image, spec, orientation, {})], [0]
    frames: list[Image.Image] = []
    durations: list[int] = []
    held = 0
    # Smart crops are chosen on the first frame and kept: a window chosen per frame
    # would jump about as the content moves.
    windows: Windows = {}
    for frame in ImageSequence.Iterator(image):
        # The iterator re-uses one object; each frame needs its own pixels. (Loading
        # first also matters: WebP sets a frame's duration when it loads.)
        pixels = frame.copy()
        durations.append(int(frame.info.get("duration", 0)))
        frames.append(_transform(pixels, spec, orientation, windows))
        # A backstop for a file whose frames differ from its header (a GIF frame can
        # grow the canvas): every frame is held until the encode.
        held += frames[-1].width * frames[-1].height
        if held > limits.max_pixels or len(frames) > limits.max_frames:
            raise ServiceError(
                Reason.OUTPUT_TOO_LARGE,
                f"the animation's frames together would exceed {limits.max_pixels} pixels",
            )
    return frames, durations


def _frame_count(image: Image.Image, limits: Limits) -> int:
    """How many frames an animated source has, read without decoding any."""
    count = int(getattr(image, "n_frames", 1))
    if count > limits.max_frames:
        raise too_large(f"more than {limits.max_frames} frames")
    return count


def plan(size: tuple[int, int], orientation: int, spec: Spec, limits: Limits) -> tuple[int, int]:
    """The size each frame of a source this size comes out at, or OUTPUT_TOO_LARGE.

    Follows _transform's every step without touching a pixel, and judges each size a
    step would allocate (a cover resize is larger than its box before the crop). A
    side may be as long as the source's own: a result is never refused for being as
    large as the image that was accepted.
    """
    if orientation in (5, 6, 7, 8):
        size = (size[1], size[0])
    longest = max(limits.max_output_dimension, *size)

    def check(size: tuple[int, int]) -> None:
        if max(size) > longest:
            raise ServiceError(
                Reason.OUTPUT_TOO_LARGE,
                f"the result would exceed {limits.max_output_dimension} pixels on a side",
            )
        if size[0] * size[1] > limits.max_pixels:
            raise ServiceError(
                Reason.OUTPUT_TOO_LARGE, f"the result would exceed {limits.max_pixels} pixels"
            )

    for op in spec.ops:
        if isinstance(op, Crop):
            box = _crop_box(size, op)
            size = (box[2] - box[0], box[3] - box[1])
        elif isinstance(op, Resize):
            resized, size = _resize_geometry(size, op)
            check(resized)
        elif isinstance(op, Rotate):
            size = _rotated_size(size, _counter_clockwise(op.angle))
        check(size)
    return size


def _draft(image: Image.Image, spec: Spec, orientation: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the output is that much smaller."""
    resize = next((op for op in spec.ops if isinstance(op, Resize)), None)
    if resize is None or any(isinstance(op, Crop) for op in spec.ops):
        return
    width, height = image.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    target, _ = _resize_geometry((width, height), resize)
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


# Smart-crop windows chosen so far (top-left corners), by the index of their Resize op.
Windows = dict[int, tuple[int, int]]


def _transform(image: Image.Image, spec: Spec, orientation: int, windows: Windows) -> Image.Image:
    """One frame through spec's operations (their sizes already judged by plan)."""
    image = _normalise(image)
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
    for n, op in enumerate(spec.ops):
        image = _resize(image, op, windows, n) if isinstance(op, Resize) else _apply(image, op)
    return image


def _apply(image: Image.Image, op: Op) -> Image.Image:
    if isinstance(op, Crop):
        return _crop(image, op)
    if isinstance(op, Rotate):
        return _rotate(image, _counter_clockwise(op.angle), op.background)
    if isinstance(op, Flip):
        return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if isinstance(op, Flop):
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if isinstance(op, Adjust):
        return _adjust(image, op)
    if isinstance(op, Grayscale):
        return image.convert("LA" if "A" in image.mode else "L")
    if isinstance(op, Blur):
        return image.filter(ImageFilter.GaussianBlur(op.sigma))
    if isinstance(op, Sharpen):
        return image.filter(ImageFilter.UnsharpMask(radius=op.sigma, percent=150, threshold=2))
    if isinstance(op, Pixelate):
        small = (max(1, image.width // op.size), max(1, image.height // op.size))
        return image.resize(small, Image.Resampling.BOX).resize(
            image.size, Image.Resampling.NEAREST
        )
    raise AssertionError(op)


def _crop(image: Image.Image, op: Crop) -> Image.Image:
    return image.crop(_crop_box(image.size, op))


def _crop_box(size: tuple[int, int], op: Crop) -> tuple[int, int, int, int]:
    """The crop's rectangle clipped to the image; one wholly outside is an error."""
    width, height = size
    if op.left >= width or op.top >= height:
        raise ServiceError(
            Reason.CROP_OUTSIDE_IMAGE,
            f"the rectangle lies outside the {width}x{height} image",
            {"field": "crop"},
        )
    return (op.left, op.top, min(width, op.left + op.width), min(height, op.top + op.height))


def _resize_geometry(size: tuple[int, int], op: Resize) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size to resample to, size of the final box): they differ only for cover."""
    width, height = size
    w, h = op.width, op.height
    if op.fit == "fill":
        if not op.enlarge:
            w, h = min(w, width), min(h, height)
        return (w, h), (w, h)
    if op.fit == "cover" and w and h and not op.enlarge:
        # A box bigger than the image shrinks, keeping its aspect ratio: a 10:1 banner
        # asked of a small image is still 10:1.
        shrink = min(1.0, width / w, height / h)
        w, h = max(1, round(w * shrink)), max(1, round(h * shrink))
    if w == 0:
        scale = h / height
    elif h == 0:
        scale = w / width
    elif op.fit == "contain":
        scale = min(w / width, h / height)
    else:  # cover and outside: at least the box
        scale = max(w / width, h / height)
    if not op.enlarge:
        scale = min(scale, 1.0)
    resized = (max(1, round(width * scale)), max(1, round(height * scale)))
    if op.fit == "cover" and w and h:
        return resized, (min(w, resized[0]), min(h, resized[1]))
    return resized, resized


def _resize(image: Image.Image, op: Resize, windows: Windows, n: int) -> Image.Image:
    resized, box = _resize_geometry(image.size, op)
    if resized != image.size:
        # Lanczos where the scale changes a lot (aliasing shows); bicubic for the last
        # factor of two or less, as after a reduced-scale JPEG decode, where the two
        # look the same and bicubic costs a third less.
        gentle = resized[0] >= image.width / 2 and resized[1] >= image.height / 2
        method = Image.Resampling.BICUBIC if gentle else Image.Resampling.LANCZOS
        image = image.resize(resized, method, reducing_gap=2.0)
    if box == resized:
        return image
    if op.gravity == "smart":
        if n not in windows:
            windows[n] = smartcrop.best_window(image, box)
        left, top = windows[n]
    else:
        left, top = _gravity_corner(image.size, box, op.gravity)
    return image.crop((left, top, left + box[0], top + box[1]))


def _gravity_corner(size: tuple[int, int], box: tuple[int, int], gravity: str) -> tuple[int, int]:
    """Top-left corner of a box-sized window placed by a compass gravity."""
    spare_x, spare_y = size[0] - box[0], size[1] - box[1]
    left = 0 if "west" in gravity else spare_x if "east" in gravity else spare_x // 2
    top = 0 if "north" in gravity else spare_y if "south" in gravity else spare_y // 2
    return left, top


def _counter_clockwise(clockwise: float) -> float:
    """The angle Pillow turns by (counter-clockwise) for a clockwise one, in [0, 360)."""
    return (360.0 - clockwise) % 360.0


def _rotate(image: Image.Image, angle: float, background: RGBA) -> Image.Image:
    right = {
        90.0: Image.Transpose.ROTATE_90,
        180.0: Image.Transpose.ROTATE_180,
        270.0: Image.Transpose.ROTATE_270,
    }
    if angle in right:
        return image.transpose(right[angle])
    if background[3] < 255 and "A" not in image.mode:
        image = image.convert("RGBA" if image.mode == "RGB" else "LA")
    grey = _grey(background)
    fills: dict[str, float | tuple[int, ...]] = {
        "RGBA": background,
        "RGB": background[:3],
        "LA": (grey, background[3]),
        "L": grey,
    }
    fill = fills[image.mode]
    return image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=fill)


def _rotated_size(size: tuple[int, int], angle: float) -> tuple[int, int]:
    """The canvas _rotate makes: for other angles than right ones, the arithmetic of
    Pillow's rotate(expand=True), so the size judged is the size allocated."""
    width, height = size
    if angle in (90.0, 270.0):
        return height, width
    if angle == 180.0:
        return size
    radians = -math.radians(angle)
    cos, sin = round(math.cos(radians), 15), round(math.sin(radians), 15)
    # Pillow rotates about the centre: x' = cos*x + sin*y + dx, y' = -sin*x + cos*y + dy.
    cx, cy = width / 2, height / 2
    dx, dy = -cos * cx - sin * cy + cx, sin * cx - cos * cy + cy
    corners = ((0, 0), (width, 0), (width, height), (0, height))
    xs = [cos * x + sin * y + dx for x, y in corners]
    ys = [-sin * x + cos * y + dy for x, y in corners]
    return (
        math.ceil(max(xs)) - math.floor(min(xs)),
        math.ceil(max(ys)) - math.floor(min(ys)),
    )


def _grey(color: RGBA) -> int:
    return round(0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2])


def _adjust(image: Image.Image, op: Adjust) -> Image.Image:
    alpha = image.getchannel("A") if "A" in image.mode else None
    base = image.convert("RGB" if image.mode in ("RGB", "RGBA") else "L")
    if op.brightness != 1.0:
        base = ImageEnhance.Brightness(base).enhance(op.brightness)
    if op.contrast != 1.0:
        base = ImageEnhance.Contrast(base).enhance(op.contrast)
    if op.saturation != 1.0 and base.mode == "RGB":
        base = ImageEnhance.Color(base).enhance(op.saturation)
    if alpha is not None:
        base.putalpha(alpha)
    return base


def _flatten(image: Image.Image, background: RGBA) -> Image.Image:
    """Composite onto the background colour (for outputs without alpha)."""
    if "A" not in image.mode:
        return image
    rgb = background[:3] if image.mode == "RGBA" else (_grey(background),)
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
    return Rendered(out.getvalue(), MEDIA_TYPES[fmt], first.width, first.height, len(frames))
