"""The fuzz target for the query parser: a query string as the gateway receives it.

Whatever the query, the gateway refuses it with a 400 naming one of its parameters, or
the processor takes what the gateway made of it and gives it a variant key; anything
else is a 500, or a 400 from the processor for a query the gateway let through.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from gateway.params import Parameters
from gateway.problems import HTTPProblem
from processor import spec

LIMITS = spec.RequestLimits(max_output_dimension=8192, max_blur_sigma=50.0)  # the defaults
PARAMETERS = Parameters(LIMITS)
ACCEPT = "image/avif,image/webp,*/*"


def check(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    # What Starlette's request.query_params holds: blank values kept, + is a space.
    query = parse_qsl(text, keep_blank_values=True)
    try:
        wanted = PARAMETERS.parse(query, ACCEPT)
    except HTTPProblem as problem:
        if problem.status != 400 or problem.extensions.get("parameter") not in dict(query):
            raise
        return
    if wanted is not None:
        spec.parse(wanted.operations, wanted.output, LIMITS).key("k3W0UWh5Q3q2-7wF0bYb0x")


def words() -> list[str]:
    """Every parameter's name and every word a choice takes, for libFuzzer's dictionary:
    found byte by byte, `gravity=northeast` would take it hours."""
    found = {param.name for param in PARAMETERS.table}
    for param in PARAMETERS.table:
        options = getattr(param.value, "options", None) or getattr(param.value, "names", {})
        found.update(options)
    return sorted(found | {"fp:", "true", "false", "e-", "&", "=", "%23"})


def seeds() -> dict[str, bytes]:
    """A query per kind of value: numbers, flags, colours, gravities, shapes."""
    examples = [
        "w=300&h=200&fit=cover&gravity=smart&format=webp&q=75",
        "w=300&dpr=2.5&fit=pad&h=100&bg=%2300000080&gravity=north&format=png",
        "h=40&fit=cover&gravity=fp:0.25,0.600001&enlarge",
        "crop=0,0,100,100&trim=12&pad=1,2,3,4&rotate=-45.5&bg=ff0000",
        "flip&flop=true&grayscale=false&brightness=1.5&contrast=.5&saturation=2e0",
        "blur=2.25&sharpen=1E1&pixelate=0008&format=jpg&progressive&metadata=keep",
        "wm=k3W0UWh5Q3q2-7wF0bYb0x&wm_gravity=northwest&wm_x=10&wm_y=0&wm_opacity=0.5"
        "&wm_scale=0.25",
        "format=gif&frames=first&lossless=false",
        "format=webp&lossless&frames=all",
    ]
    return {f"query-{n}": text.encode() for n, text in enumerate(examples)}
