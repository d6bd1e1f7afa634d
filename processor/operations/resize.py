"""w, h, fit, gravity, enlarge, dpr: resize to a box (fit names and meanings follow sharp).

fit=pad is a letterbox: contain's geometry on a canvas of exactly w x h, the rest filled
with bg, the image placed by gravity. Its step is a Letterbox, a Resize that carries the
background: only its key says a background, so every other resize's key stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument
from processor.operations.base import (
    RGBA,
    WHITE,
    Choice,
    Flag,
    Integer,
    Limits,
    Memo,
    Number,
    Operation,
    Param,
    Refusal,
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
# The fits that place the image by gravity (pad takes the compass gravities alone).
PLACED = (pb.FIT_COVER, pb.FIT_PAD)
# The parameters that shape a resize and mean nothing without w or h.
SIZING = ("fit", "gravity", "enlarge", "dpr")


@dataclass(frozen=True)
class Resize:
    width: int  # 0: follow the aspect ratio
    height: int
    fit: str
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
        if self.gravity == "smart":
            from processor import smartcrop

            if self not in memo:
                memo[self] = smartcrop.best_window(image, box)
            left, top = memo[self]
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


def gravity_corner(size: Size, box: Size, gravity: str) -> tuple[int, int]:
    """Top-left corner of a box-sized window placed by a compass gravity."""
    spare_x, spare_y = size[0] - box[0], size[1] - box[1]
    left = 0 if "west" in gravity else spare_x if "east" in gravity else spare_x // 2
    top = 0 if "north" in gravity else spare_y if "south" in gravity else spare_y // 2
    return left, top


def _params(limits: Limits) -> tuple[Param, ...]:
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
            Choice(GRAVITIES),
            "Which part a cover crop keeps (with fit=cover); smart keeps the most "
            "detailed part (entropy). With fit=pad, where the image sits (not smart).",
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
    resize = pb.Resize(
        width=values.get("w", 0),
        height=values.get("h", 0),
        fit=values.get("fit", pb.FIT_UNSPECIFIED),
        gravity=values.get("gravity", pb.GRAVITY_UNSPECIFIED),
        enlarge=values.get("enlarge", False),
        dpr=values.get("dpr", 0.0),
    )
    if resize.fit == pb.FIT_PAD and "bg" in values:
        resize.background.CopyFrom(values["bg"])
    return resize


def _conflict(values: Values, limits: Limits) -> Refusal | None:
    sizing = [name for name in SIZING if name in values]
    if sizing and "w" not in values and "h" not in values:
        return sizing[0], "needs w or h"
    dpr = values.get("dpr", 1.0)
    for name in ("w", "h"):
        if round(values.get(name, 0) * dpr) > limits.max_output_dimension:
            return name, f"times dpr, must be at most {limits.max_output_dimension}"
    fit = values.get("fit")
    if fit == pb.FIT_PAD and ("w" not in values or "h" not in values):
        return "fit", "pad needs both w and h"
    if "gravity" in values and fit not in PLACED:
        return "gravity", "applies to fit=cover or fit=pad only"
    if values.get("gravity") == pb.GRAVITY_SMART and fit == pb.FIT_PAD:
        return "gravity", "smart applies to fit=cover only"
    return None


def _parse(message: pb.Resize, limits: Limits) -> Resize:
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
    if message.gravity not in CANONICAL_GRAVITIES:
        raise invalid_argument("resize.gravity", "unknown gravity")
    fit = CANONICAL_FITS[message.fit]
    if width == 0 or height == 0:
        fit = "contain"  # one side follows the aspect ratio: every fit means the same
    gravity = CANONICAL_GRAVITIES[message.gravity] if fit in ("cover", "pad") else "center"
    if fit != "pad":
        return Resize(width, height, fit, gravity, message.enlarge)
    if gravity == "smart":
        raise invalid_argument("resize.gravity", "smart applies to fit=cover only")
    background = color(message, "resize.background", WHITE)
    return Letterbox(width, height, fit, gravity, message.enlarge, background)


OPERATION = Operation("resize", _params, _request, _parse, _conflict)
