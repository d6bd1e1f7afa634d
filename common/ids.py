"""Image ids: opaque, URL-safe, 128 random bits, validated at every boundary."""

from __future__ import annotations

import re
import secrets
from typing import NewType

ImageId = NewType("ImageId", str)

# 16 random bytes in unpadded URL-safe base64 are exactly 22 characters. The one
# spelling of an id's shape: parameters that name an image and OpenAPI use it too.
IMAGE_ID_PATTERN = r"^[A-Za-z0-9_-]{22}$"
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)


def new_image_id() -> ImageId:
    """A fresh random id, never starting with "-": a command line (`imagesvc rm ID`)
    would take it for an option. Drawing again costs 1 in 64 ids a few bits of
    randomness (127.9 bits remain)."""
    while True:
        image_id = secrets.token_urlsafe(16)
        if not image_id.startswith("-"):
            return ImageId(image_id)


def parse_image_id(value: str) -> ImageId:
    """Return value as an ImageId, or raise ValueError if it cannot be one."""
    if not _IMAGE_ID.fullmatch(value):
        raise ValueError("not a valid image id")
    return ImageId(value)
