"""Watermarks (wm): another stored image drawn over the result, where its gravity puts it,
in process, through the processor, and through HTTP with who may read which image."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import image_pb2
from imageservice.v1 import processor_service_pb2 as ppb
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc
from PIL import Image, ImageSequence

from common.errors import Reason, ServiceError
from processor import pipeline
from tests.support import (
    ALICE,
    BOB,
    KEYS,
    LIMITS,
    OPS,
    ServiceProcess,
    bearer,
    collect,
    encode,
    failure,
    is_problem,
    process_request,
    upload,
    wanted,
)

Op = ppb.Operation
MARK = "M" * 22  # the mark's id in process: any id will do
WHITE = (255, 255, 255)
BLUE = (0, 0, 255)


def white(size: tuple[int, int] = (200, 100)) -> bytes:
    return encode(Image.new("RGB", size, WHITE))


def blue(size: tuple[int, int] = (20, 10)) -> bytes:
    return encode(Image.new("RGB", size, BLUE))


def mark(**fields: object) -> ppb.Operation:
    fields.setdefault("image_id", MARK)
    return Op(watermark=ppb.Watermark(**fields))  # type: ignore[arg-type]


def render(
    source: bytes, *ops: ppb.Operation, marked: bytes | None = None, **output: object
) -> Image.Image:
    output.setdefault("format", ppb.OUTPUT_FORMAT_PNG)
    images = {MARK: blue() if marked is None else marked}
    rendered = pipeline.render(io.BytesIO(source), wanted(*ops, **output), LIMITS, images)
    return Image.open(io.BytesIO(rendered.data))


def where(image: Image.Image, colour: tuple[int, int, int]) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom, inclusive) of the pixels of colour, None if none;
    every other pixel is asserted white."""
    rgb = image.convert("RGB")
    found = [
        (x, y) for y in range(rgb.height) for x in range(rgb.width) if rgb.getpixel((x, y)) != WHITE
    ]
    for xy in found:
        assert rgb.getpixel(xy) == colour, (xy, rgb.getpixel(xy))
    if not found:
        return None
    xs, ys = [x for x, _ in found], [y for _, y in found]
    box = (min(xs), min(ys), max(xs), max(ys))
    assert len(found) == (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # one solid box
    return box


@pytest.mark.parametrize(
    ("gravity", "x", "y", "box"),
    [
        (ppb.GRAVITY_SOUTH_EAST, 5, 5, (175, 85, 194, 94)),
        (ppb.GRAVITY_UNSPECIFIED, 5, 5, (175, 85, 194, 94)),  # southeast is the default
        (ppb.GRAVITY_NORTH_WEST, 3, 4, (3, 4, 22, 13)),
        (ppb.GRAVITY_NORTH_EAST, 0, 0, (180, 0, 199, 9)),
        (ppb.GRAVITY_SOUTH_WEST, 1, 2, (1, 88, 20, 97)),
        (ppb.GRAVITY_CENTER, 0, 0, (90, 45, 109, 54)),
        (ppb.GRAVITY_CENTER, 7, 3, (97, 48, 116, 57)),  # centred axes: right and down
        (ppb.GRAVITY_NORTH, 7, 2, (97, 2, 116, 11)),
        (ppb.GRAVITY_EAST, 4, 1, (176, 46, 195, 55)),
        (ppb.GRAVITY_SOUTH_EAST, 190, 0, (0, 90, 9, 99)),  # pushed part way off: clipped
    ],
)
def test_a_mark_lands_where_its_gravity_and_offsets_put_it(
    gravity: int, x: int, y: int, box: tuple[int, int, int, int]
) -> None:
    image = render(white(), mark(gravity=gravity, offset_x=x, offset_y=y))
    assert image.size == (200, 100)
    assert where(image, BLUE) == box


def test_a_mark_pushed_wholly_off_draws_nothing() -> None:
    image = render(white(), mark(offset_x=500, offset_y=5))
    assert where(image, BLUE) is None


def test_the_mark_goes_on_the_output_sized_image_last() -> None:
    # Resized and turned first: the mark itself is neither resized nor turned.
    ops = (Op(resize=ppb.Resize(width=100)), Op(rotate=ppb.Rotate(angle=90)))
    image = render(white((400, 200)), *ops, mark(gravity=ppb.GRAVITY_NORTH_WEST))
    assert image.size == (50, 100)
    assert where(image, BLUE) == (0, 0, 19, 9)  # 20 wide, 10 high: as stored


def test_opacity_blends_with_what_is_under_it() -> None:
    image = render(white(), mark(opacity=0.5)).convert("RGB")
    r, g, b = image.getpixel((185, 95))  # type: ignore[misc]
    assert 125 <= r <= 130 and 125 <= g <= 130 and b == 255
    assert image.getpixel((5, 5)) == WHITE


def test_the_marks_own_alpha_is_kept_and_multiplied_by_opacity() -> None:
    half = Image.new("RGBA", (20, 10), (0, 0, 255, 255))
    half.paste((0, 0, 255, 0), (0, 0, 10, 10))  # the left half transparent
    image = render(white(), mark(), marked=encode(half)).convert("RGB")
    assert image.getpixel((180, 95)) == WHITE and image.getpixel((195, 95)) == BLUE
    faded = Image.new("RGBA", (20, 10), (0, 0, 255, 128))
    image = render(white(), mark(opacity=0.5), marked=encode(faded)).convert("RGB")
    r, _, b = image.getpixel((190, 95))  # type: ignore[misc]
    assert 185 <= r <= 195 and b == 255  # a quarter of the way to blue


def test_a_transparent_result_takes_the_mark_over_its_alpha() -> None:
    clear = encode(Image.new("RGBA", (200, 100), (0, 0, 0, 0)))
    image = render(clear, mark(opacity=0.5))
    assert image.mode == "RGBA"
    r, g, b, a = image.getpixel((190, 95))  # type: ignore[misc]
    assert (r, g, b) == BLUE and 126 <= a <= 129
    assert image.getpixel((5, 5))[3] == 0  # type: ignore[index]


def test_a_grey_result_takes_a_coloured_mark() -> None:
    image = render(white(), Op(grayscale=ppb.Grayscale()), mark())
    assert image.mode == "RGB" and where(image, BLUE) == (180, 90, 199, 99)


def test_scale_makes_the_mark_that_fraction_of_the_output_width() -> None:
    image = render(white(), mark(scale=0.25, offset_x=0, offset_y=0))
    assert where(image, BLUE) == (150, 75, 199, 99)  # 50x25: a quarter of 200 wide
    image = render(white((400, 200)), Op(resize=ppb.Resize(width=100)), mark(scale=0.5))
    assert where(image, BLUE) == (50, 25, 99, 49)  # of the output, not of the original


def test_a_mark_larger_than_the_output_is_shrunk_to_fit() -> None:
    image = render(white(), mark(), marked=blue((400, 100)))
    assert where(image, BLUE) == (0, 50, 199, 99)  # 200x50, its aspect ratio kept
    image = render(white(), mark(scale=1.0), marked=blue((20, 20)))
    assert where(image, BLUE) == (100, 0, 199, 99)  # as wide as asked would be too tall


def test_an_animation_keeps_its_frames_with_the_mark_on_each() -> None:
    greys = [Image.new("RGB", (60, 40), (g, g, g)) for g in (0, 100, 200)]
    gif = encode(greys[0], "GIF", save_all=True, append_images=greys[1:], duration=50, loop=0)
    image = render(gif, mark(gravity=ppb.GRAVITY_NORTH_WEST), format=ppb.OUTPUT_FORMAT_GIF)
    frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    assert len(frames) == 3
    for frame, grey in zip(frames, (0, 100, 200), strict=True):
        assert frame.getpixel((5, 5)) == BLUE
        assert frame.getpixel((30, 30)) == (grey, grey, grey)


def test_an_animated_mark_draws_its_first_frame() -> None:
    colours = [Image.new("RGB", (20, 10), c) for c in (BLUE, (255, 0, 0))]
    animated = encode(colours[0], "GIF", save_all=True, append_images=colours[1:], duration=50)
    image = render(white(), mark(), marked=animated)
    assert getattr(image, "n_frames", 1) == 1
    assert where(image, BLUE) == (180, 90, 199, 99)


def test_the_canonical_form_and_the_key() -> None:
    default = wanted(mark())
    explicit = wanted(mark(gravity=ppb.GRAVITY_SOUTH_EAST, opacity=1, scale=0))
    assert default.key("I" * 22) == explicit.key("I" * 22)
    assert wanted(mark(image_id="N" * 22)).key("I" * 22) != default.key("I" * 22)
    assert default.images() == {"watermark.image_id": MARK}
    assert wanted(Op(blur=ppb.Blur(sigma=2))).images() == {}
    step = wanted(mark(opacity=0.30000001192, scale=0.01)).ops[0]
    assert (step.opacity, step.scale) == (0.3, 0.01)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"image_id": "nope"}, "watermark.image_id"),
        ({"image_id": ""}, "watermark.image_id"),
        ({"gravity": ppb.GRAVITY_SMART}, "watermark.gravity"),
        ({"gravity": 99}, "watermark.gravity"),
        ({"offset_x": -1}, "watermark.offset_x"),
        ({"offset_y": 9000}, "watermark.offset_y"),
        ({"opacity": 1.5}, "watermark.opacity"),
        ({"opacity": 0.004}, "watermark.opacity"),  # not 0: never read as the default
        ({"scale": float("nan")}, "watermark.scale"),
    ],
)
def test_bad_fields_are_named(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ServiceError) as caught:
        wanted(mark(**fields))
    assert caught.value.reason == Reason.INVALID_ARGUMENT
    assert caught.value.metadata["field"] == field


