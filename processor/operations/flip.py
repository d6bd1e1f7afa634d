"""flip: mirror top to bottom."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageservice.v1 import processor_service_pb2 as pb

from processor.operations.base import Flag, Memo, Operation, Param, RequestLimits, Size, Values

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Flip:
    def sizes(self, size: Size) -> tuple[Size, ...]:
        return (size,)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        from PIL import Image

        return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    return (Param("flip", Flag(), "Mirror top to bottom."),)


def _request(values: Values) -> pb.Flip | None:
    return pb.Flip() if values.get("flip") else None


def _parse(message: pb.Flip, limits: RequestLimits) -> Flip:
    return Flip()


OPERATION = Operation("flip", _params, _request, _parse)
