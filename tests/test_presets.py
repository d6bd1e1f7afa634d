"""Presets: a TOML file of named transformations, checked at start, asked for by name."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from common.env import ConfigError, Env
from gateway.config import Settings
from gateway.params import Parameters, RequestLimits
from gateway.presets import load_presets
from tests.support import ROOT, ServiceProcess, is_problem, open_image, png_bytes

PARAMETERS = Parameters(RequestLimits(max_output_dimension=8192, max_blur_sigma=50))
PRESETS = """\
# What a site would name: one table per preset, values as the query parameters take them.
[thumb]
w = 30
h = 20
fit = "cover"
gravity = "north"
format = "png"

[soft-grey]
grayscale = true
blur = 1.5
dpr = 2
w = 12
"""


def presets_file(tmp_path: Path, text: str = PRESETS) -> Path:
    path = tmp_path / "presets.toml"
    path.write_text(text)
    return path


def test_a_valid_file_lists_each_preset_as_written(tmp_path: Path) -> None:
    presets = load_presets(str(presets_file(tmp_path)), PARAMETERS)
    assert presets.names == ["thumb", "soft-grey"]
    assert presets.listing["soft-grey"] == {"grayscale": True, "blur": 1.5, "dpr": 2, "w": 12}
    assert presets.queries["soft-grey"] == (
        ("grayscale", "true"),
        ("blur", "1.5"),
        ("dpr", "2"),
        ("w", "12"),
    )
    assert not presets.only


def test_the_querys_own_parameters_win(tmp_path: Path) -> None:
    presets = load_presets(str(presets_file(tmp_path)), PARAMETERS)
    expanded = dict(presets.expand([("preset", "thumb"), ("w", "10"), ("q", "50")]))
    assert expanded == {
        "w": "10",
        "q": "50",
        "h": "20",
        "fit": "cover",
        "gravity": "north",
        "format": "png",
    }
    assert presets.expand([("w", "10")]) == [("w", "10")]  # no preset: untouched


@pytest.mark.parametrize(
    ("text", "preset", "words"),
    [
        ('[thumb]\nw = 30\nsize = "big"\n', "thumb", "size: unknown parameter"),
        ("[thumb]\nw = 0\n", "thumb", "w: must be between 1 and 8192"),
        ('[thumb]\nw = 30\nfit = "squash"\n', "thumb", "fit: must be one of contain"),
        ('[thumb]\nfit = "cover"\n', "thumb", "fit: needs w or h"),
        ('[a]\nw = 3\n[thumb]\nw = 3\ngravity = "north"\n', "thumb", "gravity: applies to fit"),
        ('[thumb]\nq = 50\nformat = "png"\n', "thumb", "q: PNG and GIF are lossless"),
        ("[thumb]\nw = 5000\ndpr = 2\n", "thumb", "w: times dpr, must be at most 8192"),
        ('[thumb]\nw = "30"\n', "thumb", "w: must be an integer in TOML, not the string '30'"),
        ("[thumb]\nw = 30.0\n", "thumb", "w: must be an integer in TOML, not the float 30.0"),
        ("[thumb]\nw = true\n", "thumb", "w: must be an integer in TOML, not the boolean"),
        ("[thumb]\ngrayscale = 1\n", "thumb", "grayscale: must be true or false in TOML"),
        ("[thumb]\nblur = inf\n", "thumb", "blur: must be a number"),
        ("[thumb]\nw = [1, 2]\n", "thumb", "w: must be an integer in TOML, not the array"),
        ("[thumb]\npreset = 'other'\n", "thumb", "preset: unknown parameter"),
        ("[Thumb]\nw = 3\n", "Thumb", "a preset name is 1-64 of a-z"),
        ('["thumb small"]\nw = 3\n', "thumb small", "a preset name is"),
        ("[-thumb]\nw = 3\n", "-thumb", "a preset name is"),
        (f"[{'t' * 65}]\nw = 3\n", "t" * 65, "a preset name is"),
        ("thumb = 3\n", "thumb", "must be a table"),
        ("[thumb]\n", "thumb", "has no parameters"),
    ],
)
def test_each_bad_preset_is_named_with_what_is_wrong(
    tmp_path: Path, text: str, preset: str, words: str
) -> None:
    path = presets_file(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_presets(str(path), PARAMETERS)
    message = str(refused.value)
    assert message.startswith(f"IMAGESVC_PRESETS={path}: preset {preset!r}: "), message
    assert words in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (None, "cannot read it"),
        ("[thumb\nw = 3\n", "not a TOML file"),
        ("[thumb]\nw = 3\n[thumb]\nh = 3\n", "not a TOML file"),  # a name given twice
        ("# nothing yet\n", "names no preset"),
    ],
)
def test_a_bad_file_is_named(tmp_path: Path, text: str | None, words: str) -> None:
    path = tmp_path / "presets.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=f"^IMAGESVC_PRESETS={path}: {words}"):
        load_presets(str(path), PARAMETERS)


def test_presets_are_checked_under_the_configured_limits(tmp_path: Path) -> None:
    path = presets_file(tmp_path)
    env = {"IMAGESVC_PRESETS": str(path), "IMAGESVC_MAX_OUTPUT_DIMENSION": "20"}
    with pytest.raises(ConfigError, match="preset 'thumb': w: must be between 1 and 20"):
        Settings.from_env(Env(env))
    env["IMAGESVC_MAX_OUTPUT_DIMENSION"] = "30"
    assert Settings.from_env(Env(env)).presets.names == ["thumb", "soft-grey"]


def test_presets_only_needs_presets() -> None:
    with pytest.raises(ConfigError, match="IMAGESVC_PRESETS_ONLY=true needs presets"):
        Settings.from_env(Env({"IMAGESVC_PRESETS_ONLY": "true"}))


def test_a_bad_preset_stops_the_gateway_with_a_message_naming_it(tmp_path: Path) -> None:
    path = presets_file(tmp_path, PRESETS.replace('fit = "cover"', 'fit = "squash"'))
    env = {
        **os.environ,
        "IMAGESVC_GATEWAY_PORT": "0",
        "IMAGESVC_PRESETS": str(path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 1
    assert b"listening" not in result.stderr
    stderr = result.stderr.decode()
    assert f"bad configuration: IMAGESVC_PRESETS={path}: preset 'thumb': fit: " in stderr


@pytest.fixture(scope="module")
def presets_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return presets_file(tmp_path_factory.mktemp("presets"))


@pytest.fixture(scope="module")
def gateway(stack: Callable[..., ServiceProcess], presets_path: Path) -> ServiceProcess:
    return stack({"IMAGESVC_PRESETS": str(presets_path)})


@pytest.fixture
def client(gateway: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def image_id(gateway: ServiceProcess) -> str:
    png = png_bytes(60, 40, seed=131)
    url = f"{gateway.url}/images"
    return str(httpx.post(url, content=png, headers={"Content-Type": "image/png"}).json()["id"])


def test_a_preset_is_the_variant_its_parameters_spell_out(
    client: httpx.Client, image_id: str
) -> None:
    by_name = client.get(f"/images/{image_id}?preset=thumb")
    assert by_name.status_code == 200, by_name.text
    assert open_image(by_name.content).size == (30, 20)
    assert by_name.headers["x-cache"] == "MISS"  # made now, for this test's own image
    # In another order, and another spelling than the file's: the same variant, which
    # the processor finds made.
    spelled = client.get(f"/images/{image_id}?format=png&gravity=north&fit=cover&h=20&w=30")
    assert spelled.status_code == 200
    assert spelled.headers["x-cache"] == "HIT"
    assert spelled.headers["etag"] == by_name.headers["etag"]
    assert spelled.content == by_name.content
    head = client.head(f"/images/{image_id}?preset=thumb")
    assert head.status_code == 200 and head.headers["etag"] == by_name.headers["etag"]
    assert head.headers["content-length"] == str(len(by_name.content))


def test_parameters_beside_a_preset_win(client: httpx.Client, image_id: str) -> None:
    answer = client.get(f"/images/{image_id}?preset=thumb&w=10")
    assert answer.status_code == 200, answer.text
    assert open_image(answer.content).size == (10, 20)
    assert open_image(answer.content).format == "PNG"  # the rest is the preset's
    spelled = client.get(f"/images/{image_id}?w=10&h=20&fit=cover&gravity=north&format=png")
    assert spelled.headers["etag"] == answer.headers["etag"]
    grey = open_image(client.get(f"/images/{image_id}?preset=soft-grey").content)
    assert (grey.mode, grey.size) == ("L", (24, 16))  # w=12 at dpr 2
    coloured = client.get(f"/images/{image_id}?preset=soft-grey&grayscale=false")
    assert open_image(coloured.content).mode == "RGB"


def test_a_refusal_blaming_the_presets_parameter_says_so(
    client: httpx.Client, image_id: str
) -> None:
    body = is_problem(client.get(f"/images/{image_id}?preset=thumb&fit=contain"), 400)
    assert body["parameter"] == "gravity" and body["preset"] == "thumb"
    assert body["detail"] == "gravity: applies to fit=cover or fit=pad only (from preset thumb)"
    # The caller's own parameter is blamed as it would be without the preset.
    body = is_problem(client.get(f"/images/{image_id}?preset=thumb&q=101"), 400)
    assert body["parameter"] == "q" and "preset" not in body


def test_an_unknown_preset_is_named(client: httpx.Client, image_id: str) -> None:
    body = is_problem(client.get(f"/images/{image_id}?preset=huge"), 400)
    assert body["parameter"] == "preset"
    assert body["detail"] == "preset: no preset named 'huge'"
    body = is_problem(client.get(f"/images/{image_id}?preset=thumb&preset=soft-grey"), 400)
    assert body["detail"] == "preset: given more than once"
    # The blur endpoint keeps the original service's shape: no parameters at all.
    body = is_problem(client.get(f"/blurred-images/{image_id}?preset=thumb"), 400)
    assert body["parameter"] == "preset"


def test_presets_are_listed_and_in_openapi(client: httpx.Client) -> None:
    listing = client.get("/presets")
    assert listing.status_code == 200
    assert listing.json() == {
        "thumb": {"w": 30, "h": 20, "fit": "cover", "gravity": "north", "format": "png"},
        "soft-grey": {"grayscale": True, "blur": 1.5, "dpr": 2, "w": 12},
    }
    doc = client.get("/openapi.json").json()
    assert "/presets" in doc["paths"]
    for method in ("get", "head"):
        params = {p["name"]: p for p in doc["paths"]["/images/{image_id}"][method]["parameters"]}
        assert params["preset"]["schema"] == {"type": "string", "enum": ["thumb", "soft-grey"]}
        assert "w" in params


def test_without_presets_there_is_no_preset_parameter(http: httpx.Client) -> None:
    assert http.get("/presets").json() == {}
    image_id = http.post(
        "/images", content=png_bytes(8, 8, seed=132), headers={"Content-Type": "image/png"}
    ).json()["id"]
    body = is_problem(http.get(f"/images/{image_id}?preset=thumb"), 400)
    assert body["detail"] == "preset: unknown parameter"
    doc = http.get("/openapi.json").json()
    names = {p["name"] for p in doc["paths"]["/images/{image_id}"]["get"]["parameters"]}
    assert "preset" not in names


def test_presets_only_refuses_every_other_parameter(
    stack: Callable[..., ServiceProcess], presets_path: Path, image_id: str
) -> None:
    only = stack({"IMAGESVC_PRESETS": str(presets_path), "IMAGESVC_PRESETS_ONLY": "true"})
    with httpx.Client(base_url=only.url, timeout=30) as client:
        answer = client.get(f"/images/{image_id}?preset=thumb")
        assert answer.status_code == 200
        assert open_image(answer.content).size == (30, 20)
        assert client.get(f"/images/{image_id}").content == png_bytes(60, 40, seed=131)
        for query, name in [("w=10", "w"), ("preset=thumb&w=10", "w"), ("grayscale", "grayscale")]:
            body = is_problem(client.get(f"/images/{image_id}?{query}"), 400)
            assert body["parameter"] == name, query
            assert body["detail"] == f"{name}: this service takes presets only (see GET /presets)"
        doc = client.get("/openapi.json").json()
        params = doc["paths"]["/images/{image_id}"]["get"]["parameters"]
        assert [p["name"] for p in params] == ["image_id", "preset"]


def test_the_docs_example_loads(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "http.md").read_text()
    section = page[page.index("## Presets") :]
    example = section[section.index("```toml\n") + 8 : section.index("```\n", 8)]
    presets = load_presets(str(presets_file(tmp_path, example)), PARAMETERS)
    assert presets.names == ["thumb", "hero"]
    assert presets.listing["thumb"] == {"w": 300, "h": 200, "fit": "cover"}