def test_a_render_without_the_marks_bytes_is_the_processors_fault() -> None:
    with pytest.raises(ServiceError) as caught:
        pipeline.render(io.BytesIO(white()), wanted(mark()), LIMITS, {})
    assert caught.value.reason == Reason.INTERNAL


# Through the processor and the cache.


def test_the_processor_fetches_the_mark(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    image_id = upload(stub, white()).id
    mark_id = upload(stub, blue()).id
    request = process_request(
        image_id, mark(image_id=mark_id, offset_x=5, offset_y=5), format=ppb.OUTPUT_FORMAT_PNG
    )
    meta, data = collect(pstub.Process(request, timeout=30))
    assert where(Image.open(io.BytesIO(data)), BLUE) == (175, 85, 194, 94)
    again, _ = collect(pstub.Process(request, timeout=30))
    assert again.key == meta.key
    missing = process_request(image_id, mark(image_id="Q" * 22))
    error = failure(pstub.Process, missing)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, Reason.IMAGE_NOT_FOUND)
    assert error.metadata["field"] == "watermark.image_id"


# Through HTTP.


def post(http: httpx.Client, data: bytes, headers: dict[str, str] | None = None) -> str:
    response = http.post(
        "/images", content=data, headers={"Content-Type": "image/png", **(headers or {})}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_watermark_through_http(http: httpx.Client) -> None:
    image_id, mark_id = post(http, white()), post(http, blue())
    answer = http.get(f"/images/{image_id}?wm={mark_id}&wm_x=5&wm_y=5&format=png")
    assert answer.status_code == 200, answer.text
    assert where(Image.open(io.BytesIO(answer.content)), BLUE) == (175, 85, 194, 94)
    query = f"wm={mark_id}&wm_gravity=northwest&wm_opacity=0.5&wm_scale=0.1&format=png"
    answer = http.get(f"/images/{image_id}?{query}")
    faded = Image.open(io.BytesIO(answer.content)).convert("RGB")
    r, _, b = faded.getpixel((5, 2))  # type: ignore[misc]
    assert 125 <= r <= 130 and b == 255 and faded.getpixel((25, 2)) == WHITE


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("wm=nope", "wm"),
        ("wm=" + "A" * 23, "wm"),
        ("wm_x=5", "wm_x"),  # without wm
        ("wm_opacity=0.5&wm_scale=0.5", "wm_opacity"),
        ("wm={id}&wm_gravity=smart", "wm_gravity"),
        ("wm={id}&wm_opacity=0", "wm_opacity"),
        ("wm={id}&wm_scale=2", "wm_scale"),
        ("wm={id}&wm_x=-1", "wm_x"),
    ],
)
def test_bad_watermark_parameters_are_400s_naming_them(
    http: httpx.Client, query: str, parameter: str
) -> None:
    image_id = post(http, white((8, 8)))
    body = is_problem(http.get(f"/images/{image_id}?{query.format(id=image_id)}"), 400)
    assert body["parameter"] == parameter


