"""flop: mirror left to right."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageservice.v1 import processor_service_pb2 as pb

from processor.operations.base import Flag, Memo, Operation, Param, RequestLimits, Size, Values

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Flop:
    def sizes(self, size: Size) -> tuple[Size, ...]:
        return (size,)

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        from PIL import Image

        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _params(limits: RequestLimits) -> tuple[Param, ...]:
    return (Param("flop", Flag(), "Mirror left to right."),)


def _request(values: Values) -> pb.Flop | None:
    return pb.Flop() if values.get("flop") else None


def _parse(message: pb.Flop, limits: RequestLimits) -> Flop:
    return Flop()


OPERATION = Operation("flop", _params, _request, _parse)
