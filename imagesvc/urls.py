"""URLs of images and their variants, for every transformation parameter.

The parameters are the processor's own declarations (processor.parameters.table), the
ones the gateway parses and documents: a parameter added there is known here too. A
value is checked for its shape (an enumeration's spelling, a colour, a flag, a number's
fixed bounds) before any request is made; bounds the service sets from its
configuration (IMAGESVC_MAX_OUTPUT_DIMENSION, IMAGESVC_MAX_BLUR_SIGMA) are the
gateway's to check, as the client cannot know them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote as _urlquote

from imagesvc.errors import InvalidParameter
from processor import parameters
from processor.operations.base import Flag, Integer, Param, RequestLimits

# A value as Python spells it: True for a flag, numbers, strings, and (left, top, width,
# height) or (top, right, bottom, left) for crop and pad.
ParamValue = str | int | float | bool | Sequence[int]
Params = Mapping[str, ParamValue]

PRESET = "preset"  # a named transformation (GET /presets), not an operation's parameter
# The declarations under bounds no configuration reaches: what a client can check.
_UNBOUNDED = RequestLimits(max_output_dimension=999_999_999, max_blur_sigma=1e9)
PARAMETERS: Mapping[str, Param] = {param.name: param for param in parameters.table(_UNBOUNDED)}


def _spelled(param: Param, value: ParamValue) -> str:
    """value as the query writes it."""
    if isinstance(value, bool):
        return "" if value else "false"  # a flag that is true is given bare
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if isinstance(param.value, Integer):
            if not value.is_integer():
                raise InvalidParameter(param.name, "must be a whole number")
            return str(int(value))
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    return ",".join(str(int(part)) for part in value)


def query(params: Params) -> list[tuple[str, str]]:
    """The query of params, in the order given (the gateway's order never matters);
    InvalidParameter for a name the service does not know or a value of a wrong shape.
    A flag given False is left out (as the service reads it)."""
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        if name == PRESET:
            pairs.append((name, str(value)))
            continue
        param = PARAMETERS.get(name)
        if param is None:
            raise InvalidParameter(name, "unknown parameter")
        if isinstance(param.value, Flag) and value is False:
            continue
        if isinstance(param.value, Flag) and not isinstance(value, bool):
            raise InvalidParameter(name, "a flag: give True or False")
        raw = _spelled(param, value)
        try:
            param.value.parse(raw)
        except ValueError as exc:
            raise InvalidParameter(name, str(exc)) from None
        pairs.append((name, raw))
    return pairs


def encode(pairs: Iterable[tuple[str, str]]) -> str:
    """A query string of pairs, every byte but A-Z a-z 0-9 - . _ ~ escaped (commas too,
    which the gateway decodes): the spelling a signature signs."""
    return "&".join(_quote(name) + "=" + _quote(value) for name, value in pairs)


def _quote(text: str) -> str:
    return _urlquote(text, safe="")


def image_path(image_id: str, params: Params | None = None) -> str:
    """`/images/{id}`, with the query of params if any."""
    path = f"/images/{_quote(image_id)}"
    pairs = query(params or {})
    return f"{path}?{encode(pairs)}" if pairs else path


class URLBuilder:
    """Absolute URLs of one gateway's images: `URLBuilder(base).image(id, w=300)`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def image(self, image_id: str, params: Params | None = None, /, **more: ParamValue) -> str:
        """The original (no parameters), or a variant."""
        return self.base_url + image_path(image_id, {**(params or {}), **more})

    def blurred(self, image_id: str) -> str:
        """The original service's blur endpoint."""
        return f"{self.base_url}/blurred-images/{_quote(image_id)}"

    def info(self, image_id: str) -> str:
        return f"{self.base_url}/images/{_quote(image_id)}/info"
