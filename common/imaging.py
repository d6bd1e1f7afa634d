"""Opening untrusted image bytes with Pillow: limits first, and every failure a ServiceError."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import pillow_heif
import pillow_jxl  # noqa: F401  (importing it registers the JPEG XL plugin, "JXL")
from PIL import GifImagePlugin, Image, ImageFile, UnidentifiedImageError

from common.errors import Reason, ServiceError

# The plugins for HEIC/HEIF (pillow-heif, "HEIF") and JPEG XL (pillow-jxl-plugin, "JXL"),
# registered here, once, for every service. Pillow's own plugins are loaded first, so
# Pillow's AVIF plugin is asked before pillow-heif about every ISO-BMFF file it may take
# (the libheif pillow-heif ships decodes HEVC only, not AV1). Thumbnails, depth and
# auxiliary images are never read.
Image.init()
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# Where Pillow's warnings come from: what it warns of (damaged EXIF, an image past
# MAX_IMAGE_PIXELS but under twice it) is read anyway or refused with our own words.
_PILLOW_MODULES = r"(PIL|pillow_heif|pillow_jxl|thash)(\.|$)"

# Pillow format names accepted for originals; MPO is the multi-picture JPEG cameras write.
SOURCE_FORMATS = (
    "JPEG",
    "MPO",
    "PNG",
    "GIF",
    "WEBP",
    "AVIF",
    "TIFF",
    "BMP",
    "ICO",
    "HEIF",
    "JXL",
)

# A stored original's media type, by Pillow format (processor.pipeline has a render's).
SOURCE_MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "AVIF": "image/avif",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
    "ICO": "image/vnd.microsoft.icon",
    # A HEIF file says which of image/heic, image/heif (and their -sequence kinds) it
    # is by its brand: see media_type().
    "HEIF": "image/heif",
    "JXL": "image/jxl",
}
HEIF_MEDIA_TYPES = frozenset(
    {"image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"}
)


def configure_pillow(limits: SourceLimits) -> None:
    """Set Pillow's process-wide settings; each service that decodes calls it once, at
    start, before any worker thread exists (they are module globals every thread reads)."""
    # Pillow raises DecompressionBombError above twice this: the backstop behind
    # open_checked's exact check, for sizes learnt mid-decode (a GIF frame that grows
    # the canvas).
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    # Decoding is how corruption is found, so a truncated file must fail, never be padded.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # Pillow's default turns every GIF frame after the first into RGB at the whole
    # canvas's size: a 7000x7000 GIF then holds some 440 MB and converts the canvas once
    # per frame, however small its frames. Kept in palette mode (RGB only when a frame
    # brings its own palette), the canvas is one byte a pixel and a frame costs its own
    # pixels: validating such a GIF went from 1.1 s and 373 MB to 0.1 s and the one
    # canvas. Validation and rendering read GIFs the same way.
    GifImagePlugin.LOADING_STRATEGY = (
        GifImagePlugin.LoadingStrategy.RGB_AFTER_DIFFERENT_PALETTE_ONLY
    )
    # A line on stderr per upload would be noise (and reach the log, see jsonlog). A
    # filter set once, not warnings.catch_warnings() around each decode: that swaps the
    # process's filters, which threads decoding at the same time would race on.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", module=_PILLOW_MODULES)


def media_type(image: Image.Image) -> str:
    """The media type of an opened source: by format, and for HEIF by its brand."""
    fmt = image.format or ""
    if fmt == "HEIF":
        told = image.get_format_mimetype() if isinstance(image, ImageFile.ImageFile) else None
        return told if told in HEIF_MEDIA_TYPES else SOURCE_MEDIA_TYPES[fmt]
    return SOURCE_MEDIA_TYPES[fmt]


def image_too_large(message: str) -> ServiceError:
    return ServiceError(Reason.IMAGE_TOO_LARGE, message)


def corrupt(message: str) -> ServiceError:
    return ServiceError(Reason.CORRUPT_IMAGE, message)


# ISO-BMFF brands of the images the AVIF and HEIF plugins read: a file that says it is
# one of these and does not open is damaged.
IMAGE_BRANDS = frozenset(b"avif avis mif1 msf1 heic heix heim heis hevc hevx hevm hevs".split())


def _is_iso_media(fp: IO[bytes]) -> bool:
    # ISO-BMFF files Pillow cannot identify that are not images of a brand we read
    # (video, JPEG 2000 in a box...) are a format we do not take, not damaged data.
    fp.seek(0)
    head = fp.read(12)
    return head[4:8] == b"ftyp" and head[8:12] not in IMAGE_BRANDS


def _from_plugin(fp: IO[bytes]) -> bool:
    """Whether fp holds HEIF or JPEG XL, whose plugins report bad data as RuntimeError."""
    fp.seek(0)
    head = fp.read(12)
    # The JPEG XL plugin also takes any file with "JXL" where a container's first box
    # type goes (found by `make fuzz`): libjxl then refuses what is not a signature.
    jxl = _is_jxl(head) or head[4:7] == b"JXL"
    return (head[4:8] == b"ftyp" and head[8:12] in IMAGE_BRANDS) or jxl


@contextmanager
def decoding_errors(fp: IO[bytes], max_pixels: int) -> Iterator[None]:
    """Turn whatever Pillow raises while reading fp into the matching ServiceError.

    max_pixels is the limit open_checked was given: Pillow's own refusal names its
    threshold (twice ours), and a caller must read the limit we configured.
    """
    try:
        yield
    except ServiceError:
        raise
    except Image.DecompressionBombError:
        raise image_too_large(f"the image exceeds the limit of {max_pixels} pixels") from None
    except UnidentifiedImageError:
        if _is_iso_media(fp):
            raise ServiceError(
                Reason.UNSUPPORTED_MEDIA_TYPE, "this image format is not supported"
            ) from None
        raise corrupt("the data is not a decodable image") from None
    except ValueError as exc:
        if "too large" in str(exc):
            # Pillow's guard against zlib bombs in PNG text chunks (MAX_TEXT_CHUNK).
            raise image_too_large(f"the image holds too much compressed data: {exc}") from None
        raise corrupt(f"the image data is corrupt: {exc}") from None
    except (OSError, SyntaxError, TypeError, IndexError, EOFError, struct.error) as exc:
        # Pillow reports damaged data through all of these; the text helps the caller.
        raise corrupt(f"the image data is corrupt: {exc}") from None
    except KeyError as exc:
        # A tag the data needs and lacks (a TIFF palette frame with no ColorMap, found
        # by `make fuzz`): Pillow looks it up without asking first.
        raise corrupt(f"the image data is corrupt: it lacks {exc}") from None
    except MemoryError:
        raise image_too_large("the image needs too much memory to decode") from None
    except NotImplementedError as exc:
        # A plugin meeting a variant of its format it cannot read (a DDS pixel format
        # Pillow lacks, found by `make fuzz`), asked before the format is known to be
        # one we take. Before RuntimeError, its base class.
        raise ServiceError(
            Reason.UNSUPPORTED_MEDIA_TYPE, f"this image's coding is not supported: {exc}"
        ) from None
    except RuntimeError as exc:
        # libheif and libjxl: data they cannot decode, or a coding (AV1 in a file
        # labelled HEIC) this build does not carry. Anything else is our bug.
        if not _from_plugin(fp):
            raise
        if "has not been built in" in str(exc):
            raise ServiceError(
                Reason.UNSUPPORTED_MEDIA_TYPE, f"this image's coding is not supported: {exc}"
            ) from None
        raise corrupt(f"the image data is corrupt: {exc}") from None


# Pillow feeds decoders 64 KiB at a time; every call gives the GIL back and has to win it
# again, which under load costs more than the decoding (measured: cold renders went from
# 0.82x to 0.95x of a Pillow process pool's throughput). The data is in memory or in a
# local file already, so hand it over in one go.
DECODE_BLOCK = 64 * 1024 * 1024


def fast_decode(image: Image.Image) -> None:
    """Let load() pass the decoder up to DECODE_BLOCK bytes per call."""
    if isinstance(image, ImageFile.ImageFile):
        image.decodermaxblock = max(image.decodermaxblock, DECODE_BLOCK)


# Formats whose frame count Pillow reads from the header at open: APNG's acTL, the WebP
# and AVIF containers, MPO's index. For GIF and TIFF n_frames scans the whole file, so
# their frames are counted as they are decoded.
# HEIF lists its images in its header; the JPEG XL plugin reads one frame.
FRAMES_IN_HEADER = frozenset({"PNG", "WEBP", "AVIF", "MPO", "HEIF", "JXL"})
# The long side, in pixels, below which a JPEG is not reduced while it is validated.
FIRST_FRAME_SIDE = 100


def declared_pixels(image: Image.Image) -> int:
    """Width x height x frames, as far as the header tells (one frame where it does not)."""
    frames = getattr(image, "n_frames", 1) if image.format in FRAMES_IN_HEADER else 1
    return image.size[0] * image.size[1] * frames


def too_many_pixels(max_total_pixels: int) -> ServiceError:
    return image_too_large(f"the frames together exceed the limit of {max_total_pixels} pixels")


def open_checked(
    fp: IO[bytes], allowed_formats: frozenset[str], max_pixels: int, max_total_pixels: int
) -> Image.Image:
    """Image.open plus the checks that must come before any pixel is decoded.

    Call inside decoding_errors(fp, max_pixels). The exact pixel limit is checked here;
    Pillow's own check (configure_pillow) is the backstop for sizes learnt mid-decode.
    An animation whose header tells its frame count is held to max_total_pixels here;
    others are held to it frame by frame as they are decoded.
    """
    fp.seek(0)
    head = fp.read(12)
    fp.seek(0)
    if _is_jxl(head):
        # The JPEG XL plugin decodes every pixel as it opens: judge the header first.
        _check_jxl(fp, allowed_formats, max_pixels)
    image = Image.open(fp)
    fmt = image.format or ""
    if fmt not in allowed_formats:
        image.close()
        raise ServiceError(
            Reason.UNSUPPORTED_MEDIA_TYPE,
            f"format {fmt or 'unknown'} is not accepted",
            {"format": fmt},
        )
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise corrupt("the image has no pixels")
    if width * height > max_pixels:
        image.close()
        raise image_too_large(f"{width}x{height} exceeds the limit of {max_pixels} pixels")
    if declared_pixels(image) > max_total_pixels:
        image.close()
        raise too_many_pixels(max_total_pixels)
    return image


@dataclass(frozen=True)
class SourceLimits:
    """What an image may hold to be stored (the cache) or decoded (the processor)."""

    allowed_formats: frozenset[str]
    max_pixels: int  # of the image, and of each frame
    max_frames: int
    max_total_pixels: int  # of all frames together


@dataclass(frozen=True)
class ImageInfo:
    format: str
    media_type: str
    width: int
    height: int
    frames: int


class OverBudget(Exception):
    """The image holds more pixels than the caller's budget: not a fault of the image."""


