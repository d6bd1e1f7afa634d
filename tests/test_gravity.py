"""Cover-crop gravities that place the window by content or by a point: gravity=face
(processor.faces, else as smart) and gravity=fp:X,Y (processor.windows), on pixels
in-process, in canonical form, and through HTTP."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from typing import Any

import httpx
import pytest
from imageservice.v1 import processor_service_pb2 as ppb
from PIL import Image, ImageDraw

from common.errors import ServiceError
from gateway.params import Parameters, RequestLimits
from gateway.problems import HTTPProblem
from processor import faces, parameters, pipeline, smartcrop, spec, windows
from processor.operations.resize import FOCAL_POINT, Resize
from tests.support import (
    ASTRONAUT,
    ROOT,
    STILL_LIFE,
    ServiceProcess,
    corner,
    encode,
    inside,
    is_problem,
    marked,
)

Op = ppb.Operation
LIMITS = pipeline.RenderLimits(50_000_000, 1000, 8192, max_total_pixels=500_000_000)
SPEC_LIMITS = spec.RequestLimits(max_output_dimension=8192, max_blur_sigma=50)
PARAMETERS = Parameters(RequestLimits(max_output_dimension=8192, max_blur_sigma=50))


def cover(width: int, height: int, gravity: int, **focal: float) -> ppb.Operation:
    return Op(
        resize=ppb.Resize(
            width=width,
            height=height,
            fit=ppb.FIT_COVER,
            gravity=gravity,  # type: ignore[arg-type]
            **focal,  # type: ignore[arg-type]
        )
    )


def wanted(*ops: ppb.Operation, **output: Any) -> spec.Spec:
    output.setdefault("format", ppb.OUTPUT_FORMAT_PNG)
    return spec.parse(list(ops), ppb.OutputOptions(**output), SPEC_LIMITS)


def render(data: bytes, *ops: ppb.Operation, **output: Any) -> Image.Image:
    rendered = pipeline.render(io.BytesIO(data), wanted(*ops, **output), LIMITS)
    image = Image.open(io.BytesIO(rendered.data))
    image.load()
    return image


def window_of(result: Image.Image, resized: Image.Image) -> tuple[int, int]:
    """Where in resized the result was cut from (it is one of resized's windows)."""
    rgb = result.convert("RGB")
    box = rgb.size
    for top in range(resized.height - box[1] + 1):
        for left in range(resized.width - box[0] + 1):
            if resized.crop((left, top, left + box[0], top + box[1])).tobytes() == rgb.tobytes():
                return left, top
    raise AssertionError("the result is no window of the resized image")


@pytest.fixture(scope="module")
def astronaut_png() -> bytes:
    return ASTRONAUT.read_bytes()


@pytest.fixture(scope="module")
def astronaut_300() -> Image.Image:
    """The 512x512 portrait as a cover crop of 300 on a side resizes it, before the crop:
    the image the face is looked for in."""
    with Image.open(ASTRONAUT) as image:
        step = Resize(300, 300, "fill", "center", False)  # the same resampling
        return step.apply(image.convert("RGB"), {})


def stripes_on_the_right() -> Image.Image:
    """No face; all the detail on the right, so smart differs from center."""
    image = Image.new("L", (600, 200), 200)
    draw = ImageDraw.Draw(image)
    for x in range(420, 600, 6):
        draw.line((x, 0, x, 200), fill=0, width=3)
    return image


def columns(size: tuple[int, int] = (1000, 400)) -> Image.Image:
    """Each column x is coloured (x % 256, x // 256, 0) and each row's blue is y % 256:
    any pixel of a window says where it was cut from."""
    image = Image.new("RGB", size)
    image.putdata([(x % 256, x // 256, y % 256) for y in range(size[1]) for x in range(size[0])])
    return image


def origin(result: Image.Image) -> tuple[int, int]:
    r, g, b = result.convert("RGB").getpixel((0, 0))  # type: ignore[misc]
    return r + 256 * g, b


# gravity=face, in-process


@pytest.mark.parametrize("box", [(100, 300), (300, 100)], ids=["tall", "wide"])
def test_a_face_crop_keeps_the_face(
    astronaut_png: bytes, astronaut_300: Image.Image, box: tuple[int, int]
) -> None:
    result = render(astronaut_png, cover(*box, ppb.GRAVITY_FACE))
    assert result.size == box
    (face,) = faces.find_faces(astronaut_300)  # looked for in what is cropped
    window = window_of(result, astronaut_300)
    assert window == faces.face_window(astronaut_300, box)
    assert inside(face, window, box), (face, window)
    centre = render(astronaut_png, cover(*box, ppb.GRAVITY_CENTER))
    centre_window = window_of(centre, astronaut_300)
    assert window != centre_window  # the face is up and to the left of the middle
    if box == (300, 100):
        assert not inside(face, centre_window, box)  # a centre crop loses it


def test_a_face_crop_without_a_face_is_the_smart_crop() -> None:
    for image in (stripes_on_the_right(), Image.open(STILL_LIFE)):
        source = encode(image.convert("RGB"))
        face = render(source, cover(100, 100, ppb.GRAVITY_FACE))
        smart = render(source, cover(100, 100, ppb.GRAVITY_SMART))
        centre = render(source, cover(100, 100, ppb.GRAVITY_CENTER))
        assert face.tobytes() == smart.tobytes()
        assert smart.tobytes() != centre.tobytes()  # so the fallback is seen


def test_face_window_falls_back_to_exactly_the_smart_window() -> None:
    image = stripes_on_the_right().convert("RGB")
    assert faces.face_window(image, (100, 200)) is None
    step = Resize(100, 200, "cover", "face", False)
    memo: dict[object, Any] = {}
    step.apply(image, memo)
    assert memo[step] == smartcrop.best_window(image, (100, 200)) != (250, 0)


def test_an_animation_keeps_the_face_window_of_its_first_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The face is looked for once, on the first frame; the window holds for all."""
    with Image.open(ASTRONAUT) as image:
        portrait = image.convert("L").resize((300, 300))
    frames = [portrait, portrait.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    looked: list[tuple[int, int]] = []
    find = faces.find_faces

    def counted(image: Image.Image) -> list[faces.Box]:
        looked.append(image.size)
        return find(image)

    monkeypatch.setattr(faces, "find_faces", counted)
    result = render(gif, cover(100, 300, ppb.GRAVITY_FACE), format=ppb.OUTPUT_FORMAT_GIF)
    assert getattr(result, "n_frames", 1) == 2
    assert looked == [(300, 300)]
    # The second frame is the first mirrored: cut at the first frame's window (the face
    # on the left), it is the mirror of the window on the right.
    first, second = (frame.copy() for frame in _frames(result))
    window = faces.face_window(frames[0], (100, 300))
    assert window is not None and window[0] < 100
    flopped = frames[1].crop((window[0], 0, window[0] + 100, 300))
    assert _close(second.convert("L"), flopped)
    assert not _close(first.convert("L"), flopped)


def _frames(image: Image.Image) -> list[Image.Image]:
    out = []
    for n in range(getattr(image, "n_frames", 1)):
        image.seek(n)
        out.append(image.convert("L"))
    return out


def _close(a: Image.Image, b: Image.Image) -> bool:
    """Alike but for a GIF palette's rounding."""
    diff = [abs(p - q) for p, q in zip(a.tobytes(), b.tobytes(), strict=True)]
    return sum(diff) / len(diff) < 4


def test_opencv_loads_in_the_processor_only_once_a_face_crop_is_asked() -> None:
    code = """
import io, sys
from imageservice.v1 import processor_service_pb2 as ppb
from PIL import Image
from processor import pipeline, spec
def run(gravity):
    op = ppb.Operation(resize=ppb.Resize(width=50, height=50, fit=ppb.FIT_COVER, gravity=gravity))
    limits = spec.RequestLimits(99, 1)
    request = spec.parse([op], ppb.OutputOptions(format=ppb.OUTPUT_FORMAT_PNG), limits)
    source = io.BytesIO()
    Image.new("RGB", (90, 60)).save(source, "PNG")
    source.seek(0)
    pipeline.render(source, request, pipeline.RenderLimits(10**7, 10, 99, 10**8))
    return "cv2" in sys.modules
print(run(ppb.GRAVITY_SMART), run(ppb.GRAVITY_FACE))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "True"]


# gravity=fp:X,Y, in-process


@pytest.mark.parametrize(
    ("x", "y", "where"),
    [(0.0, 0.0, "tl"), (1.0, 0.0, "tr"), (0.0, 1.0, "bl"), (1.0, 1.0, "br")],
)
def test_a_focal_point_in_a_corner_keeps_that_corner(x: float, y: float, where: str) -> None:
    # The red mark, moved to the corner asked for: the window keeps it.
    source = marked((300, 300))
    if where in ("tr", "br"):
        source = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if where in ("bl", "br"):
        source = source.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    result = render(encode(source), cover(120, 120, ppb.GRAVITY_FOCAL_POINT, focal_x=x, focal_y=y))
    assert corner(result) == where


@pytest.mark.parametrize(
    ("x", "y", "window"),
    [
        (0.25, 0.6, (150, 0)),  # 250 is the window's centre, 100 either side
        (0.2, 0.8, (100, 0)),
        (0.05, 0.5, (0, 0)),  # as near as the image allows
        (0.95, 0.5, (800, 0)),
        (0.0, 0.0, (0, 0)),
        (1.0, 1.0, (800, 0)),
        (0.5, 0.5, (400, 0)),
    ],
)
def test_a_focal_point_centres_the_window(x: float, y: float, window: tuple[int, int]) -> None:
    source = encode(columns((1000, 200)))
    result = render(source, cover(200, 200, ppb.GRAVITY_FOCAL_POINT, focal_x=x, focal_y=y))
    assert (result.size, origin(result)) == ((200, 200), window)


def test_a_focal_point_is_a_fraction_of_the_resized_image() -> None:
    # 1000x400 covering 100x200 resizes to 500x200 then crops: the point is a fraction
    # of the resized image, so fp:0.3,0 centres on column 150 of 500, 750 of the source.
    source = encode(columns((1000, 400)))
    result = render(source, cover(100, 200, ppb.GRAVITY_FOCAL_POINT, focal_x=0.3, focal_y=0))
    left, _ = origin(result)
    assert result.size == (100, 200) and abs(left - 2 * 100) <= 2  # window at 100 of 500


@pytest.mark.parametrize(
    ("point", "compass"),
    [
        ("fp:0,0", "northwest"),
        ("fp:1,1", "southeast"),
        ("fp:0.5,0.5", "center"),
        ("fp:0.5,0", "north"),
        ("fp:1,0.5", "east"),
    ],
)
def test_a_focal_point_on_an_edge_or_the_middle_cuts_the_compass_window(
    point: str, compass: str
) -> None:
    """Why such points are that compass gravity in canonical form (one variant)."""
    for size, box in (
        ((1001, 777), (300, 777)),
        ((640, 481), (640, 99)),
        ((7, 5), (3, 5)),
        ((7, 5), (7, 2)),
    ):
        image = columns(size)
        by_point = Resize(box[0], box[1], "cover", point, False).apply(image, {})
        by_name = Resize(box[0], box[1], "cover", compass, False).apply(image, {})
        assert by_point.tobytes() == by_name.tobytes(), (size, box)


# Canonical form


def gravity_of(resize: ppb.Resize) -> str:
    (step,) = wanted(Op(resize=resize)).ops
    assert isinstance(step, Resize)
    return step.gravity


@pytest.mark.parametrize(
    ("x", "y", "gravity"),
    [
        (0.25, 0.6, "fp:0.25,0.6"),  # 0.6 is 0.6000000238 as a float32
        (0.123456, 0.98766, "fp:0.1235,0.9877"),  # to 4 decimals
        (0.00004, 0.5, "west"),  # rounds to 0
        (0, 0, "northwest"),
        (1, 1, "southeast"),
        (0.5, 0.5, "center"),
        (0.5, 1, "south"),
        (1e-4, 0.9999, "fp:0.0001,0.9999"),
    ],
)
def test_the_canonical_gravity_of_a_focal_point(x: float, y: float, gravity: str) -> None:
    resize = ppb.Resize(width=10, height=10, fit=ppb.FIT_COVER, gravity=ppb.GRAVITY_FOCAL_POINT)
    resize.focal_x, resize.focal_y = x, y
    assert gravity_of(resize) == gravity


def test_focal_fields_count_only_with_a_focal_point_and_a_cover_crop() -> None:
    plain = wanted(cover(10, 10, ppb.GRAVITY_NORTH)).key("A" * 22)
    assert wanted(cover(10, 10, ppb.GRAVITY_NORTH, focal_x=0.3, focal_y=0.7)).key("A" * 22) == plain
    by_point = wanted(cover(10, 10, ppb.GRAVITY_FOCAL_POINT, focal_x=0.5, focal_y=0))
    assert by_point.key("A" * 22) == plain  # fp:0.5,0 is north
    contain = ppb.Resize(width=10, height=10, gravity=ppb.GRAVITY_FOCAL_POINT, focal_x=0.3)
    assert gravity_of(contain) == "center"  # no crop: the gravity means nothing
    assert gravity_of(ppb.Resize(width=10, height=10, fit=ppb.FIT_COVER)) == "center"
    assert (
        gravity_of(ppb.Resize(width=9, height=9, fit=ppb.FIT_COVER, gravity=ppb.GRAVITY_FACE))
        == "face"
    )


@pytest.mark.parametrize(
    ("x", "y", "field"),
    [
        (1.5, 0.5, "resize.focal_x"),
        (0.5, -0.1, "resize.focal_y"),
        (float("nan"), 0.5, "resize.focal_x"),
        (0.5, float("inf"), "resize.focal_y"),
    ],
)
def test_a_focal_point_outside_the_image_is_refused(x: float, y: float, field: str) -> None:
    with pytest.raises(ServiceError) as caught:
        wanted(cover(10, 10, ppb.GRAVITY_FOCAL_POINT, focal_x=x, focal_y=y))
    assert caught.value.metadata["field"] == field


@pytest.mark.parametrize("gravity", [ppb.GRAVITY_FACE, ppb.GRAVITY_FOCAL_POINT, ppb.GRAVITY_SMART])
def test_a_letterbox_takes_no_window_gravity(gravity: int) -> None:
    pad = ppb.Resize(width=10, height=10, fit=ppb.FIT_PAD, gravity=gravity, focal_x=0.5)  # type: ignore[arg-type]
    with pytest.raises(ServiceError) as caught:
        wanted(Op(resize=pad))
    assert caught.value.metadata["field"] == "resize.gravity"
    assert "applies to fit=cover only" in caught.value.message


def test_a_watermark_takes_no_window_gravity() -> None:
    for raw in ("face", "fp:0.5,0.5", "smart"):
        with pytest.raises(HTTPProblem):
            PARAMETERS.values([("wm_gravity", raw)])
    mark = ppb.Watermark(image_id="A" * 22, gravity=ppb.GRAVITY_FACE)
    with pytest.raises(ServiceError) as caught:
        wanted(Op(watermark=mark))
    assert caught.value.metadata["field"] == "watermark.gravity"


def test_an_unknown_gravity_is_refused() -> None:
    with pytest.raises(ServiceError) as caught:
        wanted(cover(10, 10, 99))
    assert caught.value.metadata["field"] == "resize.gravity"


# The gateway's parser and its OpenAPI schema


@pytest.mark.parametrize(
    ("raw", "gravity", "point"),
    [
        ("face", ppb.GRAVITY_FACE, (0.0, 0.0)),
        ("smart", ppb.GRAVITY_SMART, (0.0, 0.0)),
        ("northwest", ppb.GRAVITY_NORTH_WEST, (0.0, 0.0)),
        ("fp:0.25,0.6", ppb.GRAVITY_FOCAL_POINT, (0.25, 0.6)),
        ("fp:0,1", ppb.GRAVITY_FOCAL_POINT, (0.0, 1.0)),
        ("fp:1.000,0.123456", ppb.GRAVITY_FOCAL_POINT, (1.0, 0.123456)),
    ],
)
def test_the_query_spells_gravity_as_a_name_or_a_focal_point(
    raw: str, gravity: int, point: tuple[float, float]
) -> None:
    values = PARAMETERS.values([("w", "10"), ("h", "10"), ("fit", "cover"), ("gravity", raw)])
    assert PARAMETERS.conflict(values) is None
    (operation,) = (op for op in parameters.operations(values) if op.HasField("resize"))
    resize = operation.resize
    assert resize.gravity == gravity
    assert (resize.focal_x, resize.focal_y) == pytest.approx(point)


@pytest.mark.parametrize(
    "raw",
    [
        "fp:2,0",
        "fp:0.5",
        "fp:a,b",
        "fp:1.5,0",
        "fp:1.01,0",
        "fp:-0,0",
        "fp:.5,.5",
        "fp:0.5,0.5,0.5",
        "fp: 0.5,0.5",
        "fp:0.1234567,0",  # more than 6 decimals
        "fp:0.5e0,0",
        "FP:0.5,0.5",
        "fp:",
        "Face",
        "faces",
        "",
    ],
)
def test_a_malformed_gravity_is_refused_and_the_schema_agrees(raw: str) -> None:
    (param,) = (p for p in PARAMETERS.table if p.name == "gravity")
    with pytest.raises(ValueError):
        param.value.parse(raw)
    names, pattern = param.schema["oneOf"]
    assert raw not in names["enum"] and re.search(pattern["pattern"], raw) is None


def test_the_schema_states_every_spelling() -> None:
    (param,) = (p for p in PARAMETERS.table if p.name == "gravity")
    schema = param.schema
    assert schema["type"] == "string"
    names, pattern = schema["oneOf"]
    assert "face" in names["enum"] and "smart" in names["enum"]
    assert pattern["pattern"] == FOCAL_POINT
    for raw in ("fp:0,0", "fp:1,1", "fp:0.25,0.6", "fp:1.0,0.000001"):
        assert re.search(pattern["pattern"], raw) is not None
        param.value.parse(raw)
    assert "`face`" in param.value.text() and "`fp:X,Y`" in param.value.text()


def test_the_focal_window_helper_is_what_the_step_uses() -> None:
    image = columns((640, 480))
    step = Resize(200, 480, "cover", "fp:0.7,0.2", False)
    result = step.apply(image, {})
    assert origin(result) == windows.focal_window((640, 480), (200, 480), 0.7, 0.2)


# Through HTTP


@pytest.fixture(scope="module")
def ids(gateway_server: ServiceProcess) -> dict[str, str]:
    with Image.open(ASTRONAUT) as image:
        portrait = image.convert("RGB")
    frames = [
        portrait.convert("P"),
        portrait.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P"),
    ]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    uploads = {"astronaut": (ASTRONAUT.read_bytes(), "image/png"), "gif": (gif, "image/gif")}
    found = {}
    for name, (data, media_type) in uploads.items():
        url = f"{gateway_server.url}/images"
        response = httpx.post(url, content=data, headers={"Content-Type": media_type})
        found[name] = str(response.json()["id"])
    return found


@pytest.mark.parametrize("gravity", ["face", "fp:0.2,0.8", "fp:0.5,0.5"])
def test_face_and_focal_point_crops_render(
    http: httpx.Client, ids: dict[str, str], gravity: str
) -> None:
    query = f"w=100&h=300&fit=cover&gravity={gravity}&format=png"
    response = http.get(f"/images/{ids['astronaut']}?{query}")
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (100, 300)


def test_a_focal_point_in_the_middle_is_the_centre_variant(
    http: httpx.Client, ids: dict[str, str]
) -> None:
    base = f"/images/{ids['astronaut']}?w=100&h=300&fit=cover&format=png&gravity="
    middle, centre = http.get(base + "fp:0.5,0.5"), http.get(base + "center")
    assert middle.content == centre.content and middle.headers["etag"] == centre.headers["etag"]
    face = http.get(base + "face")
    assert face.content != centre.content


@pytest.mark.parametrize(
    "query",
    [
        "w=10&h=10&fit=cover&gravity=fp:2,0",
        "w=10&h=10&fit=cover&gravity=fp:0.5",
        "w=10&h=10&fit=cover&gravity=fp:a,b",
        "w=10&h=10&fit=cover&gravity=faces",
        "w=10&h=10&gravity=face",  # not a cover crop
        "w=10&h=10&fit=contain&gravity=fp:0.2,0.8",
        "w=10&h=10&fit=pad&gravity=face",  # pad places the image: by side or corner only
        "w=10&h=10&fit=pad&gravity=fp:0.2,0.8",
        "gravity=face",  # no size
    ],
)
def test_a_malformed_or_misplaced_gravity_is_a_400_naming_it(
    http: httpx.Client, ids: dict[str, str], query: str
) -> None:
    body = is_problem(http.get(f"/images/{ids['astronaut']}?{query}"), 400)
    assert body["parameter"] == "gravity"
    assert str(body["detail"]).startswith("gravity: ")
    if "fp:" in query and "fit=cover" in query:
        assert "a focal point must be fp:X,Y, X and Y from 0 to 1" in str(body["detail"])


def test_an_animated_gif_cropped_by_face_keeps_its_frames(
    http: httpx.Client, ids: dict[str, str]
) -> None:
    response = http.get(f"/images/{ids['gif']}?w=100&h=300&fit=cover&gravity=face&format=gif")
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "GIF" and image.size == (100, 300)
    assert getattr(image, "n_frames", 1) == 2


def test_openapi_states_the_gravity_spellings(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    (schema,) = (
        p["schema"]
        for p in doc["paths"]["/images/{image_id}"]["get"]["parameters"]
        if p["name"] == "gravity"
    )
    assert schema["oneOf"][0]["enum"][-2:] == ["smart", "face"]
    assert schema["oneOf"][1]["pattern"] == FOCAL_POINT
