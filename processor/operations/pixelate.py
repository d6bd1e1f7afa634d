"""pixelate=SIZE: blocks of SIZE x SIZE pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument
from processor.operations.base import Integer, Memo, Operation, Param, RequestLimits, Size, Values

if TYPE_CHECKING:
    from PIL import Image

MAX_SIZE = 1000


@dataclass(frozen=True)
class Pixelate:
    size: int

    def sizes(self, size: Size) -> tuple[Size, ...]:
        return (size,)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        from PIL import Image

        small = (max(1, image.width // self.size), max(1, image.height // self.size))
        return image.resize(small, Image.Resampling.BOX).resize(
            image.size, Image.Resampling.NEAREST
        )


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    block = Integer(1, MAX_SIZE)
    return (Param("pixelate", block, "Block size in pixels.", field="pixelate.size"),)


def _request(values: Values) -> pb.Pixelate | None:
    return pb.Pixelate(size=values["pixelate"]) if "pixelate" in values else None


def _parse(message: pb.Pixelate, limits: RequestLimits) -> Pixelate | None:
    if not 0 <= message.size <= MAX_SIZE:
        raise invalid_argument("pixelate.size", f"must be between 0 and {MAX_SIZE}")
    return Pixelate(message.size) if message.size > 1 else None


OPERATION = Operation("pixelate", _params, _request, _parse)
