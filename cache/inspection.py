"""Decides what an uploaded file is by decoding it, whatever the client claimed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from common.imaging import MEDIA_TYPES, decoding_errors, open_checked, too_large


@dataclass(frozen=True)
class Limits:
    allowed_formats: frozenset[str]
    max_pixels: int
    max_frames: int


@dataclass(frozen=True)
class ImageInfo:
    format: str
    media_type: str
    width: int
    height: int
    frames: int


def inspect_image(path: Path, limits: Limits) -> ImageInfo:
    """Open and fully decode every frame; raise ServiceError saying why it is refused.

    Header checks come first (format, pixel count) so a bomb is refused before any
    large allocation; then each frame is decoded, which is what finds truncation.
    """
    with path.open("rb") as fp, decoding_errors(fp):
        with open_checked(fp, limits.allowed_formats, limits.max_pixels) as image:
            if image.format == "PNG":
                # Pillow streams IDAT without checking CRCs; verify() checks every
                # chunk's CRC, and needs a fresh open afterwards to decode.
                image.verify()
        fp.seek(0)
        with open_checked(fp, limits.allowed_formats, limits.max_pixels) as image:
            return _decode_all(image, limits)


def _decode_all(image: Image.Image, limits: Limits) -> ImageInfo:
    fmt = image.format or ""
    width, height = image.size
    frames = 0
    # Walk frames one by one, never asking n_frames up front: a frame flood is refused
    # as soon as the count passes the limit instead of after scanning the whole file.
    while True:
        if image.size[0] * image.size[1] > limits.max_pixels:
            raise too_large(f"a frame exceeds the limit of {limits.max_pixels} pixels")
        if fmt == "JPEG":
            # Decoding at reduced scale still reads every byte of entropy-coded data,
            # so truncation is found at a fraction of the cost. (Not for MPO: draft
            # breaks seeking to its second picture.)
            image.draft(None, (max(1, width // 8), max(1, height // 8)))
        image.load()
        frames += 1
        if frames > limits.max_frames:
            raise too_large(f"more than {limits.max_frames} frames")
        try:
            image.seek(frames)
        except EOFError:
            break
    return ImageInfo(fmt, MEDIA_TYPES[fmt], width, height, frames)
