"""A transformation request in canonical form, and the variant key derived from it.

The pipeline has one fixed order (crop, resize, rotate, flip, flop, adjust,
grayscale, blur, sharpen, pixelate), at most one operation of each kind, so the
order a caller lists operations in never matters. Defaults are made explicit and
no-ops are dropped, so every spelling of one transformation has one key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument

# Bump when the pipeline's output for the same request changes, so old variants miss.
# 5: format=auto decides per source (an animation stays animated) and reads q-values;
# rotation turns clockwise
PIPELINE_VERSION = "5"

RGBA = tuple[int, int, int, int]
WHITE: RGBA = (255, 255, 255, 255)

FITS = {
    pb.FIT_UNSPECIFIED: "contain",
    pb.FIT_CONTAIN: "contain",
    # "inside" is contain's geometry (as large as possible within the box), so the two
    # share one variant.
    pb.FIT_INSIDE: "contain",
    pb.FIT_COVER: "cover",
    pb.FIT_FILL: "fill",
    pb.FIT_OUTSIDE: "outside",
}
GRAVITIES = {
    pb.GRAVITY_UNSPECIFIED: "center",
    pb.GRAVITY_CENTER: "center",
    pb.GRAVITY_NORTH: "north",
    pb.GRAVITY_NORTH_EAST: "northeast",
    pb.GRAVITY_EAST: "east",
    pb.GRAVITY_SOUTH_EAST: "southeast",
    pb.GRAVITY_SOUTH: "south",
    pb.GRAVITY_SOUTH_WEST: "southwest",
    pb.GRAVITY_WEST: "west",
    pb.GRAVITY_NORTH_WEST: "northwest",
    pb.GRAVITY_SMART: "smart",
}
FORMATS = {
    pb.OUTPUT_FORMAT_UNSPECIFIED: "auto",
    pb.OUTPUT_FORMAT_AUTO: "auto",
    pb.OUTPUT_FORMAT_JPEG: "jpeg",
    pb.OUTPUT_FORMAT_PNG: "png",
    pb.OUTPUT_FORMAT_WEBP: "webp",
    pb.OUTPUT_FORMAT_AVIF: "avif",
    pb.OUTPUT_FORMAT_GIF: "gif",
    pb.OUTPUT_FORMAT_HEIC: "heic",
    pb.OUTPUT_FORMAT_JXL: "jxl",
}
FRAMES = {
    pb.FRAMES_UNSPECIFIED: "all",
    pb.FRAMES_ALL: "all",
    pb.FRAMES_FIRST: "first",
    pb.FRAMES_ALL_OR_FIRST: "all_or_first",
}
DEFAULT_QUALITY = {"jpeg": 82, "webp": 80, "avif": 60, "heic": 60, "jxl": 75}
# "source" is resolved against the original when it is decoded: it never changes under
# an id, so it is as deterministic as a named format.
LOSSY = {"jpeg", "webp", "avif", "heic", "jxl", "source"}


@dataclass(frozen=True)
class Crop:
    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True)
class Resize:
    width: int  # 0: follow the aspect ratio
    height: int
    fit: str
    gravity: str
    enlarge: bool


@dataclass(frozen=True)
class Rotate:
    angle: float  # clockwise, in (0, 360)
    background: RGBA


@dataclass(frozen=True)
class Flip:
    pass


@dataclass(frozen=True)
class Flop:
    pass


@dataclass(frozen=True)
class Adjust:
    brightness: float
    contrast: float
    saturation: float


@dataclass(frozen=True)
class Grayscale:
    pass


@dataclass(frozen=True)
class Blur:
    sigma: float


@dataclass(frozen=True)
class Sharpen:
    sigma: float


@dataclass(frozen=True)
class Pixelate:
    size: int


Op = Crop | Resize | Rotate | Flip | Flop | Adjust | Grayscale | Blur | Sharpen | Pixelate
ORDER: tuple[type[Any], ...] = (
    Crop,
    Resize,
    Rotate,
    Flip,
    Flop,
    Adjust,
    Grayscale,
    Blur,
    Sharpen,
    Pixelate,
)


@dataclass(frozen=True)
class Output:
    format: str  # jpeg | png | webp | avif | gif | heic | jxl | source
    # format=auto only: what an animated source becomes instead of `format` (webp |
    # source), so it keeps its frames; "" where the format was asked for.
    animation: str
    quality: int  # 0 where the format has no quality
    lossless: bool
    progressive: bool
    background: RGBA
    keep_metadata: bool
    frames: str  # all | first | all_or_first (see Frames in the contract)


@dataclass(frozen=True)
class Spec:
    ops: tuple[Op, ...]
    output: Output

    def canonical(self) -> str:
        """A stable text form: same transformation, same text."""
        # vars(), not dataclasses.asdict: every field is a scalar or a tuple of them,
        # so the text is the same, and asdict's deep copies were 85% of a key's cost.
        body = {
            "ops": [[type(op).__name__.lower(), vars(op)] for op in self.ops],
            "out": vars(self.output),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def key(self, image_id: str) -> str:
        """The variant key: image id, canonical request and pipeline version, hashed."""
        text = f"{PIPELINE_VERSION}\n{image_id}\n{self.canonical()}"
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Limits:
    max_output_dimension: int
    max_blur_sigma: float
    # format=auto: the formats it may pick, best first, where Accept allows them.
    auto_formats: tuple[str, ...] = ("avif", "webp")


def _color(parent: pb.Rotate | pb.OutputOptions, default: RGBA) -> RGBA:
    if not parent.HasField("background"):
        return default
    message = parent.background
    channels = (message.red, message.green, message.blue, message.alpha)
    if any(c > 255 for c in channels):
        raise invalid_argument("color", "colour channels are 0-255")
    return (message.red, message.green, message.blue, message.alpha)


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise invalid_argument(name, "must be a finite number")
    return value


def _resize(message: pb.Resize, limits: Limits) -> Resize:
    dpr = _finite(message.dpr, "resize.dpr") or 1.0
    if not 1.0 <= dpr <= 4.0:
        raise invalid_argument("resize.dpr", "must be between 1 and 4")
    if message.width < 0 or message.height < 0:
        raise invalid_argument("resize.width", "dimensions cannot be negative")
    if message.width == 0 and message.height == 0:
        raise invalid_argument("resize.width", "give a width, a height or both")
    width, height = round(message.width * dpr), round(message.height * dpr)
    for name, value in (("resize.width", width), ("resize.height", height)):
        if value > limits.max_output_dimension:
            raise invalid_argument(
                name, f"at most {limits.max_output_dimension} pixels (after dpr)"
            )
    if message.fit not in FITS:
        raise invalid_argument("resize.fit", "unknown fit")
    if message.gravity not in GRAVITIES:
        raise invalid_argument("resize.gravity", "unknown gravity")
    fit = FITS[message.fit]
    if width == 0 or height == 0:
        fit = "contain"  # one side follows the aspect ratio: every fit means the same
    gravity = GRAVITIES[message.gravity] if fit == "cover" else "center"
    return Resize(width, height, fit, gravity, message.enlarge)


def _one(operation: pb.Operation, limits: Limits) -> Op | None:
    kind = operation.WhichOneof("kind")
    if kind == "resize":
        return _resize(operation.resize, limits)
    if kind == "crop":
        c = operation.crop
        if c.left < 0 or c.top < 0 or c.width <= 0 or c.height <= 0:
            raise invalid_argument("crop", "left and top >= 0, width and height > 0")
        return Crop(c.left, c.top, c.width, c.height)
    if kind == "rotate":
        angle = round(_finite(operation.rotate.angle, "rotate.angle") % 360.0, 2) % 360.0
        if angle == 0:
            return None
        right = angle in (90.0, 180.0, 270.0)
        background = WHITE if right else _color(operation.rotate, WHITE)
        return Rotate(angle, background)
    if kind == "flip":
        return Flip()
    if kind == "flop":
        return Flop()
    if kind == "grayscale":
        return Grayscale()
    if kind == "adjust":
        a = operation.adjust
        factors = [_finite(v, "adjust") or 1.0 for v in (a.brightness, a.contrast, a.saturation)]
        if any(not 0.0 <= f <= 10.0 for f in factors):
            raise invalid_argument("adjust", "factors are between 0 and 10 (1 is unchanged)")
        rounded = [round(f, 3) for f in factors]
        return None if rounded == [1.0, 1.0, 1.0] else Adjust(*rounded)
    if kind == "blur":
        sigma = round(_finite(operation.blur.sigma, "blur.sigma"), 2)
        if not 0 <= sigma <= limits.max_blur_sigma:
            raise invalid_argument("blur.sigma", f"must be between 0 and {limits.max_blur_sigma:g}")
        return Blur(sigma) if sigma > 0 else None
    if kind == "sharpen":
        sigma = round(_finite(operation.sharpen.sigma, "sharpen.sigma"), 2)
        if not 0 <= sigma <= 10:
            raise invalid_argument("sharpen.sigma", "must be between 0 and 10")
        return Sharpen(sigma) if sigma > 0 else None
    if kind == "pixelate":
        size = operation.pixelate.size
        if not 0 <= size <= 1000:
            raise invalid_argument("pixelate.size", "must be between 0 and 1000")
        return Pixelate(size) if size > 1 else None
    raise invalid_argument("operations", "an operation with no kind")


AUTO_CHOICES = ("avif", "webp", "jxl")  # what IMAGESVC_AUTO_FORMATS may name
DEFAULT_AUTO_FORMATS = ("avif", "webp")  # what it names when unset


def accepted(accept: Sequence[str]) -> set[str]:
    """The image formats an Accept header names with a q-value above 0 (a wildcard
    names none: browsers name the modern formats they decode)."""
    named: set[str] = set()
    for item in accept:
        media, *params = (part.strip().lower() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # a q-value that does not parse accepts nothing
        if media.startswith("image/") and q > 0:
            named.add(media.removeprefix("image/"))
    return named


def negotiate(accept: Sequence[str], preference: Sequence[str]) -> tuple[str, str]:
    """(what a still becomes, what an animation becomes): the first of preference that
    Accept allows, else the source's own kind; an animation never becomes AVIF (not
    every frame survives it) but WebP where allowed, else keeps its own kind."""
    allowed = accepted(accept)
    still = next((fmt for fmt in preference if fmt in allowed), "source")
    animation = "webp" if "webp" in preference and "webp" in allowed else "source"
    return still, animation


def _output(message: pb.OutputOptions, limits: Limits) -> Output:
    if message.format not in FORMATS:
        raise invalid_argument("output.format", "unknown format")
    fmt = FORMATS[message.format]
    animation = ""
    if fmt == "auto":
        fmt, animation = negotiate(message.accept, limits.auto_formats)
    if message.frames not in FRAMES:
        raise invalid_argument("output.frames", "unknown frames choice")
    if not 0 <= message.quality <= 100:
        raise invalid_argument("output.quality", "must be between 1 and 100")
    # PNG and GIF always are lossless; AVIF and HEIC have no true mode here.
    lossless = message.lossless and fmt in ("webp", "jxl")
    quality = 0
    if animation:
        # Which format is known only once the source is seen: 0 is its default.
        quality = message.quality
    elif fmt in LOSSY and not lossless:
        quality = message.quality or DEFAULT_QUALITY.get(fmt, 0)
    return Output(
        format=fmt,
        animation=animation,
        quality=quality,
        lossless=lossless,
        progressive=message.progressive and fmt in {"jpeg", "source"},
        background=_color(message, WHITE),
        keep_metadata=message.keep_metadata,
        frames=FRAMES[message.frames],
    )


def parse(operations: Sequence[pb.Operation], output: pb.OutputOptions, limits: Limits) -> Spec:
    """Validate and canonicalise; raise ServiceError(INVALID_ARGUMENT) naming the field."""
    if len(operations) > len(ORDER):
        raise invalid_argument("operations", f"at most {len(ORDER)} operations")
    by_kind: dict[type[Any], Op] = {}
    seen: set[str] = set()
    for operation in operations:
        kind = operation.WhichOneof("kind") or ""
        if kind in seen:
            raise invalid_argument(kind, f"{kind} given more than once")
        seen.add(kind)
        op = _one(operation, limits)
        if op is not None:
            by_kind[type(op)] = op
    ops = tuple(by_kind[kind] for kind in ORDER if kind in by_kind)
    return Spec(ops, _output(output, limits))
