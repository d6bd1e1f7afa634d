"""The developer loop: the locked requirements, the commit hooks, and GitHub's CI workflow.

The hooks run for real on a copy of the working tree (with its own git repository, and
this interpreter's venv as its .venv), so nothing here touches the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.engines import POSTGRES_ADMIN_URL, REDIS_URL
from tests.support import ROOT

BIN = Path(sys.executable).parent
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
HOOKS = {"ruff-format", "ruff-check", "mypy", "buf-lint", "generated-code", "lock"}
LOCK_HOOK = "requirements/*.txt made from pyproject.toml"


def run(
    command: list[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def pins(lock: Path) -> dict[str, str]:
    """name → the line that pins it (with its environment marker, if any)."""
    found: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            requirement = line.removesuffix("\\").strip()
            found[requirement.split("==")[0].lower()] = requirement
    return found


def copy_of_the_lock(tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    (copy / "requirements").mkdir(parents=True)
    for name in ("pyproject.toml", "requirements/lock.py", "requirements/dev.txt"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copy(ROOT / "requirements" / "runtime.txt", copy / "requirements" / "runtime.txt")
    return copy


def test_the_lock_was_made_from_this_pyproject() -> None:
    result = run([sys.executable, "requirements/lock.py", "--check"], ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("old", "new", "stale"),
    [
        ('  "httpx>=0.28,<1",', '  "httpx>=0.28,<1",\n  "six>=1.16",', True),  # a new dependency
        ('"pytest>=8,<10"', '"pytest>=8.4,<10"', True),  # a dev tool's range
        ('requires-python = ">=3.11"', 'requires-python = ">=3.12"', True),
        ("  # The Python client (imagesvc/)", "  # A reworded comment", False),
        ('description = "', 'description = "Reworded. ', False),
    ],
)
def test_a_changed_dependency_list_makes_the_lock_stale(
    old: str, new: str, stale: bool, tmp_path: Path
) -> None:
    copy = copy_of_the_lock(tmp_path)
    pyproject = copy / "pyproject.toml"
    assert old in pyproject.read_text()
    pyproject.write_text(pyproject.read_text().replace(old, new, 1))
    result = run([sys.executable, "requirements/lock.py", "--check"], copy)
    assert result.returncode == (1 if stale else 0), result.stderr
    if stale:
        assert "requirements/dev.txt was not made from this pyproject.toml" in result.stderr
        assert "make lock" in result.stderr


def test_the_locks_pin_every_package_with_hashes_and_agree() -> None:
    runtime = pins(ROOT / "requirements" / "runtime.txt")
    dev = pins(ROOT / "requirements" / "dev.txt")
    for lock in ("runtime.txt", "dev.txt"):
        text = (ROOT / "requirements" / lock).read_text()
        # pip's --require-hashes refuses a lock with one package unpinned or unhashed.
        entries = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
        assert entries and all("==" in line and line.endswith("\\") for line in entries), lock
        assert text.count("--hash=sha256:") >= len(entries)
    # The runtime set is the dev set's pins, less the tools.
    assert {"grpcio", "pillow", "starlette", "uvicorn"} <= set(runtime)
    assert all(dev[name] == line for name, line in runtime.items())
    assert not {"pytest", "ruff", "mypy", "pre-commit", "uv"} & set(runtime)
    assert {"pytest", "ruff", "mypy", "pre-commit", "uv"} <= set(dev)


def test_the_dockerfile_installs_the_runtime_lock_then_the_project_alone() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lock = dockerfile.index("--require-hashes -r requirements/runtime.txt")
    assert lock < dockerfile.index("COPY pyproject.toml")  # code changes reuse the layer
    assert "pip install --no-cache-dir --no-deps ." in dockerfile[lock:]


def workflow() -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


@pytest.mark.parametrize(
    "command",
    [
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"],
        [str(BIN / "actionlint"), "-no-color"],
    ],
    ids=["schema", "actionlint"],
)
def test_the_workflow_is_valid(command: list[str], tmp_path: Path) -> None:
    result = run([*command, str(WORKFLOW)], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same check refuses a job without a runner.
    broken = tmp_path / "ci.yml"
    broken.write_text(WORKFLOW.read_text().replace("    runs-on: ubuntu-24.04\n", ""))
    assert run([*command, str(broken)], ROOT).returncode != 0


def test_the_workflow_runs_ci_run_against_engines_where_the_tests_look() -> None:
    data = workflow()
    assert set(data[True]) == {"push", "pull_request"}  # YAML 1.1 reads `on` as true
    (job,) = data["jobs"].values()
    assert any(".ci/run" in step.get("run", "") for step in job["steps"])
    cached = [s for s in job["steps"] if s.get("uses", "").startswith("actions/cache")]
    assert cached and cached[0]["with"]["path"] == "~/.cache/pip"
    postgres, redis = urlsplit(POSTGRES_ADMIN_URL), urlsplit(REDIS_URL)
    services = job["services"]
    assert services["postgres"]["ports"] == [f"{postgres.hostname}:{postgres.port}:5432"]
    assert services["postgres"]["env"] == {
        "POSTGRES_HOST_AUTH_METHOD": "trust",
        "POSTGRES_DB": postgres.path.lstrip("/"),
    }
    assert postgres.username == "postgres"  # the image's superuser
    assert services["redis"]["ports"] == [f"{redis.hostname}:{redis.port}:6379"]


def engines_with(tmp_path: Path, commands: list[str]) -> tuple[int, str]:
    """Run .ci/engines with only these commands on PATH and an apt-get that records what
    it is asked for, installs nothing and fails an install; returns (exit code, record)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in commands:
        found = shutil.which(name)
        assert found, name
        (bin_dir / name).symlink_to(found)
    record = tmp_path / "apt-get.log"
    apt_get = bin_dir / "apt-get"
    apt_get.write_text(f'#!/bin/sh\necho "$*" >> {record}\n[ "$1" = update ]\n')
    apt_get.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    result = run(["/bin/bash", str(ROOT / ".ci" / "engines")], ROOT, 60, env)
    return result.returncode, record.read_text() if record.exists() else ""


