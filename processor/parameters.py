"""The query parameters of a transformation, gathered from the declarations of the
operations (processor/operations/) and of the output (processor/output.py).

What the gateway parses and documents comes from here; it holds no Pillow.
"""

from __future__ import annotations

from collections import defaultdict

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
