"""w, h, fit, gravity, enlarge, dpr: resize to a box (fit names and meanings follow sharp).

A cover crop's window is placed by its gravity: a compass name, smart (the most detail,
processor/smartcrop.py), face (the faces found, processor/faces.py; OpenCV loads in the
processor only, once a face crop is asked for) or a focal point fp:X,Y
(processor/windows.py).

fit=pad is a letterbox: contain's geometry on a canvas of exactly w x h, the rest filled
with bg, the image placed by gravity. Its step is a Letterbox, a Resize that carries the
background: only its key says a background, so every other resize's key stays as it was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument
from processor import windows
from processor.operations.base import (
    RGBA,
    WHITE,
    Choice,
    Flag,
    Integer,
    Memo,
    Number,
    Operation,
    Param,
    Refusal,
    RequestLimits,
    Size,
    Values,
    color,
    finite,
)
from processor.operations.pad import canvas

if TYPE_CHECKING:
    from PIL import Image

# How the query spells each fit and gravity.
FITS = {
    "contain": pb.FIT_CONTAIN,
    "cover": pb.FIT_COVER,
    "fill": pb.FIT_FILL,
    "inside": pb.FIT_INSIDE,
    "outside": pb.FIT_OUTSIDE,
    "pad": pb.FIT_PAD,
}
GRAVITIES = {
    "center": pb.GRAVITY_CENTER,
    "north": pb.GRAVITY_NORTH,
    "northeast": pb.GRAVITY_NORTH_EAST,
    "east": pb.GRAVITY_EAST,
    "southeast": pb.GRAVITY_SOUTH_EAST,
    "south": pb.GRAVITY_SOUTH,
    "southwest": pb.GRAVITY_SOUTH_WEST,
    "west": pb.GRAVITY_WEST,
    "northwest": pb.GRAVITY_NORTH_WEST,
    "smart": pb.GRAVITY_SMART,
}
# What gravity may name (the watermark's own gravity takes the compass names of GRAVITIES).
COVER_GRAVITIES = GRAVITIES | {"face": pb.GRAVITY_FACE}
# gravity=fp:X,Y: a focal point, X and Y fractions of the width and height from 0 to 1,
# at most FOCAL_DIGITS decimals each (the canonical form keeps 4: a ten-thousandth of
# an 8192-pixel side is under a pixel).
FOCAL_DIGITS = 6
_FRACTION = rf"(0(\.[0-9]{{1,{FOCAL_DIGITS}}})?|1(\.0{{1,{FOCAL_DIGITS}}})?)"
FOCAL_POINT = rf"^fp:{_FRACTION},{_FRACTION}$"
CANONICAL_FOCAL_DIGITS = 4
# What each fit and gravity of a request is in canonical form (the key's words).
CANONICAL_FITS = {
    pb.FIT_UNSPECIFIED: "contain",
    pb.FIT_CONTAIN: "contain",
    # "inside" is contain's geometry (as large as possible within the box), so the two
    # share one variant.
    pb.FIT_INSIDE: "contain",
    pb.FIT_COVER: "cover",
    pb.FIT_FILL: "fill",
    pb.FIT_OUTSIDE: "outside",
    pb.FIT_PAD: "pad",
}
CANONICAL_GRAVITIES = {pb.GRAVITY_UNSPECIFIED: "center"} | {
    value: name for name, value in GRAVITIES.items()
}
CANONICAL_COVER_GRAVITIES = CANONICAL_GRAVITIES | {pb.GRAVITY_FACE: "face"}
# The gravities that place a window, not an image on a canvas: cover's alone, not pad's.
COVER_ONLY = {
    pb.GRAVITY_SMART: "smart",
    pb.GRAVITY_FACE: "face",
    pb.GRAVITY_FOCAL_POINT: "a focal point",
}
# The gravities that look at the pixels: chosen on the first frame, kept for every frame.
CONTENT_GRAVITIES = ("smart", "face")
# The fits that place the image by gravity (pad takes the compass gravities alone).
PLACED = (pb.FIT_COVER, pb.FIT_PAD)
# The parameters that shape a resize and mean nothing without w or h.
SIZING = ("fit", "gravity", "enlarge", "dpr")


@dataclass(frozen=True)
class QueryGravity:
    """A checked query gravity: the request's enum, and its focal point where it has one."""

    gravity: pb.Gravity.ValueType
    focal_x: float = 0.0
    focal_y: float = 0.0


