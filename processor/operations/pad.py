"""pad=top,right,bottom,left (or pad=N, all four): borders of bg around the image.

`canvas` is shared with resize's fit=pad (a letterbox), which places the image by gravity
on a canvas of exactly the box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument
from processor.operations.base import (
    RGBA,
    WHITE,
    Memo,
    Operation,
    Param,
    Pattern,
    RequestLimits,
    Size,
    Values,
    color,
    grey,
)

if TYPE_CHECKING:
    from PIL import Image

SIDES = ("top", "right", "bottom", "left")


@dataclass(frozen=True)
class Pad:
    top: int
    right: int
    bottom: int
    left: int
    background: RGBA

    def sizes(self, size: Size) -> tuple[Size, ...]:
        width, height = size
        return ((self.left + width + self.right, self.top + height + self.bottom),)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        (size,) = self.sizes(image.size)
        return canvas(image, size, (self.left, self.top), self.background)


def canvas(image: Image.Image, size: Size, corner: Size, background: RGBA) -> Image.Image:
    """image at corner (its top-left) on a canvas of size filled with background, in a
    mode that shows the background: with alpha where it is not opaque, in colour where
    it is not a grey."""
    from PIL import Image

    mode = image.mode  # L, LA, RGB or RGBA
    if background[3] < 255 and "A" not in mode:
        mode += "A"
    if mode.startswith("L") and not background[0] == background[1] == background[2]:
        mode = "RGB" + mode[1:]
    fills: dict[str, float | tuple[int, ...]] = {
        "RGBA": background,
        "RGB": background[:3],
        "LA": (grey(background), background[3]),
        "L": grey(background),
    }
    out = Image.new(mode, size, fills[mode])
    out.paste(image if image.mode == mode else image.convert(mode), corner)
    out.info = dict(image.info)  # the ICC profile, as a resize or a crop keeps it
    return out


def numbers_up_to(hi: int) -> str:
    """A regular expression for the whole numbers 0 to hi, no leading zeros: so the
    OpenAPI pattern says the bound, and no value it allows is a 400."""
    digits = str(hi)
    if hi < 10:
        return f"[0-{hi}]"
    shorter = ["[0-9]", *(f"[1-9][0-9]{{{n}}}" for n in range(1, len(digits) - 1))]
    as_long = [digits]  # then those below hi of its length: a prefix of hi, a lower digit
    for n, digit in enumerate(digits):
        low = 1 if n == 0 else 0
        if int(digit) > low:
            rest = len(digits) - n - 1
            as_long.append(f"{digits[:n]}[{low}-{int(digit) - 1}][0-9]{{{rest}}}")
    return "(" + "|".join(shorter + as_long) + ")"


def _message(raw: str) -> pb.Pad:
    sides = [int(part) for part in raw.split(",")]
    top, right, bottom, left = sides * 4 if len(sides) == 1 else sides
    return pb.Pad(top=top, right=right, bottom=bottom, left=left)


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    hi = limits.max_output_dimension
    number = numbers_up_to(hi)
    shape = Pattern(
        f"^{number}(,{number}){{3}}$|^{number}$",
        "`top,right,bottom,left` or `N` (all four), each 0 to " + str(hi),
        f"must be top,right,bottom,left in pixels, or one number for all four, each 0 to {hi}",
        _message,
    )
    return (
        Param(
            "pad",
            shape,
            "Borders in pixels added after resizing (CSS order: top,right,bottom,left; one "
            "number pads all four), filled with bg (default white; transparent where bg's "
            "alpha is 00 and the format keeps alpha).",
            field="pad",
            bound="IMAGESVC_MAX_OUTPUT_DIMENSION",
        ),
    )


def _request(values: Values) -> pb.Pad | None:
    if "pad" not in values:
        return None
    pad = pb.Pad()
    pad.CopyFrom(values["pad"])
    if "bg" in values:
        pad.background.CopyFrom(values["bg"])
    return pad


def _parse(message: pb.Pad, limits: RequestLimits) -> Pad | None:
    sides = tuple(getattr(message, side) for side in SIDES)
    if not all(0 <= side <= limits.max_output_dimension for side in sides):
        raise invalid_argument("pad", f"each side 0 to {limits.max_output_dimension} pixels")
    if not any(sides):
        return None
    top, right, bottom, left = sides
    return Pad(top, right, bottom, left, color(message, "pad.background", WHITE))


OPERATION = Operation("pad", _params, _request, _parse)