def inspect(
    fp: IO[bytes],
    limits: SourceLimits,
    budget: int | None = None,
    first_frame: Callable[[Image.Image], None] | None = None,
) -> ImageInfo:
    """Open and fully decode every frame; raise ServiceError saying why it is refused.

    Header checks come first (format, pixel count) so a bomb is refused before any
    large allocation; then each frame is decoded, which is what finds truncation.
    With a budget, OverBudget is raised instead of decoding more pixels than it: from
    the header when it tells, else as soon as the frames decoded pass it.
    first_frame, if given, is shown the first frame once it is decoded (a JPEG's
    reduced, see _decode_all), so that what else is made of it (placeholders) costs no
    second decode. It must not change the image, nor raise: what it raises fails the
    inspection as a decoding error would.
    """
    with decoding_errors(fp, limits.max_pixels):
        with _open(fp, limits) as image:
            fmt = image.format
            if budget is not None and declared_pixels(image) > budget:
                raise OverBudget
            if fmt == "PNG":
                # Pillow streams IDAT without checking CRCs; verify() checks every
                # chunk's CRC, and needs a fresh open afterwards to decode.
                image.verify()
        fp.seek(0)
        with _open(fp, limits) as image:
            return _decode_all(image, _Frames(limits, budget), first_frame)