def test_a_missing_watermark_is_a_404_naming_wm(http: httpx.Client) -> None:
    image_id = post(http, white((9, 9)))
    body = is_problem(http.get(f"/images/{image_id}?wm={'Q' * 22}"), 404)
    assert (body["parameter"], body["detail"]) == ("wm", "wm: no such image")
    mark_id = post(http, blue((3, 3)))
    assert http.get(f"/images/{image_id}?wm={mark_id}").status_code == 200
    assert http.delete(f"/images/{mark_id}").status_code == 204
    # Made and held before: the deleted mark is refused all the same, memory or not.
    body = is_problem(http.get(f"/images/{image_id}?wm={mark_id}"), 404)
    assert body["parameter"] == "wm"


@pytest.fixture(scope="module")
def keyed(stack: Callable[..., ServiceProcess], processor_server: ServiceProcess) -> str:
    signing = {"IMAGESVC_URL_SIGNING_KEYS": f"k1:{'K' * 32}"}
    return stack({"IMAGESVC_API_KEYS": KEYS, **signing}, processor=processor_server).url


def test_a_watermark_is_read_as_the_caller_reads_the_image(keyed: str) -> None:
    with httpx.Client(base_url=keyed, timeout=30) as http:
        alices_mark = post(http, blue(), bearer(ALICE))  # private: the default here
        bobs = post(http, white(), bearer(BOB))
        public = http.post(
            "/images?visibility=public",
            content=white(),
            headers={"Content-Type": "image/png", **bearer(BOB)},
        ).json()["id"]
        # Bob may not read alice's private mark: the very answer a missing id gets.
        for target in (bobs, public):
            hidden = http.get(f"/images/{target}?wm={alices_mark}", headers=bearer(BOB))
            missing = http.get(f"/images/{target}?wm={'Q' * 22}", headers=bearer(BOB))
            assert is_problem(hidden, 404) == is_problem(missing, 404)
            assert hidden.json()["parameter"] == "wm"
        # Alice may draw her mark on bob's public image; the result is as private as
        # the mark, and held in memory for her alone.
        for _ in range(2):
            mine = http.get(f"/images/{public}?wm={alices_mark}&format=png", headers=bearer(ALICE))
            assert mine.status_code == 200, mine.text
            assert mine.headers["cache-control"].startswith("private")
        assert where(Image.open(io.BytesIO(mine.content)), BLUE) == (180, 90, 199, 99)
        after = http.get(f"/images/{public}?wm={alices_mark}&format=png", headers=bearer(BOB))
        is_problem(after, 404)
        anonymous = http.get(f"/images/{public}?wm={alices_mark}&format=png")
        is_problem(anonymous, 404)
        admin = http.get(f"/images/{public}?wm={alices_mark}&format=png", headers=bearer(OPS))
        assert admin.status_code == 200
        # Without a mark, bob's public image is public as ever.
        plain = http.get(f"/images/{public}?w=50", headers=bearer(BOB))
        assert plain.headers["cache-control"].startswith("public")


