"""crop=left,top,width,height: cut a rectangle out first, before any resize."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import Reason, ServiceError, invalid_argument
from processor.operations.base import Memo, Operation, Param, Pattern, RequestLimits, Size, Values

if TYPE_CHECKING:
    from PIL import Image

# Width and height are never 0; each number has at most six digits, leading zeros aside.
SHAPE = "^[0-9]{1,6},[0-9]{1,6},0{0,5}[1-9][0-9]{0,5},0{0,5}[1-9][0-9]{0,5}$"


@dataclass(frozen=True)
class Crop:
    left: int
    top: int
    width: int
    height: int

    def box(self, size: Size) -> tuple[int, int, int, int]:
        """The rectangle clipped to the image; one wholly outside is an error."""
        width, height = size
        if self.left >= width or self.top >= height:
            raise ServiceError(
                Reason.CROP_OUTSIDE_IMAGE,
                f"the rectangle lies outside the {width}x{height} image",
                {"field": "crop"},
            )
        right, bottom = min(width, self.left + self.width), min(height, self.top + self.height)
        return (self.left, self.top, right, bottom)

    def sizes(self, size: Size) -> tuple[Size, ...]:
        left, top, right, bottom = self.box(size)
        return ((right - left, bottom - top),)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        return image.crop(self.box(image.size))


def _message(raw: str) -> pb.Crop:
    left, top, width, height = (int(part) for part in raw.split(","))
    return pb.Crop(left=left, top=top, width=width, height=height)


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    shape = Pattern(
        SHAPE,
        "`left,top,width,height`",
        "must be left,top,width,height in pixels, width and height above 0",
        _message,
    )
    return (
        Param(
            "crop",
            shape,
            "A rectangle left,top,width,height in pixels cut before resizing (width and "
            "height above 0; one wholly outside the image is a 422).",
            field="crop",
        ),
    )


def _request(values: Values) -> pb.Crop | None:
    return values.get("crop")


def _parse(message: pb.Crop, limits: RequestLimits) -> Crop:
    c = message
    if c.left < 0 or c.top < 0 or c.width <= 0 or c.height <= 0:
        raise invalid_argument("crop", "left and top >= 0, width and height > 0")
    return Crop(c.left, c.top, c.width, c.height)


OPERATION = Operation("crop", _params, _request, _parse)
