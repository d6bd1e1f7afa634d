"""wm=ID, wm_gravity, wm_x, wm_y, wm_opacity, wm_scale: another stored image drawn over the
result, last of all, on every frame.

The mark is the stored image's first frame, upright, its alpha kept and multiplied by
the opacity. wm_scale makes its width that fraction of the result's width (its aspect
ratio kept); a mark larger than the result, at its own size or scaled, is shrunk to fit
inside it (never clipped for its size: only offsets push part of it past the edges).
The mark's bytes are fetched by the processor like an original (they never change
under an id, so its id in the key keeps the key deterministic) and decoded by the
pipeline into the memo (see base.Stored).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument
from common.ids import parse_image_id
from processor.operations.base import (
    IMAGE_ID,
    Choice,
    Integer,
    Memo,
    Number,
    Operation,
    Param,
    Refusal,
    RequestLimits,
    Size,
    Stored,
    Values,
    finite,
)
from processor.operations.resize import CANONICAL_GRAVITIES, GRAVITIES, gravity_corner

if TYPE_CHECKING:
    from PIL import Image

FIELD = "watermark.image_id"  # the request field that names the mark
DEFAULT_GRAVITY = "southeast"
# Compass gravities and center: a mark is placed, not chosen by content.
MARK_GRAVITIES = {name: value for name, value in GRAVITIES.items() if name != "smart"}
# The parameters that shape a watermark and mean nothing without wm.
SHAPING = ("wm_gravity", "wm_x", "wm_y", "wm_opacity", "wm_scale")
LEAST = 0.01  # the smallest opacity and scale asked for (0 in the contract: the default)


@dataclass(frozen=True)
class Watermark:
    image_id: str
    gravity: str  # a compass gravity or center
    offset_x: int  # inward from the edge the gravity names; right where it centres
    offset_y: int  # inward from the edge the gravity names; down where it centres
    opacity: float  # (0, 1], times the mark's own alpha
    scale: float  # the mark's width over the result's; 0: its own size

    def images(self) -> Mapping[str, str]:
        return {FIELD: self.image_id}

    def sizes(self, size: Size) -> tuple[Size, ...]:
        return (size,)  # the mark is never larger than the result

    def fitted(self, mark: Size, size: Size) -> Size:
        """The mark's size on a result this size: scaled, then shrunk to fit inside."""
        width, height = mark
        if self.scale:
            target = max(1, round(size[0] * self.scale))
            width, height = target, max(1, round(height * target / width))
        if width > size[0] or height > size[1]:
            shrink = min(size[0] / width, size[1] / height)
            width = min(size[0], max(1, math.floor(width * shrink + 0.5)))
            height = min(size[1], max(1, math.floor(height * shrink + 0.5)))
        return width, height

    def corner(self, mark: Size, size: Size) -> tuple[int, int]:
        """Where the mark's top-left corner goes (perhaps outside, past an offset)."""
        left, top = gravity_corner(size, mark, self.gravity)
        left += -self.offset_x if "east" in self.gravity else self.offset_x
        top += -self.offset_y if "south" in self.gravity else self.offset_y
        return left, top

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        if (self, image.size) not in memo:
            memo[self, image.size] = self._placed(memo[Stored(self.image_id)], image.size)
        placed = memo[self, image.size]
        if placed is None:  # pushed wholly off the result
            return image
        mark, where = placed
        if image.mode in ("L", "LA"):
            image = image.convert("RGB" if image.mode == "L" else "RGBA")
        if image.mode == "RGBA":
            image.alpha_composite(mark, where)
        else:
            image.paste(mark.convert("RGB"), where, mark.getchannel("A"))
        return image

    def _placed(self, mark: Image.Image, size: Size) -> tuple[Image.Image, tuple[int, int]] | None:
        """The mark as drawn on a result this size (scaled, faded, clipped to it) and
        where it goes; worked out once per render, the same for every frame."""
        from PIL import Image

        fitted = self.fitted(mark.size, size)
        if fitted != mark.size:
            mark = mark.resize(fitted, Image.Resampling.LANCZOS)
        if self.opacity < 1:
            mark = mark.copy()
            opacity = self.opacity
            mark.putalpha(mark.getchannel("A").point(lambda a: round(a * opacity)))
        left, top = self.corner(mark.size, size)
        # The part of the mark on the result (alpha_composite takes no outside corner).
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + mark.width, size[0]), min(top + mark.height, size[1])
        if x0 >= x1 or y0 >= y1:
            return None
        return mark.crop((x0 - left, y0 - top, x1 - left, y1 - top)), (x0, y0)


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    offset = Integer(0, limits.max_output_dimension)
    fraction = Number(LEAST, 1)
    return (
        Param(
            "wm",
            IMAGE_ID,
            "Watermark: another stored image (its id), which the caller must be allowed to "
            "read, drawn over the result after every other operation (on each frame of an "
            "animation; of an animated mark, its first frame), its transparency kept.",
            field=FIELD,
        ),
        Param(
            "wm_gravity",
            Choice(MARK_GRAVITIES),
            "Where the watermark goes (needs wm; default southeast).",
            field="watermark.gravity",
        ),
        Param(
            "wm_x",
            offset,
            "Watermark offset in pixels inward from the west or east edge its gravity "
            "names (needs wm; default 0); with a centred gravity, rightwards.",
            field="watermark.offset_x",
            bound="IMAGESVC_MAX_OUTPUT_DIMENSION",
        ),
        Param(
            "wm_y",
            offset,
            "Watermark offset in pixels inward from the north or south edge its gravity "
            "names (needs wm; default 0); with a centred gravity, downwards.",
            field="watermark.offset_y",
            bound="IMAGESVC_MAX_OUTPUT_DIMENSION",
        ),
        Param(
            "wm_opacity",
            fraction,
            "Watermark opacity, times its own alpha (needs wm; default 1).",
            field="watermark.opacity",
        ),
        Param(
            "wm_scale",
            fraction,
            "Watermark width as a fraction of the result's width (needs wm; default its "
            "own size); a watermark larger than the result is shrunk to fit.",
            field="watermark.scale",
        ),
    )


