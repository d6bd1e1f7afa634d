"""The output options: format (and its negotiation from Accept), quality and the rest.

Declared as operations are (see processor/operations/base.py): query parameters, the
request message made of them, validation and canonical form. No Pillow here: the
encoder is in pipeline.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument
from processor.operations.base import (
    COLOR,
    RGBA,
    WHITE,
    Choice,
    Flag,
    Integer,
    Param,
    Refusal,
    RequestLimits,
    Values,
    color,
)

# How the query spells each format.
FORMATS = {
    "auto": pb.OUTPUT_FORMAT_AUTO,
    "jpeg": pb.OUTPUT_FORMAT_JPEG,
    "jpg": pb.OUTPUT_FORMAT_JPEG,
    "png": pb.OUTPUT_FORMAT_PNG,
    "webp": pb.OUTPUT_FORMAT_WEBP,
    "avif": pb.OUTPUT_FORMAT_AVIF,
    "gif": pb.OUTPUT_FORMAT_GIF,
    "heic": pb.OUTPUT_FORMAT_HEIC,
    "jxl": pb.OUTPUT_FORMAT_JXL,
}
CANONICAL_FORMATS = {pb.OUTPUT_FORMAT_UNSPECIFIED: "auto"} | {
    value: name for name, value in FORMATS.items() if name != "jpg"
}
FRAMES = {"all": pb.FRAMES_ALL, "first": pb.FRAMES_FIRST}
CANONICAL_FRAMES = {
    pb.FRAMES_UNSPECIFIED: "all",
    pb.FRAMES_ALL: "all",
    pb.FRAMES_FIRST: "first",
    pb.FRAMES_ALL_OR_FIRST: "all_or_first",
}
DEFAULT_QUALITY = {"jpeg": 82, "webp": 80, "avif": 60, "heic": 60, "jxl": 75}
# "source" is resolved against the original when it is decoded: it never changes under
# an id, so it is as deterministic as a named format.
LOSSY = {"jpeg", "webp", "avif", "heic", "jxl", "source"}
AUTO_CHOICES = ("avif", "webp", "jxl")  # what IMAGESVC_AUTO_FORMATS may name
DEFAULT_AUTO_FORMATS = ("avif", "webp")  # what it names when unset
# Formats that keep alpha, so nothing is flattened onto bg.
_ALPHA_FORMATS = (
    pb.OUTPUT_FORMAT_PNG,
    pb.OUTPUT_FORMAT_WEBP,
    pb.OUTPUT_FORMAT_AVIF,
    pb.OUTPUT_FORMAT_GIF,
    pb.OUTPUT_FORMAT_HEIC,
    pb.OUTPUT_FORMAT_JXL,
)
# Formats whose results are stills: frames means nothing to them.
_STILL_FORMATS = (
    pb.OUTPUT_FORMAT_JPEG,
    pb.OUTPUT_FORMAT_AVIF,
    pb.OUTPUT_FORMAT_HEIC,
    pb.OUTPUT_FORMAT_JXL,
)
_LOSSLESS_FORMATS = (pb.OUTPUT_FORMAT_WEBP, pb.OUTPUT_FORMAT_JXL)


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


def params(limits: RequestLimits) -> tuple[Param, ...]:
    """The output's query parameters."""
    return (
        Param(
            "format",
            Choice(FORMATS),
            "Output format; auto (the default) picks the first of IMAGESVC_AUTO_FORMATS "
            "(AVIF, then WebP; JPEG XL where listed) that Accept names with a q-value "
            "above 0, else the original's kind (JPEG for HEIC and JPEG XL originals, PNG "
            "where they have alpha); an animation stays animated (WebP if accepted, else "
            "its own kind, never AVIF).",
            field="output.format",
        ),
        Param(
            "q",
            Integer(1, 100),
            "Quality for JPEG (default 82), WebP (80), AVIF (60), HEIC (60) and JPEG XL "
            "(75); not with format=png or gif, nor lossless.",
            field="output.quality",
        ),
        Param("lossless", Flag(), "Lossless WebP or JPEG XL (with format=webp, jxl or auto)."),
        Param("progressive", Flag(), "Progressive JPEG (with format=jpeg or auto)."),
        Param(
            "bg",
            COLOR,
            "Background colour for rotation corners, padding (pad, fit=pad) and for "
            "flattening transparency (default white).",
            field="output.background",
        ),
        Param(
            "frames",
            Choice(FRAMES),
            "Of an animation: all frames (the default) or the first alone, a still. Every "
            "frame counts against the output pixel limit.",
            field="output.frames",
        ),
        Param(
            "metadata",
            Choice({"strip": False, "keep": True}),
            "EXIF/XMP: stripped by default; the ICC profile is always kept (kept EXIF says "
            "orientation 1: the pixels are upright).",
        ),
    )


