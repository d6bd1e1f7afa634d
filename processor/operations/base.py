"""What every operation module declares, and the pieces those declarations share.

An operation module holds everything about one operation: its field in the contract's
`Operation` message, its HTTP query parameters (names, ranges from the limits, docs), the
request message it makes of them, its validation and canonical form, and its Pillow step.
This module holds no Pillow: the gateway imports the declarations to parse and document
queries and never loads Pillow, so each step imports Pillow inside its `apply`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument
from common.ids import IMAGE_ID_PATTERN, parse_image_id

if TYPE_CHECKING:
    from PIL import Image

Size = tuple[int, int]
RGBA = tuple[int, int, int, int]
WHITE: RGBA = (255, 255, 255, 255)
# What a step works out once per render and keeps for every frame (a smart crop's window:
# one chosen per frame would jump about as the content moves), keyed by the step; and
# the other stored images the steps name, decoded by the pipeline, keyed by Stored.
Memo = dict[object, Any]


@dataclass(frozen=True)
class Stored:
    """The memo's key of another stored image a step names (see Step.images): the
    pipeline puts its first frame there, upright and in RGBA, before the first frame is
    transformed."""

    image_id: str


@dataclass(frozen=True)
class RequestLimits:
    """What a request's parameters may ask for (the processor's variables; the gateway
    reads the same to refuse a bad parameter first)."""

    max_output_dimension: int
    max_blur_sigma: float
    # format=auto: the formats it may pick, best first, where Accept allows them.
    auto_formats: tuple[str, ...] = ("avif", "webp")


class Step(Protocol):
    """One operation in canonical form: a frozen dataclass whose fields are its key."""

    def sizes(self, size: Size) -> tuple[Size, ...]:
        """Every size the step allocates for an input this size, the result's last."""
        ...

    def apply(self, image: Image.Image, memo: Memo) -> Image.Image:
        """The step on one frame (in mode L, LA, RGB or RGBA)."""
        ...

    # A step that draws other stored images (a watermark) also has
    #     def images(self) -> Mapping[str, str]
    # naming them: {the request field that names one: its id}. The processor fetches
    # each (a missing one is IMAGE_NOT_FOUND naming its field) and the pipeline decodes
    # it into the memo under Stored(id). See Spec.images.


class Value(Protocol):
    """The values a query parameter takes: its parser, JSON schema and docs text."""

    def parse(self, raw: str) -> Any:
        """The value raw spells; ValueError saying what is wrong."""
        ...

    def schema(self) -> dict[str, Any]: ...

    def text(self) -> str: ...


@dataclass(frozen=True)
class Param:
    """One HTTP query parameter."""

    name: str
    value: Value
    description: str
    # The request field the processor's errors name for it (e.g. "blur.sigma"), so a
    # refusal from the processor names the query parameter instead.
    field: str = ""
    # The variable that sets its upper bound, if one does (for docs/http.md).
    bound: str = ""

    @property
    def schema(self) -> dict[str, Any]:
        return self.value.schema()


# A refusal of parameters given together: (the parameter to blame, why).
Refusal = tuple[str, str]
Values = Mapping[str, Any]


def _agrees(values: Values, limits: RequestLimits) -> Refusal | None:
    return None


@dataclass(frozen=True)
class Operation:
    """What an operation module declares (see the module docstring)."""

    field: str  # its field in the contract's Operation oneof, e.g. "blur"
    params: Callable[[RequestLimits], tuple[Param, ...]]
    # The request message of the checked query values (every parameter's, by name), or
    # None when the query does not ask for this operation.
    request: Callable[[Values], Any]
    # The canonical step of the request message, None when it changes nothing; raises
    # ServiceError(INVALID_ARGUMENT) naming the field.
    parse: Callable[[Any, RequestLimits], Step | None]
    # What is wrong with the query values together, for this operation's parameters.
    conflict: Callable[[Values, RequestLimits], Refusal | None] = _agrees


# The values query parameters take.

_NUMBER = re.compile(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?")
_COLOR = "^#?[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$"


@dataclass(frozen=True)
class Integer:
    lo: int
    hi: int

    def parse(self, raw: str) -> int:
        if not re.fullmatch(r"[0-9]{1,9}", raw):
            raise ValueError("must be a whole number, digits only")
        value = int(raw)
        if not self.lo <= value <= self.hi:
            raise ValueError(f"must be between {self.lo} and {self.hi}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi}

    def text(self) -> str:
        return f"{self.lo} to {self.hi}"


@dataclass(frozen=True)
class Number:
    lo: float
    hi: float

    def parse(self, raw: str) -> float:
        if len(raw) > 40 or not _NUMBER.fullmatch(raw):
            raise ValueError("must be a number")
        value = float(raw)
        if not math.isfinite(value) or not self.lo <= value <= self.hi:
            raise ValueError(f"must be between {self.lo:g} and {self.hi:g}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": self.lo, "maximum": self.hi}

    def text(self) -> str:
        return f"{self.lo:g} to {self.hi:g}"


@dataclass(frozen=True)
class Flag:
    def parse(self, raw: str) -> bool:
        if raw in ("", "true"):
            return True
        if raw == "false":
            return False
        raise ValueError("a flag: give it alone, or as true or false")

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def text(self) -> str:
        return "flag"


@dataclass(frozen=True)
class Choice:
    options: Mapping[str, Any]  # each spelling, and what it means in the request

    def parse(self, raw: str) -> Any:
        if raw not in self.options:
            raise ValueError(f"must be one of {', '.join(self.options)}")
        return self.options[raw]

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.options)}

    def text(self) -> str:
        return ", ".join(f"`{option}`" for option in self.options)


@dataclass(frozen=True)
class Pattern:
    """A string of a fixed shape (a regular expression), converted once it matches."""

    pattern: str
    spelled: str  # how docs/http.md writes the shape
    message: str
    convert: Callable[[str], Any]

    def parse(self, raw: str) -> Any:
        if re.fullmatch(self.pattern, raw) is None:
            raise ValueError(self.message)
        return self.convert(raw)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": self.pattern}

    def text(self) -> str:
        return self.spelled


def _color_message(raw: str) -> pb.Color:
    rgba = bytes.fromhex(raw.removeprefix("#"))
    alpha = rgba[3] if len(rgba) == 4 else 255
    return pb.Color(red=rgba[0], green=rgba[1], blue=rgba[2], alpha=alpha)


COLOR = Pattern(
    _COLOR, "`RRGGBB` or `RRGGBBAA`", "must be a hex colour: RRGGBB or RRGGBBAA", _color_message
)
# Another stored image's id: the gateway checks that the caller may read every image a
# parameter of this value names (Parameters.images).
IMAGE_ID = Pattern(
    IMAGE_ID_PATTERN,
    "an image id",
    "must be an image id (22 characters of A-Z, a-z, 0-9, - and _)",
    parse_image_id,
)


# Checks the processor makes of request messages.


def finite(value: float, name: str) -> float:
    """value, or INVALID_ARGUMENT naming the field when it is NaN or infinite."""
    if not math.isfinite(value):
        raise invalid_argument(name, "must be a finite number")
    return value


def color(parent: Any, name: str, default: RGBA) -> RGBA:
    """The `background` colour of a request message, default where it is unset."""
    if not parent.HasField("background"):
        return default
    message = parent.background
    channels = (message.red, message.green, message.blue, message.alpha)
    if any(c > 255 for c in channels):
        raise invalid_argument(name, "colour channels are 0-255")
    return (message.red, message.green, message.blue, message.alpha)


def grey(rgba: RGBA) -> int:
    """The luma of a colour, for filling greyscale images."""
    return round(0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2])
