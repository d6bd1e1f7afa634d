"""The Makefile: `make run` installs only what running needs, and says so first."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT


def planned(target: str, venv: Path) -> list[str]:
    """The commands `make target` would run for a checkout without a venv (make -n)."""
    result = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


def position(commands: list[str], text: str) -> int:
    found = [i for i, command in enumerate(commands) if text in command]
    assert found, (text, commands)
    return found[0]


RUNTIME_LOCK = "pip install --quiet --require-hashes -r requirements/runtime.txt"
PROJECT = "pip install --quiet --no-deps -e ."
DEV_LOCK = "pip install --quiet --require-hashes -r requirements/dev.txt"


def test_make_run_installs_the_runtime_dependencies_only_and_says_so(tmp_path: Path) -> None:
    commands = planned("run", tmp_path / "venv")
    installs = [c for c in commands if "pip install" in c and "--upgrade pip" not in c]
    # The locked runtime set, then the project itself and nothing it would pull in.
    assert [c.split("/bin/", 1)[1] for c in installs] == [RUNTIME_LOCK, PROJECT], installs
    said = position(commands, "installing the runtime dependencies")
    assert said < commands.index(installs[0])  # before the slow step, not after


@pytest.mark.parametrize("target", ["test", "lint", "protos", "bench", "install", "lock", "hooks"])
def test_the_developer_targets_add_the_dev_tools(target: str, tmp_path: Path) -> None:
    commands = planned(target, tmp_path / "venv")
    runtime = position(commands, RUNTIME_LOCK)
    project = position(commands, PROJECT)
    said = position(commands, "installing the development tools")
    dev = position(commands, DEV_LOCK)
    assert runtime < project < said < dev


def test_make_fuzz_adds_atheris_and_the_suite_does_not(tmp_path: Path) -> None:
    """atheris is the `fuzz` extra: `make fuzz` installs it, `make test` never needs it."""
    fuzzing = planned("fuzz", tmp_path / "venv")
    dev = position(fuzzing, DEV_LOCK)
    extra = position(fuzzing, "pip install --quiet -e '.[dev,fuzz]'")
    runs = position(fuzzing, "-m fuzz uploads -max_total_time=60")
    assert dev < extra < runs
    assert position(fuzzing, "-m fuzz queries -max_total_time=60") > runs
    testing = planned("test", tmp_path / "venv")
    assert not any(",fuzz]" in command or "-m fuzz" in command for command in testing)
