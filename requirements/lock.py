"""The locked requirements, which `make install`, the Dockerfile and CI install from.

`python requirements/lock.py` (what `make lock` runs) resolves them from pyproject.toml
with uv: dev.txt first (the runtime dependencies and the dev tools together), then
runtime.txt within dev.txt's pins, so the two never disagree and the runtime set always
resolves. uv keeps every pin that still fits, so adding a dependency moves nothing else;
delete a pin's lines first to move it. Both files are universal (every platform, Python
3.11 and later) and carry every file's hash.

Each file starts with a digest of pyproject.toml's dependency lists; `--check` (offline)
fails when pyproject.toml declares something the lock was not made from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
DEV = ROOT / "requirements" / "dev.txt"
RUNTIME = ROOT / "requirements" / "runtime.txt"
DIGEST = "# made from pyproject.toml's dependency lists with sha256 "
# The oldest Python the project supports: the lock holds for it and every later one.
PYTHON = "3.11"


def declared_digest() -> str:
    """A digest of what pyproject.toml declares, parsed, so comments and layout do not count."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = {
        key: project.get(key)
        for key in ("requires-python", "dependencies", "optional-dependencies")
    }
    return hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock: Path) -> str | None:
    if not lock.exists():
        return None
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST):
            return line.removeprefix(DIGEST).strip()
    return None


def stale() -> list[Path]:
    digest = declared_digest()
    return [lock for lock in (DEV, RUNTIME) if recorded_digest(lock) != digest]


def compile_lock(lock: Path, *extra: str) -> None:
    command = [
        *(sys.executable, "-m", "uv", "pip", "compile", "pyproject.toml"),
        *("--universal", "--python-version", PYTHON, "--generate-hashes"),
        *("--custom-compile-command", "make lock", "--quiet", "--output-file", str(lock)),
        *extra,
    ]
    subprocess.run(command, cwd=ROOT, check=True)
    body = [line for line in lock.read_text().splitlines() if not line.startswith(DIGEST)]
    lock.write_text("\n".join([DIGEST + declared_digest(), *body]) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether the lock is fresh")
    if parser.parse_args().check:
        for lock in stale():
            print(
                f"{lock.relative_to(ROOT)} was not made from this pyproject.toml: run `make lock`",
                file=sys.stderr,
            )
        return 1 if stale() else 0
    compile_lock(DEV, "--extra", "dev")
    compile_lock(RUNTIME, "--constraint", str(DEV.relative_to(ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
