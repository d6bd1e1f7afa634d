"""Placeholders of an upload: a BlurHash and a ThumbHash of its upright first frame.

Made from the frame validation has just decoded (a JPEG's at 1/8 scale), so an upload
is decoded once. A few milliseconds: the frame is first brought to at most
PRESHRINK_FACTOR x the placeholder's size by sampling (exact, cheap, whatever the
frame's size or mode), then made RGBA and resized properly. Making them never fails an
upload: an image no placeholder can be made of gets none. Images stored before
placeholders existed have none either (empty; the gateway says null): they are not
recomputed, since reading every old blob back is a backfill, not an upload's work.

Libraries (measured on 32-100 px thumbnails): blurhash-python (Wolt's binding of the
reference C encoder) takes 0.8 ms where the pure-Python `blurhash` takes 4-18 ms.
thash (a maintained, typed fork of `thumbhash`) with its numpy backend takes 0.2-2.5
ms; `thumbhash` 0.1.2 raises on any image with alpha (an operator-precedence bug) and
`thumbhash-python` pins Pillow below 11 (we need 11.3+) and pulls a CLI's
dependencies; fast-thumbhash (Rust) has one release and x86-64 wheels only. All of
them agree with the reference port to the last significant nibble. Altogether about
2 ms of CPU per upload (a 4000x3000 JPEG: its 1/8 draft, 500x375, is what is shown
here); a CMYK image with a large ICC profile spends some 50 ms building the transform.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import blurhash
import numpy
import thash
from PIL import Image, ImageCms, ImageMath

# ThumbHash's encoder takes at most 100x100 (its spec's input size).
THUMBHASH_BOX = 100
# BlurHash's components are a handful of cosines: 32 pixels a side are plenty.
BLURHASH_BOX = 32
# Along the long side / the short side; turned for a portrait image.
BLURHASH_COMPONENTS = (4, 3)
# Sampling (nearest) down to this many times the final size before resampling: a
# placeholder's few cosines cannot tell the difference, and it costs microseconds
# where a filter over a 12 Mpx frame costs tens of milliseconds.
PRESHRINK_FACTOR = 4
# Transparency is flattened onto this for BlurHash (which has no alpha), as renders
# into formats without alpha are by default.
BLURHASH_BACKGROUND = (255, 255, 255)
ORIENTATION = 0x0112  # the EXIF tag
_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
# Modes whose values may be averaged as they are (Pillow premultiplies alpha itself).
_BLENDABLE = frozenset({"RGB", "RGBA", "L", "LA", "CMYK"})
_WIDE_GREYS = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass(frozen=True)
class Placeholders:
    blurhash: str = ""
    thumbhash: bytes = b""
    # Why there are none, for the log; empty when there are.
    error: str = ""


def placeholders(frame: Image.Image) -> Placeholders:
    """The placeholders of a decoded frame (its EXIF orientation applied); never raises."""
    try:
        # Pillow's warnings are silenced once, at start (common.imaging.configure_pillow).
        rgba = upright_thumbnail(frame, THUMBHASH_BOX)
        # The pixels, not the image: thash's own Pillow path would apply the EXIF
        # orientation a second time.
        pixels = numpy.asarray(rgba).reshape(-1)
        thumb = bytes(thash.rgba_to_thumb_hash(rgba.width, rgba.height, pixels))
        return Placeholders(blurhash=_blurhash(rgba), thumbhash=thumb)
    except Exception as exc:
        return Placeholders(error=f"{type(exc).__name__}: {exc}")


def upright_thumbnail(frame: Image.Image, box: int) -> Image.Image:
    """frame as RGBA within box x box, aspect kept (at least 1 pixel a side), upright."""
    orientation = _orientation(frame)
    width, height = frame.size
    scale = min(box / width, box / height, 1.0)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    icc = frame.info.get("icc_profile")
    key = frame.info.get("transparency")
    coarse = (min(width, size[0] * PRESHRINK_FACTOR), min(height, size[1] * PRESHRINK_FACTOR))
    small = frame
    if coarse != frame.size:
        # Nearest: exact values, so palette indices and colour keys survive it.
        small = frame.resize(coarse, Image.Resampling.NEAREST)
    if small.mode in _BLENDABLE and key is None:
        # Resampled in its own mode (fewer channels, no alpha to premultiply), then
        # converted at the final size.
        if small.size != size:
            small = small.resize(size, Image.Resampling.BOX)
        rgba = _rgba(small, icc, key)
    else:
        rgba = _rgba(small, icc, key)
        if rgba.size != size:
            rgba = rgba.resize(size, Image.Resampling.BOX)
    for step in _TRANSPOSE.get(orientation, ()):
        rgba = rgba.transpose(step)
    return rgba


def _orientation(frame: Image.Image) -> int:
    """The EXIF orientation, 1 when absent or not one of the eight (as the renders read it)."""
    value = frame.getexif().get(ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _rgba(image: Image.Image, icc: object, key: object) -> Image.Image:
    """Any mode as RGBA: palettes and colour keys with their transparency, 16-bit grey
    scaled (not clipped), CMYK through its own profile where it has one."""
    mode = image.mode
    if mode == "RGBA":
        return image
    if mode in _WIDE_GREYS:
        scale = 1 / 256 if mode.startswith("I;16") or image.getextrema()[1] > 255 else 1  # type: ignore[operator]
        wide = image.convert("I")
        grey = wide.point(lambda v: v * scale).convert("L")
        if isinstance(key, int):
            alpha = ImageMath.lambda_eval(lambda e: (e["x"] != key) * 255, x=wide)
            grey.putalpha(alpha.convert("L"))
        return grey.convert("RGBA")
    if mode == "CMYK" and isinstance(icc, bytes):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            converted = None
        if converted is not None:
            return converted.convert("RGBA")
    if mode in ("RGBa", "La"):
        return image.convert("RGBA" if mode == "RGBa" else "LA").convert("RGBA")
    # Palettes (with tRNS), 1-bit, L/RGB with a colour key, LA, CMYK, YCbCr: Pillow's
    # own conversions keep the transparency Pillow read.
    return image.convert("RGBA")


def _blurhash(rgba: Image.Image) -> str:
    width, height = rgba.size
    scale = min(BLURHASH_BOX / width, BLURHASH_BOX / height, 1.0)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = rgba.resize(size, Image.Resampling.BOX) if size != rgba.size else rgba
    flat = Image.new("RGB", small.size, BLURHASH_BACKGROUND)
    flat.paste(small, mask=small.getchannel("A"))
    x, y = BLURHASH_COMPONENTS if width >= height else BLURHASH_COMPONENTS[::-1]
    # No more components than pixels along a side: a 1-pixel-high strip has one row.
    x, y = min(x, max(1, size[0])), min(y, max(1, size[1]))
    # encode() closes the image it is given: flat is ours alone.
    return str(blurhash.encode(flat, x, y))