def _request(values: Values) -> pb.Watermark | None:
    if "wm" not in values:
        return None
    return pb.Watermark(
        image_id=values["wm"],
        gravity=values.get("wm_gravity", pb.GRAVITY_UNSPECIFIED),
        offset_x=values.get("wm_x", 0),
        offset_y=values.get("wm_y", 0),
        opacity=values.get("wm_opacity", 0.0),
        scale=values.get("wm_scale", 0.0),
    )


def _conflict(values: Values, limits: RequestLimits) -> Refusal | None:
    shaping = [name for name in SHAPING if name in values]
    if shaping and "wm" not in values:
        return shaping[0], "needs wm"
    return None


def _fraction(value: float, name: str) -> float:
    """A fraction 0.01-1 to three places; 0 (unset) stays 0."""
    given = finite(value, name)
    value = round(given, 3)  # float32 in the contract: 0.01 arrives as 0.0099999998
    if given != 0 and not LEAST <= value <= 1:
        raise invalid_argument(name, f"must be between {LEAST:g} and 1 (0: the default)")
    return value


def _parse(message: pb.Watermark, limits: RequestLimits) -> Watermark:
    try:
        image_id = parse_image_id(message.image_id)
    except ValueError:
        raise invalid_argument(FIELD, "not a valid image id") from None
    if message.gravity not in CANONICAL_GRAVITIES or message.gravity == pb.GRAVITY_SMART:
        raise invalid_argument("watermark.gravity", "a compass gravity or center")
    gravity = (
        DEFAULT_GRAVITY
        if message.gravity == pb.GRAVITY_UNSPECIFIED
        else CANONICAL_GRAVITIES[message.gravity]
    )
    for name, offset in (
        ("watermark.offset_x", message.offset_x),
        ("watermark.offset_y", message.offset_y),
    ):
        if not 0 <= offset <= limits.max_output_dimension:
            raise invalid_argument(name, f"must be between 0 and {limits.max_output_dimension}")
    opacity = _fraction(message.opacity, "watermark.opacity") or 1.0
    scale = _fraction(message.scale, "watermark.scale")
    return Watermark(image_id, gravity, message.offset_x, message.offset_y, opacity, scale)


OPERATION = Operation("watermark", _params, _request, _parse, _conflict)
