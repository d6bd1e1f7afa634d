"""The corpus through the processor: orientation, colour modes, animation, every valid file."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import processor_service_pb2 as ppb
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc
from PIL import Image, ImageChops, ImageStat

from common.errors import Reason
from tests.support import (
    CORPUS,
    ServiceProcess,
    bytes_requests,
    collect,
    corner,
    corpus,
    encode,
    expected_reasons,
    failure,
    marked,
    native_messages,
    open_image,
    process_request,
    upload,
)

FILES = corpus()
VALID = [f for f in FILES if f.expected == "valid"]
REFUSED = [f for f in FILES if f.expected != "valid"]
FORMATS = {
    ppb.OUTPUT_FORMAT_JPEG: "JPEG",
    ppb.OUTPUT_FORMAT_PNG: "PNG",
    ppb.OUTPUT_FORMAT_WEBP: "WEBP",
    ppb.OUTPUT_FORMAT_AVIF: "AVIF",
    ppb.OUTPUT_FORMAT_GIF: "GIF",
    ppb.OUTPUT_FORMAT_HEIC: "HEIF",
    ppb.OUTPUT_FORMAT_JXL: "JXL",
}
CONTAIN_300 = ppb.Operation(resize=ppb.Resize(width=300, height=300, fit=ppb.FIT_CONTAIN))


def frame_durations(image: Image.Image) -> list[int]:
    durations = []
    for i in range(getattr(image, "n_frames", 1)):
        image.seek(i)
        image.load()  # WebP sets the duration when the frame loads
        durations.append(int(image.info.get("duration", 0)))
    return durations


def process_stored(
    pstub: ppb_grpc.ProcessorServiceStub, image_id: str, *ops: ppb.Operation, **output: object
) -> Image.Image:
    _, data = collect(pstub.Process(process_request(image_id, *ops, **output), timeout=60))
    return open_image(data)


@pytest.mark.parametrize("f", VALID, ids=lambda f: f.name)
def test_every_valid_file_transforms_to_every_format(
    pstub: ppb_grpc.ProcessorServiceStub, f: object
) -> None:
    data = f.path.read_bytes()  # type: ignore[attr-defined]
    for fmt, pillow in FORMATS.items():
        meta, out = collect(pstub.ProcessBytes(bytes_requests(data, CONTAIN_300, format=fmt)))
        image = open_image(out)
        assert image.format == pillow
        assert max(image.size) <= 300 and (meta.width, meta.height) == image.size
        assert 0x0112 not in image.getexif()


TRIM_BOX_PAD = (
    ppb.Operation(trim=ppb.Trim()),
    ppb.Operation(
        resize=ppb.Resize(
            width=120, height=90, fit=ppb.FIT_PAD, background=ppb.Color(red=9, alpha=0)
        )
    ),
    ppb.Operation(pad=ppb.Pad(top=5, right=5, bottom=5, left=5)),
)


@pytest.mark.parametrize("f", VALID, ids=lambda f: f.name)
def test_every_valid_file_trims_and_pads_to_the_box(
    pstub: ppb_grpc.ProcessorServiceStub, f: object
) -> None:
    """Every mode a source comes in (palettes, 16-bit greys, CMYK, alpha, animations)
    through trim's comparison and the canvas pad and fit=pad draw on."""
    data = f.path.read_bytes()  # type: ignore[attr-defined]
    requests = bytes_requests(data, *TRIM_BOX_PAD, format=ppb.OUTPUT_FORMAT_PNG)
    meta, out = collect(pstub.ProcessBytes(requests))
    image = open_image(out)
    assert image.size == (meta.width, meta.height) == (130, 100)
    rgba = image.convert("RGBA")
    assert rgba.getpixel((0, 0)) == rgba.getpixel((129, 99)) == (255, 255, 255, 255)  # pad's
    # The letterbox's bands are transparent, on one axis at least, unless the (trimmed)
    # image is 4:3, as some photos are, and fills the box.
    bands = [rgba.getpixel(xy)[3] for xy in ((5, 50), (124, 50), (65, 5), (65, 94))]  # type: ignore[index]
    if image.mode == "RGB":
        with Image.open(f.path) as source:  # type: ignore[attr-defined]
            assert abs(source.width / source.height - 4 / 3) < 0.02, source.size
    else:
        assert image.mode == "RGBA" and 0 in bands, bands


