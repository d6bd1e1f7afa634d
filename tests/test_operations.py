"""The operations' declarations: everything the gateway and the README say of a
parameter comes from them, and nothing is left undeclared."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from imageservice.v1 import processor_service_pb2 as ppb

from common.env import Env
from gateway.problems import QUERY_NAMES
from processor import parameters
from processor.config import Settings
from processor.operations import OPERATIONS
from processor.operations.base import RequestLimits

ROOT = Path(__file__).resolve().parent.parent
# Fields only a gRPC caller can get wrong: the gateway's parser never sends such values.
GRPC_ONLY = {
    "operations",
    "rotate.background",
    "resize.background",
    "pad.background",
    "resize.focal_x",
    "resize.focal_y",
}


def test_every_operation_in_the_contract_is_declared_once() -> None:
    oneof = ppb.Operation.DESCRIPTOR.oneofs_by_name["kind"]
    assert sorted(f.name for f in oneof.fields) == sorted(op.field for op in OPERATIONS)


def test_parameter_names_are_unique() -> None:
    names = [p.name for p in parameters.table(RequestLimits(100, 1.0))]
    assert len(names) == len(set(names))


def test_the_docs_table_is_made_from_the_declarations() -> None:
    settings = Settings.from_env(Env({}))
    limits = RequestLimits(settings.max_output_dimension, settings.max_blur_sigma)
    page = (ROOT / "docs" / "http.md").read_text()
    assert parameters.docs_section(limits) in page, "run `make docs`"


def _blamed_fields() -> set[str]:
    """Every field name the operations and the output pass to invalid_argument."""
    blamed: set[str] = set()
    files = [*(ROOT / "processor" / "operations").glob("*.py"), ROOT / "processor" / "output.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") in ("invalid_argument", "finite", "color")
                and node.args
            ):
                # invalid_argument(field, ...), finite(value, field), color(msg, field, ...)
                argument = node.args[0] if node.func.id == "invalid_argument" else node.args[1]  # type: ignore[attr-defined]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    blamed.add(argument.value)
    return blamed


def test_every_field_the_processor_blames_names_a_query_parameter() -> None:
    blamed = _blamed_fields()
    assert "blur.sigma" in blamed and "adjust" in blamed  # the scan finds them
    unnamed = {field for field in blamed if field not in QUERY_NAMES} - GRPC_ONLY
    assert not unnamed, f"declare a Param with field= for each of {sorted(unnamed)}"


def test_the_gateway_never_loads_pillow_nor_opencv() -> None:
    # Pillow is the processor's; OpenCV (and the NumPy it needs) the face detector's,
    # imported inside the face crop's step.
    heavy = ("PIL", "cv2", "numpy")
    code = (
        "import sys, gateway.app; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
