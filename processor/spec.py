"""A transformation request in canonical form, and the variant key derived from it.

Each operation's canonical step comes from its module (processor/operations/), the
output's from processor/output.py. Defaults are made explicit and no-ops are dropped, and
the steps run in the pipeline's one order whatever order they were asked in, so every
spelling of one transformation has one key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from imageservice.v1 import processor_service_pb2 as pb

from common.errors import invalid_argument
from processor import output as outputs
from processor.operations import OPERATIONS
from processor.operations.base import RequestLimits, Step

__all__ = ["PIPELINE_VERSION", "RequestLimits", "Spec", "parse"]

# Bump when the pipeline's output for the same request changes, so old variants miss.
# 5: format=auto decides per source (an animation stays animated) and reads q-values;
# rotation turns clockwise
PIPELINE_VERSION = "5"

_BY_FIELD = {operation.field: operation for operation in OPERATIONS}
_ORDER = {operation.field: n for n, operation in enumerate(OPERATIONS)}


@dataclass(frozen=True)
class Spec:
    ops: tuple[Step, ...]
    output: outputs.Output

    def canonical(self) -> str:
        """A stable text form: same transformation, same text."""
        # vars(), not dataclasses.asdict: every field is a scalar or a tuple of them,
        # so the text is the same, and asdict's deep copies were 85% of a key's cost.
        body = {
            "ops": [[type(op).__name__.lower(), vars(op)] for op in self.ops],
            "out": vars(self.output),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def images(self) -> Mapping[str, str]:
        """The other stored images the steps draw (a watermark's), which the render
        needs: {the request field that names one: its id}."""
        named: dict[str, str] = {}
        for op in self.ops:
            images = getattr(op, "images", None)  # see base.Step
            if images is not None:
                named.update(images())
        return named

    def key(self, image_id: str) -> str:
        """The variant key: image id, canonical request and pipeline version, hashed."""
        text = f"{PIPELINE_VERSION}\n{image_id}\n{self.canonical()}"
        return hashlib.sha256(text.encode()).hexdigest()


def parse(
    operations: Sequence[pb.Operation], output: pb.OutputOptions, limits: RequestLimits
) -> Spec:
    """Validate and canonicalise; raise ServiceError(INVALID_ARGUMENT) naming the field."""
    if len(operations) > len(OPERATIONS):
        raise invalid_argument("operations", f"at most {len(OPERATIONS)} operations")
    steps: dict[str, Step] = {}
    seen: set[str] = set()
    for operation in operations:
        kind = operation.WhichOneof("kind")
        if kind is None:
            raise invalid_argument("operations", "an operation with no kind")
        if kind in seen:
            raise invalid_argument(kind, f"{kind} given more than once")
        seen.add(kind)
        step = _BY_FIELD[kind].parse(getattr(operation, kind), limits)
        if step is not None:
            steps[kind] = step
    ordered = tuple(steps[kind] for kind in sorted(steps, key=_ORDER.__getitem__))
    return Spec(ordered, outputs.parse(output, limits))