@dataclass(frozen=True)
class GravityValue:
    """The values `gravity` takes: a name (compass, smart, face), or fp:X,Y."""

    names: Mapping[str, pb.Gravity.ValueType]  # each name, and what it means

    def parse(self, raw: str) -> QueryGravity:
        if raw in self.names:
            return QueryGravity(self.names[raw])
        if re.fullmatch(FOCAL_POINT, raw) is None:
            if raw.startswith("fp:"):
                raise ValueError(
                    "a focal point must be fp:X,Y, X and Y from 0 to 1 (at most "
                    f"{FOCAL_DIGITS} decimals), as in fp:0.25,0.6"
                )
            raise ValueError(f"must be one of {', '.join(self.names)}, or fp:X,Y")
        x, y = raw.removeprefix("fp:").split(",")
        return QueryGravity(pb.GRAVITY_FOCAL_POINT, float(x), float(y))

    def schema(self) -> dict[str, Any]:
        return {
            "type": "string",
            "oneOf": [{"enum": list(self.names)}, {"pattern": FOCAL_POINT}],
        }

    def text(self) -> str:
        names = ", ".join(f"`{name}`" for name in self.names)
        return f"{names}, or `fp:X,Y` (X and Y from 0 to 1)"


@dataclass(frozen=True)
class Resize:
    width: int  # 0: follow the aspect ratio
    height: int
    fit: str
    # A compass name ("center", "northwest"...), "smart", "face", or a focal point
    # "fp:X,Y" (X and Y the fractions, to 4 decimals at most).
    gravity: str
    enlarge: bool

    def geometry(self, size: Size) -> tuple[Size, Size]:
        """(size to resample to, size of the final box): they differ for cover (the box
        is cut out) and pad (the box is a canvas around the image)."""
        width, height = size
        w, h = self.width, self.height
        if self.fit == "fill":
            if not self.enlarge:
                w, h = min(w, width), min(h, height)
            return (w, h), (w, h)
        if self.fit == "cover" and w and h and not self.enlarge:
            # A box bigger than the image shrinks, keeping its aspect ratio: a 10:1 banner
            # asked of a small image is still 10:1.
            shrink = min(1.0, width / w, height / h)
            w, h = max(1, round(w * shrink)), max(1, round(h * shrink))
        if w == 0:
            scale = h / height
        elif h == 0:
            scale = w / width
        elif self.fit in ("contain", "pad"):
            scale = min(w / width, h / height)
        else:  # cover and outside: at least the box
            scale = max(w / width, h / height)
        if not self.enlarge:
            scale = min(scale, 1.0)
        resized = (max(1, round(width * scale)), max(1, round(height * scale)))
        if self.fit == "cover" and w and h:
            return resized, (min(w, resized[0]), min(h, resized[1]))
        if self.fit == "pad":
            return resized, (w, h)
        return resized, resized

    def sizes(self, size: Size) -> tuple[Size, ...]:
        return self.geometry(size)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        resized, box = self.geometry(image.size)
        image = resample(image, resized)
        if box == resized:
            return image
        if self.gravity in CONTENT_GRAVITIES:
            # Chosen on the first frame and kept: one chosen per frame would jump about
            # as the content moves.
            if self not in memo:
                memo[self] = content_window(image, box, self.gravity)
            left, top = memo[self]
        elif self.gravity.startswith("fp:"):
            x, y = focal_point(self.gravity)
            left, top = windows.focal_window(image.size, box, x, y)
        else:
            left, top = gravity_corner(image.size, box, self.gravity)
        return image.crop((left, top, left + box[0], top + box[1]))


@dataclass(frozen=True)
class Letterbox(Resize):
    """fit=pad: the image resized as contain does, on a canvas of exactly the box."""

    background: RGBA

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        resized, box = self.geometry(image.size)
        image = resample(image, resized)
        # The image is the window, the canvas the size it sits in.
        left, top = gravity_corner(box, resized, self.gravity)
        return canvas(image, box, (left, top), self.background)


