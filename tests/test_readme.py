"""The README stays true: every variable, parameter and route the code has is documented."""

from __future__ import annotations

import re

from gateway.app import create_app
from gateway.config import Settings
from gateway.params import PARAMS
from tests.support import ROOT
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
        documented |= set(re.findall(r"`([a-z]+)`", cell))
    assert {p.name for p in PARAMS} <= documented


def test_every_route_is_in_the_api_table() -> None:
    table = section("## HTTP API")
    app = create_app(Settings.from_env())
    for route in app.routes:
        path = getattr(route, "path", "")
        methods: set[str] = set(getattr(route, "methods", set())) - {"HEAD"}
        for method in methods:
            documented = path.replace("{image_id}", "{id}")
            assert f"`{method} {documented}`" in table, (method, path)
