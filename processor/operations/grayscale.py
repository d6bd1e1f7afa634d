"""grayscale: shades of grey, alpha kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageservice.v1 import processor_service_pb2 as pb

from processor.operations.base import Flag, Memo, Operation, Param, RequestLimits, Size, Values

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Grayscale:
    def sizes(self, size: Size) -> tuple[Size, ...]:
        return (size,)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        return image.convert("LA" if "A" in image.mode else "L")


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    return (Param("grayscale", Flag(), "Convert to shades of grey (alpha is kept)."),)


def _request(values: Values) -> pb.Grayscale | None:
    return pb.Grayscale() if values.get("grayscale") else None


def _parse(message: pb.Grayscale, limits: RequestLimits) -> Grayscale:
    return Grayscale()


OPERATION = Operation("grayscale", _params, _request, _parse)
