"""The fuzz target for upload validation: the cache's check of an upload's bytes.

Whatever the bytes, validation answers an image's facts or refuses it as corrupt, too
large or unsupported; any other exception would be a 500 for an upload.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from cache.placeholders import placeholders
from common.errors import Reason, ServiceError
from common.imaging import SOURCE_FORMATS, SourceLimits, inspect

# The cache's own limits would let a mutated header ask for 50 megapixels a try; smaller
# ones take the same paths and keep each try to milliseconds.
LIMITS = SourceLimits(
    allowed_formats=frozenset(SOURCE_FORMATS),
    max_pixels=1_000_000,
    max_frames=64,
    max_total_pixels=4_000_000,
)
REFUSALS = frozenset({Reason.CORRUPT_IMAGE, Reason.IMAGE_TOO_LARGE, Reason.UNSUPPORTED_MEDIA_TYPE})
# Seeds larger than this slow every mutation of them and add little: the corpus holds the
# same formats in small files too.
SEED_BYTES = 64 * 1024


def _placeholders(frame: Image.Image) -> None:
    placeholders(frame)  # made of the first frame as the cache makes them, said never to raise


def check(data: bytes) -> None:
    """Validate data as the cache does an upload."""
    try:
        inspect(io.BytesIO(data), LIMITS, first_frame=_placeholders)
    except ServiceError as exc:
        if exc.reason not in REFUSALS:
            raise


def words() -> list[str]:
    return []  # the seeds hold every format's magic numbers


def seeds() -> dict[str, bytes]:
    """The test corpus's files (tests/support.py finds it), by name."""
    from tests.support import corpus

    found = {}
    for item in corpus():
        path = Path(item.path)
        if path.is_file() and path.stat().st_size <= SEED_BYTES:
            found[item.name.replace("/", "__")] = path.read_bytes()
    return found