@pytest.mark.parametrize("f", REFUSED, ids=lambda f: f.name)
def test_every_hostile_file_is_refused(pstub: ppb_grpc.ProcessorServiceStub, f: object) -> None:
    data = f.path.read_bytes()  # type: ignore[attr-defined]
    requests = bytes_requests(data, CONTAIN_300, format=ppb.OUTPUT_FORMAT_WEBP)
    if "DISAGREES" in f.note and f.expected == "corrupt":  # type: ignore[attr-defined]
        try:
            collect(pstub.ProcessBytes(requests, timeout=30))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        return
    error = failure(pstub.ProcessBytes, requests, timeout=30)
    assert error.reason in expected_reasons(f), (error.code, error.reason, error.message)  # type: ignore[arg-type]


def test_native_library_messages_come_out_as_json_lines(
    pstub: ppb_grpc.ProcessorServiceStub, processor_server: ServiceProcess
) -> None:
    # libtiff prints to stderr about this fuzzed CCITT strip; the log stays JSON lines.
    data = (CORPUS / "pillow" / "crash-0da013a13571cc8eb457a39fee8db18f8a3c7127.tif").read_bytes()
    with contextlib.suppress(grpc.RpcError):  # Pillow decodes it in the end
        collect(pstub.ProcessBytes(bytes_requests(data, CONTAIN_300), timeout=30))
    assert any("Fax4Decode" in message for message in native_messages(processor_server))


@pytest.mark.parametrize("keep", [False, True], ids=["strip", "keep"])
@pytest.mark.parametrize("kind", ["Landscape", "Portrait"])
def test_exif_orientations_all_come_out_upright(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub, kind: str, keep: bool
) -> None:
    outputs = []
    for n in range(1, 9):
        data = (CORPUS / "exif-orientation" / f"{kind}_{n}.jpg").read_bytes()
        image_id = upload(stub, data).id
        image = process_stored(
            pstub, image_id, CONTAIN_300, format=ppb.OUTPUT_FORMAT_PNG, keep_metadata=keep
        )
        # Kept EXIF describes the pixels as they are now: upright.
        assert image.getexif().get(0x0112) == (1 if keep else None), n
        outputs.append(image.convert("L"))
    reference = outputs[0]
    assert (reference.width > reference.height) == (kind == "Landscape")
    for n, image in enumerate(outputs[1:], start=2):
        assert image.size == reference.size, n
        # Same picture, same way up: only JPEG noise differs.
        diff = ImageStat.Stat(ImageChops.difference(image, reference)).mean[0]
        assert diff < 8, (n, diff)