def test_a_signed_url_with_a_watermark_needs_a_signer_who_may_read_it(keyed: str) -> None:
    with httpx.Client(base_url=keyed, timeout=30) as http:
        alices_mark = post(http, blue(), bearer(ALICE))
        bobs = post(http, white(), bearer(BOB))
        alices = post(http, white(), bearer(ALICE))
        asked = {"params": {"wm": alices_mark, "format": "png"}}
        refused = http.post(f"/images/{bobs}/signed-urls", json=asked, headers=bearer(BOB))
        assert is_problem(refused, 404)["parameter"] == "wm"
        made = http.post(f"/images/{alices}/signed-urls", json=asked, headers=bearer(ALICE))
        assert made.status_code == 200, made.text
        held = http.get(made.json()["url"])  # anyone holding it
        assert held.status_code == 200
        assert where(Image.open(io.BytesIO(held.content)), BLUE) == (180, 90, 199, 99)


def test_the_processor_draws_a_private_mark_whoever_owns_it(
    stub: pb_grpc.CacheServiceStub, pstub: ppb_grpc.ProcessorServiceStub
) -> None:
    # The processor is an internal caller: it fetches a private mark the gateway let
    # the caller read, whoever owns it.
    private = upload(stub, blue(), owner="alice", visibility=image_pb2.VISIBILITY_PRIVATE).id
    image_id = upload(stub, white()).id
    request = process_request(image_id, mark(image_id=private), format=ppb.OUTPUT_FORMAT_PNG)
    _, data = collect(pstub.Process(request, timeout=30))
    assert where(Image.open(io.BytesIO(data)), BLUE) == (180, 90, 199, 99)


def test_a_preset_may_name_a_watermark(
    stack: Callable[..., ServiceProcess],
    processor_server: ServiceProcess,
    stub: pb_grpc.CacheServiceStub,
    tmp_path: Path,
) -> None:
    public = upload(stub, blue()).id
    private = upload(stub, blue(), owner="alice", visibility=image_pb2.VISIBILITY_PRIVATE).id
    presets = tmp_path / "presets.toml"
    presets.write_text(
        f'[logo]\nwm = "{public}"\nwm_gravity = "northwest"\nformat = "png"\n'
        f'[secret]\nwm = "{private}"\nformat = "png"\n'
    )
    env = {"IMAGESVC_API_KEYS": KEYS, "IMAGESVC_PRESETS": str(presets)}
    gateway = stack(env, processor=processor_server)
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        bobs = post(http, white(), bearer(BOB))
        logo = http.get(f"/images/{bobs}?preset=logo", headers=bearer(BOB))
        assert logo.status_code == 200, logo.text
        assert where(Image.open(io.BytesIO(logo.content)), BLUE) == (0, 0, 19, 9)
        # A preset's watermark is read as the caller's own wm would be.
        secret = http.get(f"/images/{bobs}?preset=secret", headers=bearer(BOB))
        assert is_problem(secret, 404)["parameter"] == "wm"
        assert http.get(f"/images/{bobs}?preset=secret", headers=bearer(OPS)).status_code == 200