def resample(image: Image.Image, size: Size) -> Image.Image:
    """image at size: Lanczos where the scale changes a lot (aliasing shows); bicubic for
    the last factor of two or less, as after a reduced-scale JPEG decode, where the two
    look the same and bicubic costs a third less."""
    from PIL import Image

    if size == image.size:
        return image
    gentle = size[0] >= image.width / 2 and size[1] >= image.height / 2
    method = Image.Resampling.BICUBIC if gentle else Image.Resampling.LANCZOS
    return image.resize(size, method, reducing_gap=2.0)


def content_window(image: Image.Image, box: Size, gravity: str) -> tuple[int, int]:
    """Top-left corner of the window gravity smart or face keeps of image."""
    from processor import smartcrop

    if gravity == "face":
        # Imported here: OpenCV (and NumPy) load in the processor only, and only once a
        # face crop is asked for; the gateway imports this module and never loads them.
        from processor import faces

        corner = faces.face_window(image, box)
        if corner is not None:
            return corner
    return smartcrop.best_window(image, box)


def focal_point(gravity: str) -> tuple[float, float]:
    """The (x, y) fractions of a canonical focal-point gravity, "fp:X,Y"."""
    x, y = gravity.removeprefix("fp:").split(",")
    return float(x), float(y)


def gravity_corner(size: Size, box: Size, gravity: str) -> tuple[int, int]:
    """Top-left corner of a box-sized window placed by a compass gravity."""
    spare_x, spare_y = size[0] - box[0], size[1] - box[1]
    left = 0 if "west" in gravity else spare_x if "east" in gravity else spare_x // 2
    top = 0 if "north" in gravity else spare_y if "south" in gravity else spare_y // 2
    return left, top


def _focal_name(x: float, y: float) -> str:
    """The canonical gravity of a focal point: "fp:X,Y", each to 4 decimals at most, or
    the compass gravity giving the same window (fp:0,0 is northwest, fp:0.5,0.5 center),
    so the two spellings are one variant."""
    x, y = (round(value, CANONICAL_FOCAL_DIGITS) + 0.0 for value in (x, y))  # no -0
    compass = _COMPASS.get((x, y))
    return compass if compass is not None else f"fp:{x:g},{y:g}"


# The focal points whose window is a compass gravity's: windows.focal_window centres on
# the middle exactly as the centre gravity does (spare // 2), and a point on an edge
# puts the window against it.
_COMPASS = {
    (x, y): f"{vertical}{horizontal}" or "center"
    for x, horizontal in ((0.0, "west"), (0.5, ""), (1.0, "east"))
    for y, vertical in ((0.0, "north"), (0.5, ""), (1.0, "south"))
}


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    side = Integer(1, limits.max_output_dimension)
    return (
        Param(
            "w",
            side,
            "Target width in pixels (times dpr); give w or h alone to keep the aspect ratio.",
            field="resize.width",
            bound="IMAGESVC_MAX_OUTPUT_DIMENSION",
        ),
        Param(
            "h",
            side,
            "Target height in pixels (times dpr).",
            field="resize.height",
            bound="IMAGESVC_MAX_OUTPUT_DIMENSION",
        ),
        Param(
            "fit",
            Choice(FITS),
            "How w x h is filled (needs w or h): contain or inside (the default: as large "
            "as possible inside), cover (fill, then crop), fill (stretch), outside (as "
            "small as possible covering the box), pad (needs w and h: contain on a canvas "
            "of exactly w x h, the rest filled with bg).",
            field="resize.fit",
        ),
        Param(
            "gravity",
            GravityValue(COVER_GRAVITIES),
            "Which part a cover crop keeps (with fit=cover): a side or corner; smart the "
            "most detailed part (entropy); face the faces found (else as smart); fp:X,Y "
            "the window centred on that point as nearly as the image allows, X and Y "
            "fractions of the width and height (fp:0.5,0.5 is center). With fit=pad, where "
            "the image sits (a side, a corner or center).",
            field="resize.gravity",
        ),
        Param(
            "enlarge",
            Flag(),
            "Allow a result larger than the original (needs w or h; default false).",
        ),
        Param(
            "dpr",
            Number(1, 4),
            "Device pixel ratio: multiplies w and h (needs w or h).",
            field="resize.dpr",
        ),
    )