NEEDED = ["pg_isready", "psql", "redis-cli", "grep", "node", "npm", "promtool"]


def test_engines_that_answer_are_used_without_their_servers_installed(tmp_path: Path) -> None:
    # As in GitHub's CI: PostgreSQL and Redis answer from service containers, neither
    # pg_ctlcluster nor redis-server is on the machine, and nothing is installed.
    assert Path("/usr/bin/chromium").exists()  # .ci/engines installs it otherwise
    assert engines_with(tmp_path, NEEDED) == (0, "")


def test_a_missing_client_is_installed_without_its_server(tmp_path: Path) -> None:
    code, record = engines_with(tmp_path, [c for c in NEEDED if c != "redis-cli"])
    assert code != 0  # this apt-get installs nothing
    assert record.splitlines() == ["update -qq", "install -y -qq redis-tools"]


def copy_of_the_working_tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The files git would see (tracked and new, not ignored), in a repository of their own
    with everything staged, and the environment to run its hooks in."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    copy = tmp_path / "repo"
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():  # not a file deleted in the working tree
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GIT_", "PYTHONPATH", "PRE_COMMIT"))
    }
    env |= {
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit"),
        "PRE_COMMIT_COLOR": "never",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    for command in (["git", "init", "-q"], ["git", "add", "-A"]):
        assert run(command, copy, env=env).returncode == 0
    (copy / ".venv").symlink_to(BIN.parent)  # after `git add`: not part of the copy
    return copy, env


def test_the_config_runs_local_hooks_only() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]  # nothing fetched
    hooks = config["repos"][0]["hooks"]
    assert {hook["id"] for hook in hooks} == HOOKS
    assert all(hook["language"] == "system" for hook in hooks)


@pytest.mark.timeout(1200)
def test_the_hooks_pass_on_the_repository_and_refuse_a_bad_commit(tmp_path: Path) -> None:
    copy, env = copy_of_the_working_tree(tmp_path)
    pre_commit = str(BIN / "pre-commit")

    result = run([pre_commit, "run", "--all-files", "--color", "never"], copy, 1100, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Passed") == len(HOOKS), result.stdout
    assert run(["git", "diff", "--name-only"], copy, env=env).stdout == ""  # nothing rewritten

    # `make hooks` (STAMP= : the venv is this one, already installed) makes `git commit` run them.
    assert run(["make", "hooks", "STAMP="], copy, env=env).returncode == 0
    (copy / "common" / "badly.py").write_text("def f( x:int)->str:\n    return x\n")
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('  "httpx', '  "six>=1.16",\n  "httpx', 1))
    assert run(["git", "add", "-A", "common", "pyproject.toml"], copy, env=env).returncode == 0
    result = run(["git", "commit", "-q", "-m", "bad"], copy, 600, env)
    assert result.returncode != 0
    said = result.stdout + result.stderr  # git sends a hook's output to stderr
    failed = {line.split("...")[0] for line in said.splitlines() if line.endswith("Failed")}
    assert failed == {"ruff format", "mypy", LOCK_HOOK}, said
    assert run(["git", "rev-parse", "-q", "--verify", "HEAD"], copy, env=env).returncode != 0
