"""rotate=DEGREES: clockwise, as sharp, imgproxy, imgix and weserv turn; multiples of 90
are lossless, other angles fill the uncovered corners with bg."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageservice.v1 import processor_service_pb2 as pb

from processor.operations.base import (
    RGBA,
    WHITE,
    Memo,
    Number,
    Operation,
    Param,
    RequestLimits,
    Size,
    Values,
    color,
    finite,
    grey,
)

if TYPE_CHECKING:
    from PIL import Image

RIGHT_ANGLES = (90.0, 180.0, 270.0)


@dataclass(frozen=True)
class Rotate:
    angle: float  # clockwise, in (0, 360)
    background: RGBA

    def sizes(self, size: Size) -> tuple[Size, ...]:
        return (rotated_size(size, counter_clockwise(self.angle)),)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        from PIL import Image

        angle = counter_clockwise(self.angle)
        right = {
            90.0: Image.Transpose.ROTATE_90,
            180.0: Image.Transpose.ROTATE_180,
            270.0: Image.Transpose.ROTATE_270,
        }
        if angle in right:
            return image.transpose(right[angle])
        background = self.background
        if background[3] < 255 and "A" not in image.mode:
            image = image.convert("RGBA" if image.mode == "RGB" else "LA")
        fills: dict[str, float | tuple[int, ...]] = {
            "RGBA": background,
            "RGB": background[:3],
            "LA": (grey(background), background[3]),
            "L": grey(background),
        }
        fill = fills[image.mode]
        return image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=fill)


def counter_clockwise(clockwise: float) -> float:
    """The angle Pillow turns by (counter-clockwise) for a clockwise one, in [0, 360)."""
    return (360.0 - clockwise) % 360.0


def rotated_size(size: Size, angle: float) -> Size:
    """The canvas a counter-clockwise turn makes: for other angles than right ones, the
    arithmetic of Pillow's rotate(expand=True), so the size judged is the size allocated."""
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


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    return (
        Param(
            "rotate",
            Number(-360, 360),
            "Degrees clockwise; multiples of 90 are lossless, other angles fill the "
            "corners with bg.",
            field="rotate.angle",
        ),
    )


def _request(values: Values) -> pb.Rotate | None:
    if "rotate" not in values:
        return None
    rotate = pb.Rotate(angle=values["rotate"])
    if "bg" in values:
        rotate.background.CopyFrom(values["bg"])
    return rotate


def _parse(message: pb.Rotate, limits: RequestLimits) -> Rotate | None:
    angle = round(finite(message.angle, "rotate.angle") % 360.0, 2) % 360.0
    if angle == 0:
        return None
    # A right angle uncovers nothing: its background is not part of the key.
    background = WHITE if angle in RIGHT_ANGLES else color(message, "rotate.background", WHITE)
    return Rotate(angle, background)


OPERATION = Operation("rotate", _params, _request, _parse)
