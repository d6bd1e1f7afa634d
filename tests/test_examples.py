"""The examples in examples/ run against the real services, as docs/grpc.md shows them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx

from tests.support import ROOT, ServiceProcess, open_image, png_bytes

NODE_EXAMPLE = ROOT / "examples" / "node"


def node_modules() -> None:
    """`npm ci` where `make test` has not run it (from the npm registry, once)."""
    lock = NODE_EXAMPLE / "package-lock.json"
    installed = NODE_EXAMPLE / "node_modules" / ".package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    assert npm, "npm is missing: `make engines` installs Debian's nodejs and npm"
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_EXAMPLE,
        check=True,
        timeout=300,
    )


def run_node_example(
    cache: ServiceProcess, processor: ServiceProcess, *args: Path
) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "node is missing: `make engines` installs Debian's nodejs and npm"
    node_modules()
    addresses = ["--cache", cache.address, "--processor", processor.address]
    return subprocess.run(
        [node, str(NODE_EXAMPLE / "process.js"), *map(str, args), *addresses],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_node_example_stores_and_transforms(
    cache_server: ServiceProcess,
    processor_server: ServiceProcess,
    gateway_server: ServiceProcess,
    tmp_path: Path,
) -> None:
    picture = tmp_path / "cat.png"
    picture.write_bytes(png_bytes(640, 480, seed=78))
    output = tmp_path / "thumb.webp"
    ran = run_node_example(cache_server, processor_server, picture, output)
    assert ran.returncode == 0, ran.stderr
    stored = re.match(r"stored ([A-Za-z0-9_-]{22}) \(PNG, 640x480\)\n", ran.stdout)
    assert stored, ran.stdout
    result = open_image(output.read_bytes())
    assert (result.format, result.size) == ("WEBP", (300, 200))
    assert f"wrote {output}: 300x200 image/webp, {output.stat().st_size} bytes" in ran.stdout
    # What it stored (public), HTTP serves byte for byte.
    served = httpx.get(f"{gateway_server.url}/images/{stored.group(1)}")
    assert served.status_code == 200 and served.content == picture.read_bytes()


def test_the_node_example_says_what_went_wrong(
    cache_server: ServiceProcess, processor_server: ServiceProcess, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    ran = run_node_example(cache_server, processor_server, junk, tmp_path / "out.webp")
    assert ran.returncode == 1
    assert ran.stderr.startswith("error: INVALID_ARGUMENT: "), ran.stderr
    assert not (tmp_path / "out.webp").exists()
