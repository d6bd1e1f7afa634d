"""blur=SIGMA: a Gaussian blur."""

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


@dataclass(frozen=True)
class Blur:
    sigma: float

    def sizes(self, size: Size) -> tuple[Size, ...]:
        return (size,)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        from PIL import ImageFilter

        return image.filter(ImageFilter.GaussianBlur(self.sigma))


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    sigma = Number(0, limits.max_blur_sigma)
    return (
        Param(
            "blur",
            sigma,
            "Gaussian blur sigma in pixels.",
            field="blur.sigma",
            bound="IMAGESVC_MAX_BLUR_SIGMA",
        ),
    )


def _request(values: Values) -> pb.Blur | None:
    return pb.Blur(sigma=values["blur"]) if "blur" in values else None


def _parse(message: pb.Blur, limits: RequestLimits) -> Blur | None:
    sigma = round(finite(message.sigma, "blur.sigma"), 2)
    if not 0 <= sigma <= limits.max_blur_sigma:
        raise invalid_argument("blur.sigma", f"must be between 0 and {limits.max_blur_sigma:g}")
    return Blur(sigma) if sigma > 0 else None


OPERATION = Operation("blur", _params, _request, _parse)
