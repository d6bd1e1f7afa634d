"""Padding, letterboxes and trimming through HTTP: the pixels, and the 400s naming the
parameter."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from tests.support import is_problem, open_image


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def posted(http: httpx.Client, image: Image.Image) -> str:
    response = http.post("/images", content=png(image), headers={"Content-Type": "image/png"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def red(gateway_server: object) -> str:
    url = f"{gateway_server.url}/images"  # type: ignore[attr-defined]
    data = png(Image.new("RGB", (200, 100), (255, 0, 0)))
    return str(httpx.post(url, content=data, headers={"Content-Type": "image/png"}).json()["id"])


def test_a_letterbox_has_bg_top_and_bottom(http: httpx.Client, red: str) -> None:
    response = http.get(f"/images/{red}?w=100&h=100&fit=pad&bg=0000ff&format=png")
    assert response.status_code == 200, response.text
    image = open_image(response.content).convert("RGB")
    assert image.size == (100, 100)
    for y, colour in ((0, (0, 0, 255)), (24, (0, 0, 255)), (25, (255, 0, 0)), (74, (255, 0, 0))):
        assert image.getpixel((50, y)) == colour, y
    assert image.getpixel((50, 75)) == image.getpixel((99, 99)) == (0, 0, 255)
    # Placed by gravity; transparent where bg's alpha is 00 and the format keeps alpha.
    south = http.get(
        f"/images/{red}?w=100&h=100&fit=pad&gravity=south&bg=00000000&format=webp&lossless"
    )
    image = open_image(south.content)
    assert image.mode == "RGBA" and image.getpixel((50, 10))[3] == 0  # type: ignore[index]
    assert image.getpixel((50, 99))[:3] == (255, 0, 0)  # type: ignore[index]
    # Flattened where it does not: white by default.
    jpeg = open_image(http.get(f"/images/{red}?w=100&h=100&fit=pad&format=jpeg").content)
    assert min(jpeg.getpixel((50, 5))) > 245  # type: ignore[arg-type]


def test_pad_gives_each_side_its_width(http: httpx.Client, red: str) -> None:
    response = http.get(f"/images/{red}?w=100&pad=10,20,30,40&bg=00ff00&format=png")
    image = open_image(response.content).convert("RGB")
    assert image.size == (40 + 100 + 20, 10 + 50 + 30)
    green, redder = (0, 255, 0), (255, 0, 0)
    assert [image.getpixel((80, y)) for y in (9, 10, 59, 60)] == [green, redder, redder, green]
    assert [image.getpixel((x, 30)) for x in (39, 40, 139, 140)] == [green, redder, redder, green]
    one = open_image(http.get(f"/images/{red}?pad=5&format=png").content)
    assert one.size == (210, 110)


def test_trim_keeps_exactly_the_inner_box(http: httpx.Client) -> None:
    framed = Image.new("RGB", (200, 200), (255, 255, 255))
    framed.paste((0, 128, 0), (60, 70, 110, 100))
    image_id = posted(http, framed)
    for query in ("trim", "trim=true", "trim=30"):
        response = http.get(f"/images/{image_id}?{query}&format=png")
        assert response.status_code == 200, (query, response.text)
        image = open_image(response.content).convert("RGB")
        assert image.size == (50, 30), query
        assert image.getcolors() == [(1500, (0, 128, 0))]
    # Trimmed first, then the rest: padded back around the box.
    both = open_image(http.get(f"/images/{image_id}?trim&pad=1&bg=ff0000&format=png").content)
    assert both.size == (52, 32) and both.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    untrimmed = open_image(http.get(f"/images/{image_id}?trim=false&format=png").content)
    assert untrimmed.size == (200, 200)


def test_an_animation_keeps_its_frames_padded_and_trimmed(http: httpx.Client) -> None:
    frames = []
    for shade in (40, 200):
        frame = Image.new("RGB", (120, 120), (255, 255, 255))
        frame.paste((shade, 0, 0), (10, 20, 70, 50))
        frames.append(frame.convert("P"))
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    response = http.post("/images", content=out.getvalue(), headers={"Content-Type": "image/gif"})
    image_id = response.json()["id"]
    made = http.get(f"/images/{image_id}?trim&pad=3&format=gif")
    image = open_image(made.content)
    assert (getattr(image, "n_frames", 1), image.size) == (2, (66, 36))
    boxed = open_image(http.get(f"/images/{image_id}?w=50&h=50&fit=pad&format=gif").content)
    assert (getattr(boxed, "n_frames", 1), boxed.size) == (2, (50, 50))


@pytest.mark.parametrize(
    ("query", "name", "detail"),
    [
        ("pad=1,2", "pad", "pad: must be top,right,bottom,left in pixels"),
        ("pad=1,2,3,4,5", "pad", "pad: must be"),
        ("pad=8193", "pad", "pad: must be"),
        ("pad=-1", "pad", "pad: must be"),
        ("trim=300", "trim", "trim: a flag (alone, true or false), or a colour distance"),
        ("trim=0", "trim", "trim: "),
        ("trim=yes", "trim", "trim: "),
        ("w=100&fit=pad", "fit", "fit: pad needs both w and h"),
        ("w=9&h=9&fit=pad&gravity=smart", "gravity", "gravity: smart applies to fit=cover"),
        ("w=9&h=9&fit=contain&gravity=north", "gravity", "gravity: applies to fit=cover or"),
        ("w=9&h=9&bg=ff0000&format=png", "bg", "bg: with this format alpha is kept"),
    ],
)
def test_invalid_values_are_400_naming_the_parameter(
    http: httpx.Client, red: str, query: str, name: str, detail: str
) -> None:
    body = is_problem(http.get(f"/images/{red}?{query}"), 400)
    assert body["parameter"] == name
    assert str(body["detail"]).startswith(detail), body["detail"]


def test_openapi_states_the_shapes(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    schemas = {
        p["name"]: p["schema"] for p in doc["paths"]["/images/{image_id}"]["get"]["parameters"]
    }
    assert "pad" in schemas["fit"]["enum"]
    assert "8192" in schemas["pad"]["pattern"] and "8193" not in schemas["pad"]["pattern"]
    assert schemas["trim"]["pattern"].startswith("^(|true|false|")
