"""Face-aware cover crops (gravity=face): find frontal faces and keep them in the window.

Detection is OpenCV's frontal-face Haar cascade (Viola-Jones), one of the files shipped
inside the opencv-python-headless wheel (cv2.data.haarcascades), so nothing is
downloaded at run time. It runs on a greyscale, histogram-equalised copy at most
DETECT_SIDE pixels on its long side: a face worth cropping for is large enough to
survive that, and the search costs about the same however big the source: some 50 to
100 ms of one core on the copy (OpenCV spreads it over its own threads), plus 30 ms to
grey and shrink a 4000x3000 photograph. Worth it only for gravity=face, which asks.

A CascadeClassifier is not safe to share between threads: detectMultiScale is a
non-const C++ method that writes the image pyramid and integral images into buffers of
the classifier's own feature evaluator, and the Python binding releases the GIL for the
call. Renders run in a pool of worker threads, so each thread loads its own classifier,
once, the first time it looks for a face (a few tens of milliseconds, about 1 MB held).
"""

from __future__ import annotations

import os
import threading

import cv2
import cv2.data  # not in cv2's stubs: the folder the wheel keeps its cascades in
import numpy as np
from PIL import Image

from processor import windows

CASCADE = "haarcascade_frontalface_default.xml"
DETECT_SIDE = 512  # the long side of the copy the cascade runs on
CASCADE_WINDOW = 24  # the cascade's own window: nothing smaller can be a face
# Faces under this fraction of the copy's long side are ignored: at that size they
# are mostly the cascade's false positives (texture, foliage), and a face that small
# hardly steers a crop anyway.
MIN_FACE = 0.06
SCALE_FACTOR = 1.15  # a third fewer pyramid levels than 1.1, the same faces found in the corpus
MIN_NEIGHBOURS = 5
# The cascade's confidence in a face (the last stage's sum, its "level weight"): in the
# corpus true faces score about 3 to 9 (a 30-pixel face to a large one), most false
# positives (leaves, a mirror, a spacesuit's neck ring) below 2. Not all: a rock face in
# the waterfall photographs scores higher, a Haar cascade's known cost; a wrong face
# there moves a crop, nothing worse.
MIN_WEIGHT = 2.0

Box = tuple[int, int, int, int]  # left, top, width, height

_local = threading.local()


def find_faces(image: Image.Image) -> list[Box]:
    """Frontal faces in image as (left, top, width, height) in its own pixels.

    The surest face comes first. Any mode Pillow can turn into greyscale is accepted
    (L, LA, RGB, RGBA...); alpha is ignored. An image smaller than the cascade's 24x24
    window has no faces.
    """
    if min(image.size) < CASCADE_WINDOW:
        return []
    ratio = min(1.0, DETECT_SIDE / max(image.size))
    small_size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    if min(small_size) < CASCADE_WINDOW:  # a long thin strip, after the downscale
        return []
    grey = image.convert("L") if image.mode != "L" else image
    if small_size != grey.size:
        # reducing_gap: a box pre-shrink then bilinear, much faster than a full filter
        # on a big photo and as good for a detector.
        grey = grey.resize(small_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    pixels = cv2.equalizeHist(np.asarray(grey, dtype=np.uint8))
    smallest = max(CASCADE_WINDOW, round(max(small_size) * MIN_FACE))
    found, _, weights = _classifier().detectMultiScale3(
        pixels,
        scaleFactor=SCALE_FACTOR,
        minNeighbors=MIN_NEIGHBOURS,
        minSize=(smallest, smallest),
        outputRejectLevels=True,
    )
    scale_x, scale_y = image.width / small_size[0], image.height / small_size[1]
    scored: list[tuple[float, Box]] = []
    for (x, y, w, h), weight in zip(found, weights, strict=True):
        if weight < MIN_WEIGHT:
            continue
        left, top = round(x * scale_x), round(y * scale_y)
        right = min(image.width, round((x + w) * scale_x))
        bottom = min(image.height, round((y + h) * scale_y))
        scored.append((float(weight), (left, top, right - left, bottom - top)))
    scored.sort(key=lambda face: face[0], reverse=True)
    return [box for _, box in scored]


def face_window(image: Image.Image, box: tuple[int, int]) -> tuple[int, int] | None:
    """Top-left corner of a box-sized window of image that keeps its faces, or None.

    The window is centred on the union of as many faces as fit in it, taken surest
    first (so the main subject is kept whole, and a face off at the side is given up
    rather than cutting both in half), then moved back inside the image. None when no
    face is found: the caller falls back to smartcrop.best_window.
    """
    faces = find_faces(image)
    if not faces:
        return None
    left, top, width, height = faces[0]
    right, bottom = left + width, top + height
    for x, y, w, h in faces[1:]:
        grown = (min(left, x), min(top, y), max(right, x + w), max(bottom, y + h))
        if grown[2] - grown[0] <= box[0] and grown[3] - grown[1] <= box[1]:
            left, top, right, bottom = grown
    return windows.centred_window(image.size, box, (left + right) / 2, (top + bottom) / 2)


def _classifier() -> cv2.CascadeClassifier:
    """This thread's classifier, loaded the first time the thread asks."""
    classifier: cv2.CascadeClassifier | None = getattr(_local, "classifier", None)
    if classifier is None:
        path = os.path.join(cv2.data.haarcascades, CASCADE)
        classifier = cv2.CascadeClassifier(path)
        if classifier.empty():
            raise RuntimeError(f"OpenCV's face cascade did not load from {path}")
        _local.classifier = classifier
    return classifier
