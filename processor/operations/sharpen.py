"""sharpen=SIGMA: an unsharp mask."""

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

MAX_SIGMA = 10.0


@dataclass(frozen=True)
class Sharpen:
    sigma: float

    def sizes(self, size: Size) -> tuple[Size, ...]:
        return (size,)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        from PIL import ImageFilter

        return image.filter(ImageFilter.UnsharpMask(radius=self.sigma, percent=150, threshold=2))


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    sigma = Number(0, MAX_SIGMA)
    return (Param("sharpen", sigma, "Unsharp-mask sigma in pixels.", field="sharpen.sigma"),)


def _request(values: Values) -> pb.Sharpen | None:
    return pb.Sharpen(sigma=values["sharpen"]) if "sharpen" in values else None


def _parse(message: pb.Sharpen, limits: RequestLimits) -> Sharpen | None:
    sigma = round(finite(message.sigma, "sharpen.sigma"), 2)
    if not 0 <= sigma <= MAX_SIGMA:
        raise invalid_argument("sharpen.sigma", f"must be between 0 and {MAX_SIGMA:g}")
    return Sharpen(sigma) if sigma > 0 else None


OPERATION = Operation("sharpen", _params, _request, _parse)