@pytest.mark.parametrize(
    ("orientation", "where"),
    [(1, "tl"), (2, "tr"), (3, "br"), (4, "bl"), (5, "tl"), (6, "tr"), (7, "br"), (8, "bl")],
)
def test_orientation_moves_a_marked_corner(
    pstub: ppb_grpc.ProcessorServiceStub,
    stub: pb_grpc.CacheServiceStub,
    orientation: int,
    where: str,
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image_id = upload(stub, encode(marked(), "JPEG", exif=exif.tobytes(), quality=95)).id
    # Resize too, so the reduced-scale JPEG decode path is the one exercised.
    resize = ppb.Operation(resize=ppb.Resize(width=100, height=100))
    for keep in (False, True):
        image = process_stored(
            pstub, image_id, resize, format=ppb.OUTPUT_FORMAT_PNG, keep_metadata=keep
        )
        assert corner(image) == where, keep
        assert (image.width > image.height) == (orientation < 5), keep


@pytest.mark.parametrize(
    "name",
    [
        "pillow/pil_sample_cmyk.jpg",
        "metadata-extractor-images/cmyk_swop-icc-multi-app2.jpg",
        "pngsuite/basn0g16.png",
        "pngsuite/tbbn3p08.png",
        "pngsuite/basn4a08.png",
        "pillow/i_trns.png",
    ],
)
def test_colour_modes_convert_faithfully(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub, name: str
) -> None:
    source = Image.open(CORPUS / name)
    source.load()
    image_id = upload(stub, (CORPUS / name).read_bytes()).id
    has_alpha = source.mode in ("RGBA", "LA", "PA") or "transparency" in source.info
    png = process_stored(pstub, image_id, format=ppb.OUTPUT_FORMAT_PNG)
    assert png.size == source.size
    assert ("A" in png.mode) == has_alpha, (png.mode, source.mode)
    jpeg = process_stored(pstub, image_id, format=ppb.OUTPUT_FORMAT_JPEG)
    assert jpeg.mode in ("RGB", "L")
    for out in (png, jpeg):  # a profile, when kept, describes the pixels it comes with
        icc = out.info.get("icc_profile")
        if icc:
            assert icc[16:20] == (b"GRAY" if out.mode in ("L", "LA") else b"RGB "), name
    # Compare against Pillow's own 8-bit rendering of the source; 16-bit grey must be
    # scaled, not clipped to white.
    expected: Image.Image | None = None
    if source.mode.startswith("I"):
        expected = source.point(lambda v: v / 256).convert("L")
    else:
        expected = source.convert("RGBA").convert("L") if not has_alpha else None
    if expected is not None:
        delta = ImageStat.Stat(ImageChops.difference(png.convert("L"), expected)).mean[0]
        assert delta < 6, delta


def test_animation_survives_geometry_when_the_output_can_animate(
    pstub: ppb_grpc.ProcessorServiceStub, stub: pb_grpc.CacheServiceStub
) -> None:
    for name in ("pillow/iss634.gif", "pillow/iss634.webp"):
        source = Image.open(CORPUS / name)
        durations = frame_durations(source)
        image_id = upload(stub, (CORPUS / name).read_bytes()).id
        ops = [
            ppb.Operation(resize=ppb.Resize(width=80)),
            ppb.Operation(crop=ppb.Crop(left=10, top=10, width=150, height=150)),
            ppb.Operation(flip=ppb.Flip()),
            ppb.Operation(rotate=ppb.Rotate(angle=90)),
        ]
        for fmt in (ppb.OUTPUT_FORMAT_GIF, ppb.OUTPUT_FORMAT_WEBP):
            out = process_stored(pstub, image_id, *ops, format=fmt)
            assert getattr(out, "n_frames", 1) == len(durations), (name, fmt)
            assert frame_durations(out) == durations, (name, fmt)
        still = process_stored(pstub, image_id, *ops, format=ppb.OUTPUT_FORMAT_JPEG)
        assert getattr(still, "n_frames", 1) == 1


def test_animated_bytes_keep_their_frames(pstub: ppb_grpc.ProcessorServiceStub) -> None:
    data = (CORPUS / "pillow/iss634.apng").read_bytes()
    _, out = collect(pstub.ProcessBytes(bytes_requests(data, format=ppb.OUTPUT_FORMAT_WEBP)))
    source = Image.open(CORPUS / "pillow/iss634.apng")
    assert getattr(open_image(out), "n_frames", 1) == getattr(source, "n_frames", 1) > 1


def test_stored_image_not_found(pstub: ppb_grpc.ProcessorServiceStub) -> None:
    error = failure(pstub.Process, process_request("Q" * 22))
    assert error.reason == Reason.IMAGE_NOT_FOUND
