"""What fuzzing found (`make fuzz`, tests/test_properties.py with HYPOTHESIS_PROFILE=fuzz),
each made again here from the smallest input that shows it, in process."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from common.errors import Reason, ServiceError
from common.imaging import JXL_CONTAINER, SOURCE_FORMATS, SourceLimits, inspect
from gateway.params import Parameters
from gateway.problems import HTTPProblem
from processor import spec

INSPECT_LIMITS = SourceLimits(frozenset(SOURCE_FORMATS), 50_000_000, 1000, 500_000_000)


def tiff(*frames: Image.Image) -> bytes:
    out = io.BytesIO()
    frames[0].save(out, "TIFF", save_all=True, append_images=frames[1:])
    return out.getvalue()


# A TIFF directory entry of the ColorMap tag (320), little-endian, of SHORTs.
COLORMAP_ENTRY = b"\x40\x01\x03\x00"


def test_a_tiff_palette_frame_without_its_colour_map_is_corrupt() -> None:
    """Pillow raised KeyError, an upload's 500, for a later frame in palette mode whose
    ColorMap tag is missing. (A first frame so damaged was unidentified already; the
    renderer reads a TIFF's first frame only.)"""
    data = tiff(Image.new("RGB", (8, 8)), Image.new("P", (8, 8), 1))
    assert data.count(COLORMAP_ENTRY) == 1
    assert inspect(io.BytesIO(data), INSPECT_LIMITS).frames == 2  # whole, it is valid
    damaged = data.replace(COLORMAP_ENTRY, b"\x41\x01\x03\x00")  # now tag 321, unknown
    with pytest.raises(ServiceError) as refused:
        inspect(io.BytesIO(damaged), INSPECT_LIMITS)
    assert refused.value.reason == Reason.CORRUPT_IMAGE
    assert "320" in refused.value.message


def test_a_dds_of_a_pixel_format_pillow_lacks_is_unsupported() -> None:
    """Pillow's DDS plugin, asked about every upload that starts "DDS ", raised
    NotImplementedError (a 500) for pixel format flags it does not know; the bytes are
    an image of a kind we do not take."""
    header = struct.pack("<I", 124) + bytes(120)  # flags, sizes and pixel format all 0
    data = b"DDS " + header
    for damaged in (data, data + bytes(64)):
        with pytest.raises(ServiceError) as refused:
            inspect(io.BytesIO(damaged), INSPECT_LIMITS)
        assert refused.value.reason == Reason.UNSUPPORTED_MEDIA_TYPE
        assert "pixel format" in refused.value.message


def test_a_jpeg_xl_container_signature_off_by_a_byte_is_corrupt() -> None:
    """The JPEG XL plugin takes any file with "JXL" at offset 4; libjxl then raised
    RuntimeError for a signature not quite one (a 500), which was not recognised as the
    plugin's."""
    signature = bytearray(JXL_CONTAINER)
    signature[10] = 0x3A  # \x87 in the real one
    with pytest.raises(ServiceError) as refused:
        inspect(io.BytesIO(bytes(signature) + bytes(64)), INSPECT_LIMITS)
    assert refused.value.reason == Reason.CORRUPT_IMAGE


def test_a_dpr_that_rounds_past_the_limit_in_float32_is_refused_by_the_gateway() -> None:
    """2050 x 3.9963414634146344 is 8192.5 in double precision, which rounds to 8192 and
    passed; the contract carries dpr as a float32, 8192.500007 there, which the
    processor refused: a 400 from upstream for a query the gateway took."""
    limits = spec.RequestLimits(max_output_dimension=8192, max_blur_sigma=50.0)
    with pytest.raises(HTTPProblem) as refused:
        Parameters(limits).parse([("w", "2050"), ("dpr", "3.9963414634146344")], "")
    assert refused.value.extensions["parameter"] == "w"
