"""The query parameters of a transformation, gathered from the declarations of the
operations (processor/operations/) and of the output (processor/output.py).

What the gateway parses and documents comes from here; it holds no Pillow.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from imageservice.v1 import processor_service_pb2 as pb

from processor import output
from processor.operations import OPERATIONS
from processor.operations.base import Param, Refusal, RequestLimits, Values


def table(limits: RequestLimits) -> tuple[Param, ...]:
    """Every parameter, operations first in pipeline order, then the output's."""
    declared = [param for operation in OPERATIONS for param in operation.params(limits)]
    return (*declared, *output.params(limits))


def conflict(values: Values, limits: RequestLimits) -> Refusal | None:
    """The first thing wrong with the values together, operation by operation."""
    for operation in OPERATIONS:
        refusal = operation.conflict(values, limits)
        if refusal is not None:
            return refusal
    return output.conflict(values, limits)


def operations(values: Values) -> list[pb.Operation]:
    """The request's operations, from the checked values of every parameter."""
    asked = []
    for operation in OPERATIONS:
        message = operation.request(values)
        if message is not None:
            asked.append(pb.Operation(**{operation.field: message}))
    return asked


def query_names() -> dict[str, str]:
    """The query parameter(s) each request field the processor may blame stands for."""
    names: dict[str, list[str]] = defaultdict(list)
    # Names and fields do not depend on the limits.
    for param in table(RequestLimits(max_output_dimension=1, max_blur_sigma=1.0)):
        if param.field:
            names[param.field].append(param.name)
    return {
        field: ", ".join(given[:-1]) + " or " + given[-1] if len(given) > 1 else given[0]
        for field, given in names.items()
    }


# docs/http.md holds the table between these markers; `make docs` rewrites it.
TABLE_START = "<!-- parameters: made by `make docs` from the declarations -->"
TABLE_END = "<!-- parameters end -->"


def markdown(limits: RequestLimits) -> str:
    """The table of parameters docs/http.md shows."""
    lines = ["| parameter | values | meaning |", "|---|---|---|"]
    for param in table(limits):
        values = param.value.text()
        if param.bound:
            values += f" (`{param.bound}`)"
        lines.append(f"| `{param.name}` | {values} | {param.description} |")
    return "\n".join(lines)


def docs_section(limits: RequestLimits) -> str:
    """The table between its markers, as docs/http.md holds it."""
    return f"{TABLE_START}\n{markdown(limits)}\n{TABLE_END}"


def main(argv: list[str]) -> int:
    """Rewrite the table in the Markdown file named (docs/http.md) from the declarations."""
    from common.env import Env
    from processor.config import Settings

    settings = Settings.from_env(Env({}))  # the defaults, not this shell's settings
    limits = RequestLimits(settings.max_output_dimension, settings.max_blur_sigma)
    path = Path(argv[1])
    text = path.read_text()
    start, end = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END)
    path.write_text(text[:start] + docs_section(limits) + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
