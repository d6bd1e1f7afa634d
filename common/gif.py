"""A GIF's frames one at a time, each on its own, for validation.

Pillow's reader composites: from the second frame on it converts each frame to RGB at
the size of the whole canvas and pastes it onto an RGB canvas. For a 7000x7000 canvas
that holds about 440 MB and costs a full-canvas conversion per frame, however small
the frames are. Whether a GIF decodes does not depend on compositing, so validation
decodes each frame's own rectangle and drops it: memory stays at one frame (one byte a
pixel) and time follows the pixels the file really holds.

The walk follows Pillow's GifImagePlugin, quirks included (bytes between blocks are
skipped, a missing trailer ends the file, a frame reaching past the logical screen grows
it, an extension's first sub-block is read before looking for its terminator, a short
graphic control block is an error), so it finds the frames the processor's Pillow
finds. Two differences: a frame whose data ends before its last pixel is refused (Pillow
reads on into whatever follows), and what fails only in Pillow's compositing (it cannot
composite some GIFs that have no global palette) is found when the image is rendered,
not when it is uploaded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from PIL import Image


@dataclass(frozen=True)
class Frame:
    canvas: tuple[int, int]  # the logical screen, as grown by this and earlier frames
    size: tuple[int, int]  # the frame's own rectangle
    interlaced: bool
    code_size: int  # LZW minimum code size
    data: bytes  # the image data sub-blocks, with their length bytes

    def decode(self) -> Image.Image:
        """The frame's own pixels (palette indices), decoded by Pillow's GIF decoder."""
        if self.size[0] == 0 or self.size[1] == 0:
            raise SyntaxError("a GIF frame has no pixels")  # Pillow refuses it on load
        return Image.frombytes(
            "L", self.size, self.data, "gif", self.code_size, self.interlaced, -1
        )


def frames(fp: IO[bytes]) -> Iterator[Frame]:
    """Every frame of the GIF in fp, read as it is reached; SyntaxError if malformed."""
    fp.seek(0)
    screen = fp.read(13)
    if len(screen) < 13 or not screen.startswith((b"GIF87a", b"GIF89a")):
        raise SyntaxError("not a GIF file")
    width, height, flags = struct.unpack("<HHB", screen[6:11])
    if flags & 0x80:
        fp.seek(3 << ((flags & 7) + 1), 1)  # the global colour table
    seen = 0
    while True:
        introducer = fp.read(1)
        if not introducer or introducer == b";":
            return
        if introducer == b"!":
            _skip_extension(fp, first_frame=seen == 0)
        elif introducer == b",":
            descriptor = fp.read(9)
            if len(descriptor) < 9:
                raise SyntaxError("a GIF frame descriptor is cut short")
            left, top, frame_width, frame_height, flags = struct.unpack("<4HB", descriptor)
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            if flags & 0x80:
                fp.seek(3 << ((flags & 7) + 1), 1)  # the frame's own colour table
            code_size = fp.read(1)
            if not code_size:
                raise SyntaxError("a GIF frame has no image data")
            start = fp.tell()
            _skip_blocks(fp)
            end = fp.tell()
            fp.seek(start)
            data = fp.read(end - start)
            seen += 1
            yield Frame(
                (width, height), (frame_width, frame_height), bool(flags & 0x40), code_size[0], data
            )
        # Anything else between blocks is skipped, as Pillow does.


def _skip_extension(fp: IO[bytes], first_frame: bool) -> None:
    label = fp.read(1)
    if not label:
        raise SyntaxError("a GIF extension is cut short")
    block = _block(fp)
    if label == b"\xfe":  # a comment: its sub-blocks up to the terminator
        while block is not None:
            block = _block(fp)
        return
    if label == b"\xf9" and block is not None:
        # Pillow reads the delay (bytes 1-2) and, when flagged, the transparent index.
        if len(block) < 3 or (block[0] & 1 and len(block) < 4):
            raise SyntaxError("a GIF graphic control block is cut short")
    elif label == b"\xff" and first_frame and block and block.startswith(b"NETSCAPE2.0"):
        _block(fp)  # the loop count, or the terminator in its place
    _skip_blocks(fp)


def _block(fp: IO[bytes]) -> bytes | None:
    """The next data sub-block; None for a terminator or the end of the file."""
    length = fp.read(1)
    if not length or length == b"\0":
        return None
    return fp.read(length[0])


def _skip_blocks(fp: IO[bytes]) -> None:
    """Move past a run of data sub-blocks and its terminator (or to the end of the file)."""
    while length := fp.read(1):
        if length == b"\0":
            return
        fp.seek(length[0], 1)
