"""The README stays true: every variable, parameter and route the code has is documented."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from gateway.app import create_app
from gateway.config import Settings
from gateway.params import Limits, Parameters
from tests.support import ROOT, ServiceProcess, open_image, png_bytes
from tests.test_compose import variables_read_by_the_code

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    return README[start : end if end != -1 else len(README)]


def test_every_variable_is_in_the_configuration_table() -> None:
    table = section("## Configuration")
    documented = set(re.findall(r"^\| `(IMAGESVC_[A-Z_]+)`", table, re.MULTILINE))
    assert documented == variables_read_by_the_code()


def test_every_transformation_parameter_is_documented() -> None:
    table = section("### Transformation parameters")
    documented: set[str] = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE):
        documented |= set(re.findall(r"`([a-z_]+)`", cell))
    assert {p.name for p in Parameters(Limits(8192, 50)).table} <= documented


def test_every_route_is_in_the_api_table() -> None:
    table = section("## HTTP API")
    app = create_app(Settings.from_env())
    for route in app.routes:
        path = getattr(route, "path", "")
        methods: set[str] = set(getattr(route, "methods", set())) - {"HEAD"}
        for method in methods:
            documented = path.replace("{image_id}", "{id}")
            assert f"`{method} {documented}`" in table, (method, path)


def test_the_python_example_runs(
    cache_server: ServiceProcess,
    processor_server: ServiceProcess,
    gateway_server: ServiceProcess,
    tmp_path: Path,
) -> None:
    block = re.search(r"```python\n(.*?)```", section("## Calling the services"), re.DOTALL)
    assert block is not None
    picture = tmp_path / "cat.png"
    picture.write_bytes(png_bytes(640, 480, seed=77))
    code = (
        block.group(1)
        .replace("127.0.0.1:50051", cache_server.address)
        .replace("127.0.0.1:50052", processor_server.address)
        .replace('open("cat.png"', f"open({str(picture)!r}")
    )
    names: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), names)
    webp = names["webp"]
    assert isinstance(webp, bytes)
    assert (open_image(webp).format, open_image(webp).size) == ("WEBP", (300, 200))
    # What it stored, HTTP serves (a private image would be 404 to anyone but "me").
    image = names["image"]
    served = httpx.get(f"{gateway_server.url}/images/{image.id}")  # type: ignore[attr-defined]
    assert served.status_code == 200 and served.content == picture.read_bytes()
