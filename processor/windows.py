"""Where a cover crop's window goes: pure geometry on sizes, no pixels.

A cover crop resizes an image until it covers the box, then cuts a box-sized window
out of it; the gravities differ only in where that window's top-left corner lands.
The arithmetic for "centre the window on this point, as nearly as the image allows"
is shared by focal-point crops (a point given in the request) and face crops (a point
found in the pixels), so it lives here, apart from both: a focal-point crop needs no
face detector (nor OpenCV and NumPy loaded), and smartcrop is about scoring content.
"""

from __future__ import annotations

import math


def centred_window(
    size: tuple[int, int], box: tuple[int, int], cx: float, cy: float
) -> tuple[int, int]:
    """Top-left corner of the box-sized window of size centred on pixel (cx, cy).

    The window is moved back inside the image where the point lies nearer an edge
    than half the box; an axis the box fills (or overfills) gets 0.
    """
    return (_along(size[0], box[0], cx), _along(size[1], box[1], cy))


def focal_window(
    size: tuple[int, int], box: tuple[int, int], x: float, y: float
) -> tuple[int, int]:
    """Top-left corner of the box-sized window of size centred on a focal point.

    x and y are fractions of the width and height (0 the left or top edge, 1 the
    right or bottom, 0.5 the middle); values outside 0..1 end at the nearest edge.
    """
    return centred_window(size, box, x * size[0], y * size[1])


def _along(length: int, window: int, centre: float) -> int:
    spare = max(0, length - window)
    # Floor, as the centre gravity's spare // 2: a point in the middle gives the same
    # window as gravity=centre.
    return min(spare, max(0, math.floor(centre - window / 2)))
