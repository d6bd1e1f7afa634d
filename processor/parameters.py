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
from processor.operations.base import Limits, Param, Refusal, Values


def table(limits: Limits) -> tuple[Param, ...]:
    """Every parameter, operations first in pipeline order, then the output's."""
    declared = [param for operation in OPERATIONS for param in operation.params(limits)]
    return (*declared, *output.params(limits))


def conflict(values: Values, limits: Limits) -> Refusal | None:
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
    for param in table(Limits(max_output_dimension=1, max_blur_sigma=1.0)):
        if param.field:
            names[param.field].append(param.name)
    return {
        field: ", ".join(given[:-1]) + " or " + given[-1] if len(given) > 1 else given[0]
        for field, given in names.items()
    }


README_START = "<!-- parameters: made by `make readme` from the declarations -->"
README_END = "<!-- parameters end -->"


def markdown(limits: Limits) -> str:
    """The README's table of parameters."""
    lines = ["| parameter | values | meaning |", "|---|---|---|"]
    for param in table(limits):
        values = param.value.text()
        if param.bound:
            values += f" (`{param.bound}`)"
        lines.append(f"| `{param.name}` | {values} | {param.description} |")
    return "\n".join(lines)


def readme_section(limits: Limits) -> str:
    """The table between its markers, as the README holds it."""
    return f"{README_START}\n{markdown(limits)}\n{README_END}"


def main(argv: list[str]) -> int:
    """Rewrite the table in the Markdown file named (the README) from the declarations."""
    from common.env import Env
    from processor.config import Settings

    settings = Settings.from_env(Env({}))  # the defaults, not this shell's settings
    limits = Limits(settings.max_output_dimension, settings.max_blur_sigma)
    path = Path(argv[1])
    text = path.read_text()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    path.write_text(text[:start] + readme_section(limits) + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