def _open(fp: IO[bytes], limits: SourceLimits) -> Image.Image:
    return open_checked(fp, limits.allowed_formats, limits.max_pixels, limits.max_total_pixels)


class _Frames:
    """The frames met so far, held to the limits before each is decoded.

    Frames are walked one by one, never counted up front: a frame flood, or frames that
    together hold too many pixels, are refused as soon as the count passes the limit
    instead of after scanning the whole file. A frame counts at its canvas's size, as a
    renderer composites it.
    """

    def __init__(self, limits: SourceLimits, budget: int | None) -> None:
        self.limits = limits
        self.budget = budget
        self.count = 0
        self.pixels = 0

    def next(self, canvas: tuple[int, int]) -> None:
        limits = self.limits
        self.count += 1
        if self.count > limits.max_frames:
            raise image_too_large(f"more than {limits.max_frames} frames")
        if canvas[0] * canvas[1] > limits.max_pixels:
            raise image_too_large(f"a frame exceeds the limit of {limits.max_pixels} pixels")
        self.pixels += canvas[0] * canvas[1]
        if self.pixels > limits.max_total_pixels:
            raise too_many_pixels(limits.max_total_pixels)
        if self.budget is not None and self.pixels > self.budget:
            raise OverBudget


def _decode_all(
    image: Image.Image, frames: _Frames, first_frame: Callable[[Image.Image], None] | None
) -> ImageInfo:
    fmt = image.format or ""
    width, height = image.size
    if image.tell() != 0:
        image.seek(0)  # a HEIF file opens at its primary image, which need not be the first
    while True:
        frames.next(image.size)
        if fmt == "JPEG":
            # Decoding at reduced scale still reads every byte of entropy-coded data,
            # so truncation is found at a fraction of the cost. (Not for MPO: draft
            # breaks seeking to its second picture.) At most 1/8, and never below
            # FIRST_FRAME_SIDE on the long side, so that the frame first_frame sees
            # still makes a placeholder: only images under 800 px decode larger.
            scale = max(1 / 8, min(1.0, FIRST_FRAME_SIDE / max(width, height)))
            image.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
        fast_decode(image)
        image.load()
        if frames.count == 1 and first_frame is not None:
            first_frame(image)
        try:
            image.seek(frames.count)
        except EOFError:
            break
    return ImageInfo(fmt, media_type(image), width, height, frames.count)


