"""trim, or trim=THRESHOLD: cut away borders of the top-left pixel's colour (as imgproxy
and thumbor do), first of all the steps.

A pixel counts as border when no channel differs from that colour by more than the
threshold (10 by default), colours compared premultiplied by alpha, so a transparent
border is trimmed whatever colour its pixels hide. An image of one colour is left as it
is. An animation is trimmed by the box found on its first frame, every frame alike.

What it cuts depends on the pixels, so `sizes` cannot say it from the header: it gives
the untrimmed size, an upper bound (trim only shrinks). The plan is judged on that; the
pipeline judges the steps after trim again once trim has run (`SIZED_BY_PIXELS`), since
a smaller image can come out larger (fit=outside with enlarge, say, on a thin strip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument
from processor.operations.base import Memo, Operation, Param, Pattern, RequestLimits, Size, Values

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_THRESHOLD = 10
MAX_THRESHOLD = 255
# A flag (bare, true or false) or a threshold, 1 to 255.
SHAPE = "^(|true|false|[1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$"


@dataclass(frozen=True)
class Trim:
    threshold: int  # 1 to 255: the largest channel difference still counted as border

    # The size of its result depends on the pixels: sizes() is an upper bound, and the
    # pipeline judges the later steps again on the size trim made.
    SIZED_BY_PIXELS: ClassVar[bool] = True

    def sizes(self, size: Size) -> tuple[Size, ...]:
        return (size,)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        if self not in memo:
            memo[self] = self.box(image)  # the first frame's, for every frame
        box = memo[self]
        return image if box is None else image.crop(box)

    def box(self, image: Image.Image) -> tuple[int, int, int, int] | None:
        """What is not border; None when it all is (nothing to keep: leave the image)."""
        from PIL import Image, ImageChops

        if "A" in image.mode:
            # Premultiplied: every transparent pixel is 0 in every channel, one colour.
            image = image.convert("RGBa" if image.mode == "RGBA" else "La")
        border = Image.new(image.mode, image.size, image.getpixel((0, 0)))
        difference = ImageChops.difference(image, border)
        table = [0] * (self.threshold + 1) + [255] * (255 - self.threshold)
        far = difference.point(table * len(image.getbands()))  # the same for every band
        box = far.getbbox(alpha_only=False)
        if box is None or box == (0, 0, *image.size):
            return None
        return box


def _threshold(raw: str) -> pb.Trim | None:
    if raw == "false":
        return None
    return pb.Trim(threshold=DEFAULT_THRESHOLD if raw in ("", "true") else int(raw))


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    value = Pattern(
        SHAPE,
        "flag, or 1 to 255",
        "a flag (alone, true or false), or a colour distance from 1 to 255",
        _threshold,
    )
    return (
        Param(
            "trim",
            value,
            "Cut away borders of the top-left pixel's colour, before anything else: a "
            "pixel is border when no channel (alpha included) differs from it by more "
            f"than the threshold (bare trim: {DEFAULT_THRESHOLD}). An image of one colour "
            "is kept as it is; an animation is cut by its first frame's borders.",
            field="trim.threshold",
        ),
    )


def _request(values: Values) -> pb.Trim | None:
    return values.get("trim")


def _parse(message: pb.Trim, limits: RequestLimits) -> Trim:
    if not 0 <= message.threshold <= MAX_THRESHOLD:
        raise invalid_argument("trim.threshold", f"must be between 1 and {MAX_THRESHOLD}")
    return Trim(message.threshold or DEFAULT_THRESHOLD)


OPERATION = Operation("trim", _params, _request, _parse)
