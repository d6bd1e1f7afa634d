"""The README and the pages under docs/ stay true: every variable, parameter and route the
code has is documented, the examples run, and every relative link leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from starlette.routing import Route

from common.env import Env
from gateway.app import create_app
from gateway.config import Settings
from gateway.params import Parameters, RequestLimits
from tests.support import ROOT, ServiceProcess, open_image, png_bytes, variables_read_by_the_code

HTTP = ROOT / "docs" / "http.md"
GRPC = ROOT / "docs" / "grpc.md"
OPERATORS = ROOT / "docs" / "operators.md"
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def section(page: Path, title: str) -> str:
    """From a `## ` heading to the next one."""
    text = page.read_text()
    start = text.index(f"\n{title}\n") + 1
    end = text.find("\n## ", start + len(title))
    return text[start : end if end != -1 else len(text)]


def test_every_variable_is_in_the_configuration_table() -> None:
    table = section(OPERATORS, "## Configuration")
    documented = set(re.findall(r"^\| `(IMAGESVC_[A-Z_]+)`", table, re.MULTILINE))
    assert documented == variables_read_by_the_code()


def test_every_transformation_parameter_is_documented() -> None:
    table = section(HTTP, "## Transformation parameters")
    documented: set[str] = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE):
        documented |= set(re.findall(r"`([a-z_]+)`", cell))
    assert {p.name for p in Parameters(RequestLimits(8192, 50)).table} <= documented


def methods_of(route: Route) -> set[str]:
    """What the route's endpoint answers besides HEAD (which goes to its get)."""
    return {
        m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if hasattr(route.endpoint, m.lower())
    }


def test_every_route_is_in_the_openapi_document() -> None:
    signing = {"IMAGESVC_URL_SIGNING_KEYS": "k1:" + "s" * 32}  # every route there is
    app = create_app(Settings.from_env(Env(signing)))
    routes = [route for route in app.routes if isinstance(route, Route)]  # not the files
    paths = app.state.openapi["paths"]
    assert {route.path for route in routes} == set(paths)
    for route in routes:
        documented = {method.upper() for method in paths[route.path]} - {"HEAD"}
        assert documented == methods_of(route), route.path


def test_every_route_is_in_the_api_table() -> None:
    table = section(HTTP, "## Routes")
    app = create_app(Settings.from_env())
    for route in app.routes:
        if not isinstance(route, Route):
            continue  # the page's files
        path = route.path
        for method in methods_of(route):
            documented = path.replace("{image_id}", "{id}")
            assert f"`{method} {documented}`" in table, (method, path)


def test_every_rpc_is_in_the_grpc_page() -> None:
    from imageservice.v1 import cache_service_pb2, processor_service_pb2

    for module, title in (
        (cache_service_pb2, "## The cache service (`python -m cache`)"),
        (processor_service_pb2, "## The processor (`python -m processor`)"),
    ):
        table = section(GRPC, title)
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert f"| `{method.name}` |" in table, (service.name, method.name)


def anchors(page: Path) -> set[str]:
    """The ids GitHub gives a Markdown page's headings: lower case, punctuation but - and _
    dropped, spaces as -, and -1, -2... after repeats; none inside code blocks."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.*)", line)
        if fenced or heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / unquote(path)).resolve() if path else page
        found = linked.exists() and (not anchor or anchor in anchors(linked))
        if not found:
            broken.append(target)
    assert not broken, broken


def test_the_python_example_runs(
    cache_server: ServiceProcess,
    processor_server: ServiceProcess,
    gateway_server: ServiceProcess,
    tmp_path: Path,
) -> None:
    block = re.search(r"```python\n(.*?)```", section(GRPC, "## From Python"), re.DOTALL)
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
    exec(compile(code, "docs/grpc.md", "exec"), names)
    webp = names["webp"]
    assert isinstance(webp, bytes)
    assert (open_image(webp).format, open_image(webp).size) == ("WEBP", (300, 200))
    # What it stored, HTTP serves (a private image would be 404 to anyone but "me").
    image = names["image"]
    served = httpx.get(f"{gateway_server.url}/images/{image.id}")  # type: ignore[attr-defined]
    assert served.status_code == 200 and served.content == picture.read_bytes()


def test_the_node_excerpt_is_the_example() -> None:
    """Every line of the excerpt docs/grpc.md shows is in examples/node/process.js."""
    block = re.search(r"```js\n(.*?)```", section(GRPC, "## From Node.js"), re.DOTALL)
    assert block is not None
    script = {line.strip() for line in (ROOT / "examples/node/process.js").read_text().splitlines()}
    for line in block.group(1).splitlines():
        code = line.split("  //")[0].strip()
        if code and not code.startswith("//"):
            assert code in script, line