def _request(values: Values) -> pb.Resize | None:
    if "w" not in values and "h" not in values:
        return None
    gravity: QueryGravity = values.get("gravity", QueryGravity(pb.GRAVITY_UNSPECIFIED))
    resize = pb.Resize(
        width=values.get("w", 0),
        height=values.get("h", 0),
        fit=values.get("fit", pb.FIT_UNSPECIFIED),
        gravity=gravity.gravity,
        enlarge=values.get("enlarge", False),
        dpr=values.get("dpr", 0.0),
        focal_x=gravity.focal_x,
        focal_y=gravity.focal_y,
    )
    if resize.fit == pb.FIT_PAD and "bg" in values:
        resize.background.CopyFrom(values["bg"])
    return resize


def _conflict(values: Values, limits: RequestLimits) -> Refusal | None:
    sizing = [name for name in SIZING if name in values]
    if sizing and "w" not in values and "h" not in values:
        return sizing[0], "needs w or h"
    # The dpr the processor is sent: a float32 in the contract, so w x 3.9963414634146344
    # can round past the limit there and not here (found by tests/test_properties.py).
    dpr = pb.Resize(dpr=values["dpr"]).dpr if "dpr" in values else 1.0
    for name in ("w", "h"):
        if round(values.get(name, 0) * dpr) > limits.max_output_dimension:
            return name, f"times dpr, must be at most {limits.max_output_dimension}"
    fit = values.get("fit")
    if fit == pb.FIT_PAD and ("w" not in values or "h" not in values):
        return "fit", "pad needs both w and h"
    if "gravity" in values and fit not in PLACED:
        return "gravity", "applies to fit=cover or fit=pad only"
    asked: QueryGravity | None = values.get("gravity")
    if asked is not None and asked.gravity in COVER_ONLY and fit == pb.FIT_PAD:
        return "gravity", f"{COVER_ONLY[asked.gravity]} applies to fit=cover only"
    return None


def _parse(message: pb.Resize, limits: RequestLimits) -> Resize:
    dpr = finite(message.dpr, "resize.dpr") or 1.0
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
    if message.fit not in CANONICAL_FITS:
        raise invalid_argument("resize.fit", "unknown fit")
    if message.gravity == pb.GRAVITY_FOCAL_POINT:
        # Into the gravity's own word, "fp:X,Y": a field of its own would enter every
        # variant key (vars() of the step), changing the keys of every existing variant.
        # The gateway's pattern allows 0 to 1 only: these are a gRPC caller's mistakes.
        x = finite(message.focal_x, "resize.focal_x")
        y = finite(message.focal_y, "resize.focal_y")
        for name, fraction in (("resize.focal_x", x), ("resize.focal_y", y)):
            if not 0.0 <= fraction <= 1.0:
                raise invalid_argument(name, "must be between 0 and 1")
        named = _focal_name(x, y)
    elif message.gravity in CANONICAL_COVER_GRAVITIES:
        named = CANONICAL_COVER_GRAVITIES[message.gravity]
    else:
        raise invalid_argument("resize.gravity", "unknown gravity")
    fit = CANONICAL_FITS[message.fit]
    if width == 0 or height == 0:
        fit = "contain"  # one side follows the aspect ratio: every fit means the same
    gravity = named if fit in ("cover", "pad") else "center"
    if fit != "pad":
        return Resize(width, height, fit, gravity, message.enlarge)
    if message.gravity in COVER_ONLY:
        only = COVER_ONLY[message.gravity]
        raise invalid_argument("resize.gravity", f"{only} applies to fit=cover only")
    background = color(message, "resize.background", WHITE)
    return Letterbox(width, height, fit, gravity, message.enlarge, background)


OPERATION = Operation("resize", _params, _request, _parse, _conflict)
