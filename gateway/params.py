"""Transformation query parameters: one table that parses requests and documents them.

The gateway only translates: every value is checked for its shape here, with the same
limits the processor applies (read from the same variables), and for its meaning by the
processor, which canonicalises the request (so `?w=300&blur=2` and `?blur=2&w=300` are
one variant). Values are strict: no signs, spaces or spellings the table does not name,
and an option the chosen format cannot use is refused rather than ignored.
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
    "heic": ppb.OUTPUT_FORMAT_HEIC,
    "jxl": ppb.OUTPUT_FORMAT_JXL,
}
FRAMES = {"all": ppb.FRAMES_ALL, "first": ppb.FRAMES_FIRST}
SIZING = ("fit", "gravity", "enlarge", "dpr")
# Formats that keep alpha, so nothing is flattened onto bg.
_ALPHA_FORMATS = (
    ppb.OUTPUT_FORMAT_PNG,
    ppb.OUTPUT_FORMAT_WEBP,
    ppb.OUTPUT_FORMAT_AVIF,
    ppb.OUTPUT_FORMAT_GIF,
    ppb.OUTPUT_FORMAT_HEIC,
    ppb.OUTPUT_FORMAT_JXL,
)
# Formats whose results are stills: frames means nothing to them.
_STILL_FORMATS = (
    ppb.OUTPUT_FORMAT_JPEG,
    ppb.OUTPUT_FORMAT_AVIF,
    ppb.OUTPUT_FORMAT_HEIC,
    ppb.OUTPUT_FORMAT_JXL,
)
CURSOR = "[A-Za-z0-9_-]{32}"  # the shape of the cache service's page tokens (for listing)
BLURRED_SIGMA = 10.0
_COLOR = "^#?[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$"
# Width and height are never 0; each number has at most six digits, leading zeros aside.
_CROP = "^[0-9]{1,6},[0-9]{1,6},0{0,5}[1-9][0-9]{0,5},0{0,5}[1-9][0-9]{0,5}$"
_NUMBER = re.compile(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?")


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
        if not re.fullmatch(r"[0-9]{1,9}", raw):
            raise bad(name, "must be a whole number, digits only")
        value = int(raw)
        if not lo <= value <= hi:
            raise bad(name, f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        if len(raw) > 40 or not _NUMBER.fullmatch(raw):
            raise bad(name, "must be a number")
        value = float(raw)
        if not math.isfinite(value) or not lo <= value <= hi:
            raise bad(name, f"must be between {lo:g} and {hi:g}")
        return value

    return parse


def _flag(name: str, raw: str) -> bool:
    if raw in ("", "true"):
        return True
    if raw == "false":
        return False
    raise bad(name, "a flag: give it alone, or as true or false")


def _choice(options: Mapping[str, int]) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        if raw not in options:
            raise bad(name, f"must be one of {', '.join(options)}")
        return options[raw]

    return parse


def _color(name: str, raw: str) -> ppb.Color:
    if re.fullmatch(_COLOR, raw) is None:
        raise bad(name, "must be a hex colour: RRGGBB or RRGGBBAA")
    rgba = bytes.fromhex(raw.removeprefix("#"))
    alpha = rgba[3] if len(rgba) == 4 else 255
    return ppb.Color(red=rgba[0], green=rgba[1], blue=rgba[2], alpha=alpha)


def _crop(name: str, raw: str) -> ppb.Crop:
    if re.fullmatch(_CROP, raw) is None:
        raise bad(name, "must be left,top,width,height in pixels, width and height above 0")
    left, top, width, height = (int(p) for p in raw.split(","))
    return ppb.Crop(left=left, top=top, width=width, height=height)


@dataclass(frozen=True)
class Param:
    name: str
    parse: Callable[[str, str], Any]
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class Limits:
    """The processor's limits a request is checked against (the same variables)."""

    max_output_dimension: int
    max_blur_sigma: float


def _flag_param(name: str, description: str) -> Param:
    return Param(name, _flag, {"type": "boolean"}, description + " A flag: true when present.")


