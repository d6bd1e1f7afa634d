"""brightness, contrast, saturation: factors, 1 unchanged (applied in that order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument
from processor.operations.base import (
    Memo,
    Number,
    Operation,
    Param,
    RequestLimits,
    Size,
    Values,
    finite,
)

if TYPE_CHECKING:
    from PIL import Image

NAMES = ("brightness", "contrast", "saturation")
MAX_FACTOR = 10.0


@dataclass(frozen=True)
class Adjust:
    brightness: float
    contrast: float
    saturation: float

    def sizes(self, size: Size) -> tuple[Size, ...]:
        return (size,)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        from PIL import ImageEnhance

        alpha = image.getchannel("A") if "A" in image.mode else None
        base = image.convert("RGB" if image.mode in ("RGB", "RGBA") else "L")
        if self.brightness != 1.0:
            base = ImageEnhance.Brightness(base).enhance(self.brightness)
        if self.contrast != 1.0:
            base = ImageEnhance.Contrast(base).enhance(self.contrast)
        if self.saturation != 1.0 and base.mode == "RGB":
            base = ImageEnhance.Color(base).enhance(self.saturation)
        if alpha is not None:
            base.putalpha(alpha)
        return base


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    factor = Number(0.01, MAX_FACTOR)
    return tuple(
        Param(name, factor, f"{name.capitalize()} factor; 1 is unchanged.", field="adjust")
        for name in NAMES
    )


def _request(values: Values) -> pb.Adjust | None:
    given = {name: values[name] for name in NAMES if name in values}
    return pb.Adjust(**given) if given else None


def _parse(message: pb.Adjust, limits: RequestLimits) -> Adjust | None:
    factors = [finite(getattr(message, name), "adjust") or 1.0 for name in NAMES]
    if any(not 0.0 <= f <= MAX_FACTOR for f in factors):
        raise invalid_argument("adjust", "factors are between 0 and 10 (1 is unchanged)")
    rounded = [round(f, 3) for f in factors]
    return None if rounded == [1.0, 1.0, 1.0] else Adjust(*rounded)


OPERATION = Operation("adjust", _params, _request, _parse)
