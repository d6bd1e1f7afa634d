"""Rules the suite keeps about itself, read from its own source: helpers shared between
test modules live in tests/support.py (or conftest.py), never in another test module."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

TESTS = ROOT / "tests"


def modules() -> list[Path]:
    return sorted(TESTS.glob("test_*.py"))


def imported_test_modules(source: str) -> list[str]:
    """The test modules (test_*) that source imports, in any spelling."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""  # empty for `from . import x`
            names = [module] + [".".join(filter(None, (module, a.name))) for a in node.names]
        else:
            continue
        found += [name for name in names if name.split(".")[-1].startswith("test_")]
    return found


def test_the_rule_sees_every_spelling_of_an_import_of_a_test_module() -> None:
    assert imported_test_modules("from tests.test_variants import get_variant") == [
        "tests.test_variants"
    ]
    assert imported_test_modules("import tests.test_launcher") == ["tests.test_launcher"]
    assert imported_test_modules("from tests import test_pipeline") == ["tests.test_pipeline"]
    assert imported_test_modules("from . import test_faces") == ["test_faces"]
    assert imported_test_modules("from tests.support import encode") == []


def test_no_test_module_imports_another() -> None:
    offenders = {
        path.name: imported
        for path in modules()
        if (imported := imported_test_modules(path.read_text()))
    }
    assert offenders == {}, "move what they share into tests/support.py"