def conflict(values: Values, limits: RequestLimits) -> Refusal | None:
    """What is wrong with the output's parameters together (OpenAPI cannot say it)."""
    fmt = values.get("format", pb.OUTPUT_FORMAT_AUTO)
    chosen = fmt != pb.OUTPUT_FORMAT_AUTO
    if values.get("progressive") and chosen and fmt != pb.OUTPUT_FORMAT_JPEG:
        return "progressive", "applies to JPEG only (format=jpeg or auto)"
    if values.get("lossless") and chosen and fmt not in _LOSSLESS_FORMATS:
        return "lossless", "applies to WebP and JPEG XL only (format=webp, jxl or auto)"
    if "q" in values and fmt in (pb.OUTPUT_FORMAT_PNG, pb.OUTPUT_FORMAT_GIF):
        return (
            "q",
            "PNG and GIF are lossless: quality applies to JPEG, WebP, AVIF, HEIC and JPEG XL",
        )
    if "q" in values and values.get("lossless"):
        return "q", "a lossless result has no quality"
    if "frames" in values and fmt in _STILL_FORMATS:
        return (
            "frames",
            "JPEG, AVIF, HEIC and JPEG XL results are stills (use gif, webp, png or auto)",
        )
    if values.get("metadata") and fmt == pb.OUTPUT_FORMAT_GIF:
        return "metadata", "GIF carries no EXIF or XMP to keep"
    # Where alpha is kept, bg only fills what a step adds: rotation corners, padding.
    fills = "rotate" in values or "pad" in values or values.get("fit") == pb.FIT_PAD
    if "bg" in values and not fills and fmt in _ALPHA_FORMATS:
        return "bg", "with this format alpha is kept: bg fills rotation corners and padding only"
    return None


def request(values: Values, accept: str) -> pb.OutputOptions:
    """The OutputOptions of the checked query values; Accept is passed on for auto."""
    fmt = values.get("format", pb.OUTPUT_FORMAT_AUTO)
    negotiated = fmt == pb.OUTPUT_FORMAT_AUTO
    output = pb.OutputOptions(
        format=fmt,
        accept=[item.strip() for item in accept.split(",")[:32]] if negotiated else [],
        quality=values.get("q", 0),
        lossless=values.get("lossless", False),
        progressive=values.get("progressive", False),
        keep_metadata=values.get("metadata", False),
        frames=values.get("frames", pb.FRAMES_UNSPECIFIED),
    )
    if "bg" in values:
        output.background.CopyFrom(values["bg"])
    return output


def accepted(accept: Sequence[str]) -> set[str]:
    """The image formats an Accept header names with a q-value above 0 (a wildcard
    names none: browsers name the modern formats they decode)."""
    named: set[str] = set()
    for item in accept:
        media, *parameters = (part.strip().lower() for part in item.split(";"))
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
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


def parse(message: pb.OutputOptions, limits: RequestLimits) -> Output:
    """Validate and canonicalise; raise ServiceError(INVALID_ARGUMENT) naming the field."""
    if message.format not in CANONICAL_FORMATS:
        raise invalid_argument("output.format", "unknown format")
    fmt = CANONICAL_FORMATS[message.format]
    animation = ""
    if fmt == "auto":
        fmt, animation = negotiate(message.accept, limits.auto_formats)
    if message.frames not in CANONICAL_FRAMES:
        raise invalid_argument("output.frames", "unknown frames choice")
    if not 0 <= message.quality <= 100:
        raise invalid_argument("output.quality", "must be between 1 and 100")
    # PNG and GIF always are lossless; AVIF and HEIC have no true lossless mode here.
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
        background=color(message, "output.background", WHITE),
        keep_metadata=message.keep_metadata,
        frames=CANONICAL_FRAMES[message.frames],
    )
