"""Transformation query parameters: one table that parses requests and documents them.

The table is the processor's own declarations (processor/parameters.py: each operation
declares its parameters, their ranges and docs). The gateway only translates: every
value is checked for its shape here, with the same limits the processor applies (read
from the same variables), and for its meaning by the
processor, which canonicalises the request (so `?w=300&blur=2` and `?blur=2&w=300` are
one variant). Values are strict: no signs, spaces or spellings the table does not name,
and an option the chosen format cannot use is refused rather than ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imageservice.v1 import processor_service_pb2 as ppb

from gateway.problems import HTTPProblem
from processor import output, parameters
from processor.operations.base import IMAGE_ID, Param, RequestLimits

__all__ = [
    "CURSOR",
    "SHA256",
    "Param",
    "Parameters",
    "RequestLimits",
    "Transformation",
    "bad",
    "only",
]

CURSOR = "[A-Za-z0-9_-]{32}"  # the shape of the cache service's page tokens (for listing)
SHA256 = "[0-9a-f]{64}"  # GET /images?sha256=: a lookup by content, as metadata spells it
BLURRED_SIGMA = 10.0


def bad(name: str, message: str) -> HTTPProblem:
    return HTTPProblem(
        400, "Bad request", f"{name}: {message}", kind="invalid-parameter", parameter=name
    )


def only(names: Iterable[str], allowed: Collection[str] = ()) -> None:
    """Refuse the first query parameter name not in allowed."""
    for name in names:
        if name not in allowed:
            raise bad(name, "unknown parameter")


@dataclass(frozen=True)
class Transformation:
    operations: list[ppb.Operation]
    output: ppb.OutputOptions
    negotiated: bool  # the format depends on Accept: the response must say Vary: Accept


class Parameters:
    """The transformation parameters under the service's limits: parser and docs."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.table = parameters.table(limits)
        self._by_name = {p.name: p for p in self.table}
        # The parameters that name another stored image (wm): the caller must be allowed
        # to read each as they are the image itself (gateway/images.py `readable`).
        self._images = frozenset(p.name for p in self.table if p.value is IMAGE_ID)

    def values(self, query: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """Each parameter's value, checked on its own."""
        values: dict[str, Any] = {}
        for name, raw in query:
            param = self._by_name.get(name)
            if param is None:
                raise bad(name, "unknown parameter")
            if name in values:
                raise bad(name, "given more than once")
            try:
                values[name] = param.value.parse(raw)
            except ValueError as exc:
                raise bad(name, str(exc)) from None
        return values

    def images(self, query: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """(parameter, image id) for each other stored image the query names (a
        watermark's); 400 for one that is no image id."""
        named = []
        for name, raw in query:
            if name in self._images:
                try:
                    named.append((name, self._by_name[name].value.parse(raw)))
                except ValueError as exc:
                    raise bad(name, str(exc)) from None
        return named

    def conflict(self, values: Mapping[str, Any]) -> HTTPProblem | None:
        """What is wrong with the parameters together (OpenAPI cannot say it), if any."""
        refusal = parameters.conflict(values, self.limits)
        return None if refusal is None else bad(*refusal)

    def parse(self, query: list[tuple[str, str]], accept: str) -> Transformation | None:
        """The transformation the query asks for; None when it asks for the original."""
        values = self.values(query)
        if not values:
            return None
        problem = self.conflict(values)
        if problem is not None:
            raise problem
        asked = output.request(values, accept)
        negotiated = asked.format == ppb.OUTPUT_FORMAT_AUTO
        return Transformation(parameters.operations(values), asked, negotiated)

    def blurred(self) -> Transformation:
        """What the original service's /blurred-images/{id} returned: a blur of sigma 10
        (or the largest allowed, if smaller).

        It takes no parameters, so it cannot fail on size: an animation too large to
        blur whole within the output limits comes back as its first frame.
        """
        output = ppb.OutputOptions(format=ppb.OUTPUT_FORMAT_AUTO, frames=ppb.FRAMES_ALL_OR_FIRST)
        sigma = min(BLURRED_SIGMA, self.limits.max_blur_sigma)
        return Transformation([ppb.Operation(blur=ppb.Blur(sigma=sigma))], output, False)
