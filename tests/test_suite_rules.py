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


SCENARIO = "# scenario:"


def bare_sleeps(source: str) -> list[int]:
    """The lines of source that sleep outside any loop, unless marked `# scenario:` (on the
    line or in the comment just above): a sleep in a loop waits for a condition, while a
    bare one assumes something has happened by the time it ends."""
    lines = source.splitlines()
    tree = ast.parse(source)
    in_loop: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.While | ast.For | ast.AsyncFor):
            in_loop |= set(ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = node.func.value
        if node.func.attr != "sleep" or not (
            isinstance(target, ast.Name) and target.id in ("time", "asyncio")
        ):
            continue
        if node in in_loop:
            continue
        above = node.lineno - 1
        while above >= 1 and lines[above - 1].lstrip().startswith("#"):
            above -= 1
        if not any(SCENARIO in line for line in lines[above : node.end_lineno or node.lineno]):
            found.append(node.lineno)
    return found


def test_the_rule_tells_a_fixed_sleep_from_waiting_and_from_a_scenario() -> None:
    assert bare_sleeps("import time\ntime.sleep(0.3)\n") == [2]
    assert bare_sleeps("async def f():\n    await asyncio.sleep(1)\n") == [2]
    waiting = "while not done():\n    time.sleep(0.05)\n"
    assert bare_sleeps(waiting) == []
    marked = "# scenario: the lease runs out\n# meanwhile\ntime.sleep(0.4)\n"
    assert bare_sleeps(marked) == []
    assert bare_sleeps("time.sleep(0.4)  # scenario: a slow client\n") == []
    assert bare_sleeps("# scenario: one\nx = 1\ntime.sleep(0.4)\n") == [3]


def test_no_test_sleeps_as_synchronisation() -> None:
    offenders = {
        path.name: lines
        for path in sorted(TESTS.glob("*.py"))
        if (lines := bare_sleeps(path.read_text()))
    }
    assert offenders == {}, (
        "wait for the condition itself (tests.support.wait_for), or mark a sleep that is "
        f"part of the scenario with {SCENARIO!r}"
    )
