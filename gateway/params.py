"""Transformation query parameters: one table that both parses requests and documents them.

The gateway only translates: every value is checked for its shape here and for its
meaning by the processor, which canonicalises the request (so `?w=300&blur=2` and
`?blur=2&w=300` are one variant).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imageservice.v1 import processor_service_pb2 as ppb

from gateway.problems import HTTPProblem

FITS = {
    "contain": ppb.FIT_CONTAIN,
    "cover": ppb.FIT_COVER,
    "fill": ppb.FIT_FILL,
    "inside": ppb.FIT_INSIDE,
    "outside": ppb.FIT_OUTSIDE,
}
GRAVITIES = {
    "center": ppb.GRAVITY_CENTER,
    "north": ppb.GRAVITY_NORTH,
    "northeast": ppb.GRAVITY_NORTH_EAST,
    "east": ppb.GRAVITY_EAST,
    "southeast": ppb.GRAVITY_SOUTH_EAST,
    "south": ppb.GRAVITY_SOUTH,
    "southwest": ppb.GRAVITY_SOUTH_WEST,
    "west": ppb.GRAVITY_WEST,
    "northwest": ppb.GRAVITY_NORTH_WEST,
    "smart": ppb.GRAVITY_SMART,
}
FORMATS = {
    "auto": ppb.OUTPUT_FORMAT_AUTO,
    "jpeg": ppb.OUTPUT_FORMAT_JPEG,
    "jpg": ppb.OUTPUT_FORMAT_JPEG,
    "png": ppb.OUTPUT_FORMAT_PNG,
    "webp": ppb.OUTPUT_FORMAT_WEBP,
    "avif": ppb.OUTPUT_FORMAT_AVIF,
    "gif": ppb.OUTPUT_FORMAT_GIF,
}
FRAMES = {"all": ppb.FRAMES_ALL, "first": ppb.FRAMES_FIRST}
_COLOR = re.compile(r"^#?([0-9a-fA-F]{6})([0-9a-fA-F]{2})?$")


def bad(name: str, message: str) -> HTTPProblem:
    return HTTPProblem(
        400, "Bad request", f"{name}: {message}", kind="invalid-parameter", parameter=name
    )


def only(names: Iterable[str], allowed: Collection[str] = ()) -> None:
    """Refuse the first query parameter name not in allowed."""
    for name in names:
        if name not in allowed:
            raise bad(name, "unknown parameter")


def _int(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        if not re.fullmatch(r"-?\d{1,6}", raw):
            raise bad(name, "must be an integer")
        value = int(raw)
        if not lo <= value <= hi:
            raise bad(name, f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise bad(name, "must be a number") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise bad(name, f"must be between {lo:g} and {hi:g}")
        return value

    return parse


def _bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("", "1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise bad(name, "must be true or false")


def _choice(options: Mapping[str, int]) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        if raw.lower() not in options:
            raise bad(name, f"must be one of {', '.join(options)}")
        return options[raw.lower()]

    return parse


def _color(name: str, raw: str) -> ppb.Color:
    match = _COLOR.match(raw)
    if match is None:
        raise bad(name, "must be a hex colour: RRGGBB or RRGGBBAA")
    rgb = bytes.fromhex(match.group(1))
    alpha = int(match.group(2), 16) if match.group(2) else 255
    return ppb.Color(red=rgb[0], green=rgb[1], blue=rgb[2], alpha=alpha)


def _crop(name: str, raw: str) -> ppb.Crop:
    parts = raw.split(",")
    if len(parts) != 4 or not all(re.fullmatch(r"\d{1,6}", p) for p in parts):
        raise bad(name, "must be left,top,width,height in pixels")
    left, top, width, height = (int(p) for p in parts)
    if width == 0 or height == 0:
        raise bad(name, "width and height must be positive")
    return ppb.Crop(left=left, top=top, width=width, height=height)


@dataclass(frozen=True)
class Param:
    name: str
    parse: Callable[[str, str], Any]
    schema: dict[str, Any]
    description: str


PARAMS: tuple[Param, ...] = (
    Param(
        "w",
        _int(1, 8192),
        {"type": "integer", "minimum": 1, "maximum": 8192},
        "Target width in pixels (before dpr).",
    ),
    Param(
        "h",
        _int(1, 8192),
        {"type": "integer", "minimum": 1, "maximum": 8192},
        "Target height in pixels (before dpr).",
    ),
    Param(
        "fit",
        _choice(FITS),
        {"type": "string", "enum": list(FITS)},
        "How w x h is filled: contain/inside (fit inside, the default), cover (fill, "
        "then crop), fill (stretch), outside (cover the box without cropping).",
    ),
    Param(
        "gravity",
        _choice(GRAVITIES),
        {"type": "string", "enum": list(GRAVITIES)},
        "Which part a cover crop keeps; smart keeps the most detailed part.",
    ),
    Param(
        "enlarge",
        _bool,
        {"type": "boolean"},
        "Allow the result to be larger than the original (default false).",
    ),
    Param(
        "dpr",
        _float(1, 4),
        {"type": "number", "minimum": 1, "maximum": 4},
        "Device pixel ratio: multiplies w and h.",
    ),
    Param(
        "crop",
        _crop,
        {"type": "string", "pattern": r"^\d+,\d+,\d+,\d+$"},
        "A rectangle left,top,width,height cut before resizing.",
    ),
    Param(
        "rotate",
        _float(-360, 360),
        {"type": "number", "minimum": -360, "maximum": 360},
        "Degrees counter-clockwise; multiples of 90 are lossless, others fill with bg.",
    ),
    Param("flip", _bool, {"type": "boolean"}, "Mirror top to bottom."),
    Param("flop", _bool, {"type": "boolean"}, "Mirror left to right."),
    Param("grayscale", _bool, {"type": "boolean"}, "Convert to shades of grey."),
    Param(
        "brightness",
        _float(0.01, 10),
        {"type": "number", "minimum": 0.01, "maximum": 10},
        "Brightness factor; 1 is unchanged.",
    ),
    Param(
        "contrast",
        _float(0.01, 10),
        {"type": "number", "minimum": 0.01, "maximum": 10},
        "Contrast factor; 1 is unchanged.",
    ),
    Param(
        "saturation",
        _float(0.01, 10),
        {"type": "number", "minimum": 0.01, "maximum": 10},
        "Saturation factor; 1 is unchanged.",
    ),
    Param(
        "blur",
        _float(0, 1000),
        {"type": "number", "minimum": 0},
        "Gaussian blur sigma in pixels (the service's maximum applies).",
    ),
    Param(
        "sharpen",
        _float(0, 10),
        {"type": "number", "minimum": 0, "maximum": 10},
        "Unsharp-mask sigma in pixels.",
    ),
    Param(
        "pixelate",
        _int(1, 1000),
        {"type": "integer", "minimum": 1, "maximum": 1000},
        "Block size in pixels.",
    ),
    Param(
        "format",
        _choice(FORMATS),
        {"type": "string", "enum": list(FORMATS)},
        "Output format; auto (the default) picks AVIF or WebP from Accept, else the "
        "original's kind.",
    ),
    Param(
        "q",
        _int(1, 100),
        {"type": "integer", "minimum": 1, "maximum": 100},
        "Quality for JPEG, WebP and AVIF.",
    ),
    Param("lossless", _bool, {"type": "boolean"}, "Lossless WebP."),
    Param("progressive", _bool, {"type": "boolean"}, "Progressive JPEG."),
    Param(
        "bg",
        _color,
        {"type": "string", "pattern": "^#?[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$"},
        "Background colour (RRGGBB or RRGGBBAA) for rotation corners and for flattening "
        "transparency; default white.",
    ),
    Param(
        "frames",
        _choice(FRAMES),
        {"type": "string", "enum": list(FRAMES)},
        "Of an animation: all frames (the default) or the first alone, a still. Every "
        "frame counts against the output pixel limit.",
    ),
    Param(
        "metadata",
        _choice({"strip": 0, "keep": 1}),
        {"type": "string", "enum": ["strip", "keep"]},
        "EXIF/XMP: stripped by default; the ICC profile is always kept.",
    ),
)
BY_NAME = {p.name: p for p in PARAMS}


@dataclass(frozen=True)
class Transformation:
    operations: list[ppb.Operation]
    output: ppb.OutputOptions
    negotiated: bool  # the format depends on Accept: the response must say Vary: Accept


def parse(query: list[tuple[str, str]], accept: str) -> Transformation | None:
    """The transformation the query asks for; None when it asks for the original."""
    values: dict[str, Any] = {}
    for name, raw in query:
        param = BY_NAME.get(name)
        if param is None:
            raise bad(name, "unknown parameter")
        if name in values:
            raise bad(name, "given more than once")
        values[name] = param.parse(name, raw.strip())
    if not values:
        return None
    ops: list[ppb.Operation] = []
    if "crop" in values:
        ops.append(ppb.Operation(crop=values["crop"]))
    sizing = {"fit", "gravity", "enlarge", "dpr"} & values.keys()
    if "w" in values or "h" in values:
        ops.append(
            ppb.Operation(
                resize=ppb.Resize(
                    width=values.get("w", 0),
                    height=values.get("h", 0),
                    fit=values.get("fit", ppb.FIT_UNSPECIFIED),
                    gravity=values.get("gravity", ppb.GRAVITY_UNSPECIFIED),
                    enlarge=values.get("enlarge", False),
                    dpr=values.get("dpr", 0.0),
                )
            )
        )
    elif sizing:
        raise bad(sorted(sizing)[0], "needs w or h")
    background = values.get("bg")
    if "rotate" in values:
        rotate = ppb.Rotate(angle=values["rotate"])
        if background is not None:
            rotate.background.CopyFrom(background)
        ops.append(ppb.Operation(rotate=rotate))
    if values.get("flip"):
        ops.append(ppb.Operation(flip=ppb.Flip()))
    if values.get("flop"):
        ops.append(ppb.Operation(flop=ppb.Flop()))
    if values.get("grayscale"):
        ops.append(ppb.Operation(grayscale=ppb.Grayscale()))
    adjust = {k: values[k] for k in ("brightness", "contrast", "saturation") if k in values}
    if adjust:
        ops.append(ppb.Operation(adjust=ppb.Adjust(**adjust)))
    if "blur" in values:
        ops.append(ppb.Operation(blur=ppb.Blur(sigma=values["blur"])))
    if "sharpen" in values:
        ops.append(ppb.Operation(sharpen=ppb.Sharpen(sigma=values["sharpen"])))
    if "pixelate" in values:
        ops.append(ppb.Operation(pixelate=ppb.Pixelate(size=values["pixelate"])))
    fmt = values.get("format", ppb.OUTPUT_FORMAT_AUTO)
    negotiated = fmt == ppb.OUTPUT_FORMAT_AUTO
    output = ppb.OutputOptions(
        format=fmt,
        accept=[item.strip() for item in accept.split(",")[:32]] if negotiated else [],
        quality=values.get("q", 0),
        lossless=values.get("lossless", False),
        progressive=values.get("progressive", False),
        keep_metadata=bool(values.get("metadata", 0)),
        frames=values.get("frames", ppb.FRAMES_UNSPECIFIED),
    )
    if background is not None:
        output.background.CopyFrom(background)
    return Transformation(ops, output, negotiated)


def blurred() -> Transformation:
    """What the original service's /blurred-images/{id} returned: a blur of radius 10.

    It takes no parameters, so it cannot fail on size: an animation too large to blur
    whole within the output limits comes back as its first frame.
    """
    return Transformation(
        [ppb.Operation(blur=ppb.Blur(sigma=10))],
        ppb.OutputOptions(format=ppb.OUTPUT_FORMAT_AUTO, accept=[], frames=ppb.FRAMES_ALL_OR_FIRST),
        negotiated=False,
    )