# JPEG XL: a bare codestream, or one inside ISO-BMFF boxes (jxlc, or jxlp parts).
JXL_CODESTREAM = b"\xff\x0a"
JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \x0d\x0a\x87\x0a"
# SizeHeader's ratio field: width = height * numerator // denominator.
JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}
JXL_HEAD_BYTES = 64 * 1024  # where boxes before the codestream (Exif, XMP) may push it


def _is_jxl(head: bytes) -> bool:
    return head[:2] == JXL_CODESTREAM or head[:12] == JXL_CONTAINER


def _check_jxl(fp: IO[bytes], allowed_formats: frozenset[str], max_pixels: int) -> None:
    if "JXL" not in allowed_formats:
        raise ServiceError(
            Reason.UNSUPPORTED_MEDIA_TYPE, "format JXL is not accepted", {"format": "JXL"}
        )
    size = jxl_size(fp.read(JXL_HEAD_BYTES))
    fp.seek(0)
    if size is None:
        raise corrupt("the JPEG XL header is damaged or missing")
    width, height = size
    if width * height > max_pixels:
        raise image_too_large(f"{width}x{height} exceeds the limit of {max_pixels} pixels")


def jxl_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG XL file's SizeHeader (as stored, before orientation),
    or None when head holds no readable one."""
    stream = _jxl_codestream(head)
    if stream is None or stream[:2] != JXL_CODESTREAM:
        return None
    bits = _Bits(stream[2:])
    try:
        small = bits.read(1)
        height = (bits.read(5) + 1) * 8 if small else bits.u32()
        ratio = bits.read(3)
        if ratio:
            numerator, denominator = JXL_RATIOS[ratio]
            width = height * numerator // denominator
        else:
            width = (bits.read(5) + 1) * 8 if small else bits.u32()
    except IndexError:
        return None
    return width, height


def _jxl_codestream(head: bytes) -> bytes | None:
    if head[:2] == JXL_CODESTREAM:
        return head
    pos = len(JXL_CONTAINER)
    while pos + 8 <= len(head):
        size, kind = struct.unpack(">I4s", head[pos : pos + 8])
        start = pos + 8
        if size == 1:
            if pos + 16 > len(head):
                return None
            size = struct.unpack(">Q", head[pos + 8 : pos + 16])[0]
            start = pos + 16
        elif size == 0:
            size = len(head) - pos
        if kind == b"jxlc":
            return head[start : pos + size]
        if kind == b"jxlp":
            return head[start + 4 : pos + size]  # after the part's index
        if size < start - pos:
            return None
        pos += size
    return None


class _Bits:
    """JPEG XL's bit reader: least significant bit first."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, count: int) -> int:
        value = 0
        for i in range(count):
            byte = self.data[self.pos >> 3]
            value |= ((byte >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def u32(self) -> int:
        """SizeHeader's U32(1 + u(9), 1 + u(13), 1 + u(18), 1 + u(30))."""
        return self.read((9, 13, 18, 30)[self.read(2)]) + 1