def _table(limits: Limits) -> tuple[Param, ...]:
    side = limits.max_output_dimension
    blur = limits.max_blur_sigma
    return (
        Param(
            "w",
            _int(1, side),
            {"type": "integer", "minimum": 1, "maximum": side},
            f"Target width in pixels; times dpr, at most {side}.",
        ),
        Param(
            "h",
            _int(1, side),
            {"type": "integer", "minimum": 1, "maximum": side},
            f"Target height in pixels; times dpr, at most {side}.",
        ),
        Param(
            "fit",
            _choice(FITS),
            {"type": "string", "enum": list(FITS)},
            "How w x h is filled (needs w or h): contain/inside (fit inside, the default), "
            "cover (fill, then crop), fill (stretch), outside (cover the box without "
            "cropping).",
        ),
        Param(
            "gravity",
            _choice(GRAVITIES),
            {"type": "string", "enum": list(GRAVITIES)},
            "Which part a cover crop keeps (with fit=cover only); smart keeps the most "
            "detailed part.",
        ),
        Param(
            "enlarge",
            _flag,
            {"type": "boolean"},
            "Allow the result to be larger than the original (needs w or h; default false).",
        ),
        Param(
            "dpr",
            _float(1, 4),
            {"type": "number", "minimum": 1, "maximum": 4},
            "Device pixel ratio: multiplies w and h (needs w or h).",
        ),
        Param(
            "crop",
            _crop,
            {"type": "string", "pattern": _CROP},
            "A rectangle left,top,width,height cut before resizing (width and height above "
            "0; it must overlap the image).",
        ),
        Param(
            "rotate",
            _float(-360, 360),
            {"type": "number", "minimum": -360, "maximum": 360},
            "Degrees clockwise; multiples of 90 are lossless, others fill with bg.",
        ),
        _flag_param("flip", "Mirror top to bottom."),
        _flag_param("flop", "Mirror left to right."),
        _flag_param("grayscale", "Convert to shades of grey."),
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
            _float(0, blur),
            {"type": "number", "minimum": 0, "maximum": blur},
            "Gaussian blur sigma in pixels.",
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
            "Output format; auto (the default) picks AVIF or WebP (or JPEG XL, where the "
            "service lists it) from Accept, else the original's kind (JPEG for HEIC and "
            "JPEG XL originals, PNG where they have alpha).",
        ),
        Param(
            "q",
            _int(1, 100),
            {"type": "integer", "minimum": 1, "maximum": 100},
            "Quality for JPEG, WebP, AVIF, HEIC and JPEG XL (not with format=png or gif, nor "
            "lossless).",
        ),
        _flag_param("lossless", "Lossless WebP or JPEG XL (with format=webp, jxl or auto)."),
        _flag_param("progressive", "Progressive JPEG (with format=jpeg or auto)."),
        Param(
            "bg",
            _color,
            {"type": "string", "pattern": _COLOR},
            "Background colour (RRGGBB or RRGGBBAA) for rotation corners and for "
            "flattening transparency; default white.",
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


@dataclass(frozen=True)
class Transformation:
    operations: list[ppb.Operation]
    output: ppb.OutputOptions
    negotiated: bool  # the format depends on Accept: the response must say Vary: Accept


class Parameters:
    """The transformation parameters under the service's limits: parser and docs."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.table = _table(limits)
        self._by_name = {p.name: p for p in self.table}

    def values(self, query: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """Each parameter's value, checked on its own."""
        values: dict[str, Any] = {}
        for name, raw in query:
            param = self._by_name.get(name)
            if param is None:
                raise bad(name, "unknown parameter")
            if name in values:
                raise bad(name, "given more than once")
            values[name] = param.parse(name, raw)
        return values

    def conflict(self, values: Mapping[str, Any]) -> HTTPProblem | None:
        """What is wrong with the parameters together (OpenAPI cannot say it), if any."""
        sizing = [name for name in SIZING if name in values]
        if sizing and "w" not in values and "h" not in values:
            return bad(sizing[0], "needs w or h")
        dpr = values.get("dpr", 1.0)
        for name in ("w", "h"):
            if round(values.get(name, 0) * dpr) > self.limits.max_output_dimension:
                limit = self.limits.max_output_dimension
                return bad(name, f"times dpr, must be at most {limit}")
        if "gravity" in values and values.get("fit") != ppb.FIT_COVER:
            return bad("gravity", "applies to fit=cover only")
        fmt = values.get("format", ppb.OUTPUT_FORMAT_AUTO)
        chosen = fmt != ppb.OUTPUT_FORMAT_AUTO
        if values.get("progressive") and chosen and fmt != ppb.OUTPUT_FORMAT_JPEG:
            return bad("progressive", "applies to JPEG only (format=jpeg or auto)")
        lossless_formats = (ppb.OUTPUT_FORMAT_WEBP, ppb.OUTPUT_FORMAT_JXL)
        if values.get("lossless") and chosen and fmt not in lossless_formats:
            return bad("lossless", "applies to WebP and JPEG XL only (format=webp, jxl or auto)")
        if "q" in values and fmt in (ppb.OUTPUT_FORMAT_PNG, ppb.OUTPUT_FORMAT_GIF):
            return bad(
                "q",
                "PNG and GIF are lossless: quality applies to JPEG, WebP, AVIF, HEIC and JPEG XL",
            )
        if "q" in values and values.get("lossless"):
            return bad("q", "a lossless result has no quality")
        if "frames" in values and fmt in _STILL_FORMATS:
            return bad(
                "frames",
                "JPEG, AVIF, HEIC and JPEG XL results are stills (use gif, webp, png or auto)",
            )
        if values.get("metadata") and fmt == ppb.OUTPUT_FORMAT_GIF:
            return bad("metadata", "GIF carries no EXIF or XMP to keep")
        if "bg" in values and "rotate" not in values and fmt in _ALPHA_FORMATS:
            return bad("bg", "with this format alpha is kept: bg fills rotation corners only")
        return None

    def parse(self, query: list[tuple[str, str]], accept: str) -> Transformation | None:
        """The transformation the query asks for; None when it asks for the original."""
        values = self.values(query)
        if not values:
            return None
        problem = self.conflict(values)
        if problem is not None:
            raise problem
        return _transformation(values, accept)

    def blurred(self) -> Transformation:
        """What the original service's /blurred-images/{id} returned: a blur of sigma 10
        (or the largest allowed, if smaller).

        It takes no parameters, so it cannot fail on size: an animation too large to
        blur whole within the output limits comes back as its first frame.
        """
        output = ppb.OutputOptions(format=ppb.OUTPUT_FORMAT_AUTO, frames=ppb.FRAMES_ALL_OR_FIRST)
        sigma = min(BLURRED_SIGMA, self.limits.max_blur_sigma)
        return Transformation([ppb.Operation(blur=ppb.Blur(sigma=sigma))], output, False)


def _transformation(values: Mapping[str, Any], accept: str) -> Transformation:
    ops: list[ppb.Operation] = []
    if "crop" in values:
        ops.append(ppb.Operation(crop=values["crop"]))
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
