"""Face-aware cover crops: the detector (processor.faces) and the window geometry
(processor.windows), in-process on the corpus' portrait."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import pytest
from PIL import Image

from processor import faces, windows
from tests.support import ASTRONAUT, STILL_LIFE, inside

# Where Eileen Collins' face is in the 512x512 portrait, judged by eye: between the hair
# line and the chin, left of the picture's middle.
FACE_CENTRE = (224, 115)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    with Image.open(ASTRONAUT) as image:
        return image.convert("RGB")


def test_find_faces_finds_the_astronauts_face(astronaut: Image.Image) -> None:
    found = faces.find_faces(astronaut)
    assert len(found) == 1
    x, y, w, h = found[0]
    assert x <= FACE_CENTRE[0] <= x + w and y <= FACE_CENTRE[1] <= y + h
    assert 60 <= w <= 140 and 60 <= h <= 140  # a face, not the head and shoulders


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA"])
def test_find_faces_reads_any_mode(astronaut: Image.Image, mode: str) -> None:
    (face,) = faces.find_faces(astronaut.convert(mode))
    (rgb_face,) = faces.find_faces(astronaut)
    assert all(abs(a - b) <= 4 for a, b in zip(face, rgb_face, strict=True))


def test_find_faces_answers_in_the_sources_own_pixels(astronaut: Image.Image) -> None:
    """Detection runs on a copy of at most DETECT_SIDE pixels; boxes are scaled back."""
    big = astronaut.resize((1536, 1536))
    (face,) = faces.find_faces(big)
    (small_face,) = faces.find_faces(astronaut)
    assert all(abs(a - 3 * b) <= 12 for a, b in zip(face, small_face, strict=True))


@pytest.mark.parametrize("box", [(100, 100), (60, 300), (300, 80), (70, 70)])
def test_face_window_keeps_the_face(astronaut: Image.Image, box: tuple[int, int]) -> None:
    small = astronaut.resize((300, 300), Image.Resampling.LANCZOS)
    (face,) = faces.find_faces(small)
    corner = faces.face_window(small, box)
    assert corner is not None
    assert 0 <= corner[0] <= 300 - box[0] and 0 <= corner[1] <= 300 - box[1]
    assert inside(face, corner, box), (face, corner)


def test_face_window_differs_from_a_centre_crop(astronaut: Image.Image) -> None:
    """The face is up and to the left: a centre crop cuts it, the face window does not."""
    small = astronaut.resize((300, 300), Image.Resampling.LANCZOS)
    (face,) = faces.find_faces(small)
    centre = windows.focal_window(small.size, (100, 100), 0.5, 0.5)
    assert not inside(face, centre, (100, 100))
    assert faces.face_window(small, (100, 100)) != centre


def test_face_window_of_the_whole_image_is_its_corner(astronaut: Image.Image) -> None:
    assert faces.face_window(astronaut, astronaut.size) == (0, 0)


def test_no_face_in_a_gradient() -> None:
    gradient = Image.linear_gradient("L").resize((400, 300))
    assert faces.find_faces(gradient) == []
    assert faces.face_window(gradient.convert("RGB"), (100, 100)) is None


def test_no_face_in_a_still_life() -> None:
    with Image.open(STILL_LIFE) as image:
        photo = image.convert("RGB")
    assert faces.find_faces(photo) == []
    assert faces.face_window(photo, (500, 500)) is None


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(10, 10), (1, 1), (23, 400), (400, 23)])
def test_an_image_smaller_than_the_cascade_has_no_face(mode: str, size: tuple[int, int]) -> None:
    tiny = Image.new(mode, size)
    assert faces.find_faces(tiny) == []
    assert faces.face_window(tiny, (1, 1)) is None


def test_a_long_thin_image_too_narrow_after_the_downscale_has_no_face() -> None:
    # 6000x40 shrinks to 512x3, below the cascade's window: no search, no error.
    assert faces.find_faces(Image.new("RGB", (6000, 40), "white")) == []


def test_face_window_keeps_the_surest_faces_that_fit() -> None:
    """Two portraits side by side: a window wide enough keeps both, a narrow one keeps
    one whole rather than halves of two."""
    with Image.open(ASTRONAUT) as image:
        portrait = image.convert("RGB").resize((256, 256), Image.Resampling.LANCZOS)
    pair = Image.new("RGB", (576, 256), "grey")
    pair.paste(portrait, (0, 0))
    pair.paste(portrait, (320, 0))
    found = faces.find_faces(pair)
    assert len(found) == 2
    wide = faces.face_window(pair, (500, 200))
    assert wide is not None and all(inside(face, wide, (500, 200)) for face in found)
    narrow = faces.face_window(pair, (200, 200))
    assert narrow is not None
    assert [inside(face, narrow, (200, 200)) for face in found].count(True) == 1


def test_each_thread_has_its_own_classifier(astronaut: Image.Image) -> None:
    """detectMultiScale writes into the classifier's buffers with the GIL released, so
    a classifier is never shared: each worker thread loads one, once."""
    start = threading.Barrier(3)
    held: list[cv2.CascadeClassifier] = []

    def load() -> None:
        start.wait()
        held.extend([faces._classifier(), faces._classifier()])

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(classifier) for classifier in held}) == 3  # one per thread, reused
    expected = faces.find_faces(astronaut)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(faces.find_faces, [astronaut] * 6))
    assert all(result == expected for result in results)


@pytest.mark.parametrize(
    ("x", "y", "corner"),
    [
        (0.5, 0.5, (400, 0)),  # the middle: the centre gravity's window
        (0.0, 0.0, (0, 0)),  # the top-left corner: clamped
        (1.0, 1.0, (800, 0)),  # the bottom-right corner: clamped
        (0.1, 0.9, (0, 0)),  # near the left edge: clamped
        (0.3, 0.5, (200, 0)),  # room to centre: centred
        (-3.0, 7.0, (0, 0)),  # outside 0..1: the nearest edge
        (9.0, 0.5, (800, 0)),
    ],
)
def test_focal_window(x: float, y: float, corner: tuple[int, int]) -> None:
    assert windows.focal_window((1000, 400), (200, 400), x, y) == corner


def test_focal_window_in_both_axes() -> None:
    assert windows.focal_window((1000, 1000), (100, 200), 0.25, 0.75) == (200, 650)
    assert windows.focal_window((1000, 1000), (100, 200), 0.99, 0.01) == (900, 0)


@pytest.mark.parametrize("size", [(301, 200), (300, 201), (1001, 777), (7, 5)])
@pytest.mark.parametrize("box", [(3, 2), (7, 5), (6, 1)])
def test_focal_window_in_the_middle_matches_the_centre_gravity(
    size: tuple[int, int], box: tuple[int, int]
) -> None:
    spare = (size[0] - box[0], size[1] - box[1])
    assert windows.focal_window(size, box, 0.5, 0.5) == (spare[0] // 2, spare[1] // 2)


def test_centred_window_on_a_pixel() -> None:
    assert windows.centred_window((1000, 400), (200, 400), 130, 200) == (30, 0)
    assert windows.centred_window((1000, 400), (200, 400), 50, 200) == (0, 0)
    assert windows.centred_window((1000, 400), (200, 400), 990, 200) == (800, 0)
