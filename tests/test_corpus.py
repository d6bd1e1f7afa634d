"""Every corpus file through the real cache service: valid ones round-trip, hostile ones don't."""

from __future__ import annotations

import contextlib
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc

from tests.support import (
    CORPUS,
    CorpusFile,
    ServiceProcess,
    corpus,
    download,
    expected_reasons,
    failure,
    native_messages,
    png_bytes,
    sha256,
    upload,
    upload_requests,
)

FILES = corpus()
VALID = [f for f in FILES if f.expected == "valid"]
REFUSED = [f for f in FILES if f.expected != "valid"]


def stored_files(data_dir: Path) -> set[Path]:
    return {p for p in (data_dir / "blobs").rglob("*") if p.is_file()}


@pytest.mark.parametrize("f", VALID, ids=lambda f: f.name)
def test_valid_file_round_trips_byte_identical(
    stub: pb_grpc.CacheServiceStub, f: CorpusFile
) -> None:
    data = f.path.read_bytes()
    meta = upload(stub, data, filename=f.path.name)
    assert meta.byte_size == len(data)
    assert meta.sha256 == sha256(data)
    assert meta.media_type.startswith("image/")
    if f.width:
        assert (meta.width, meta.height) == (f.width, f.height)
    got_meta, got = download(stub, meta.id)
    assert got == data
    assert got_meta == meta


@pytest.mark.parametrize("f", REFUSED, ids=lambda f: f.name)
def test_hostile_file_is_refused_and_leaves_nothing(
    stub: pb_grpc.CacheServiceStub, data_dir: Path, f: CorpusFile
) -> None:
    before = stored_files(data_dir)
    listed = stub.ListImages(pb.ListImagesRequest(page_size=1000)).images
    data = f.path.read_bytes()
    if "DISAGREES" in f.note and f.expected == "corrupt":
        # Pillow decodes these fully; accepting is allowed, refusing must say CORRUPT_IMAGE.
        try:
            meta = upload(stub, data)
        except grpc.RpcError:
            pass
        else:
            assert download(stub, meta.id)[1] == data
            return
    error = failure(stub.PutImage, upload_requests(data), timeout=30)
    assert error.reason in expected_reasons(f), (error.code, error.reason, error.message)
    assert error.code in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}
    assert stored_files(data_dir) == before
    assert stub.ListImages(pb.ListImagesRequest(page_size=1000)).images == listed


def test_native_library_messages_come_out_as_json_lines(
    stub: pb_grpc.CacheServiceStub, cache_server: ServiceProcess
) -> None:
    # libtiff prints to stderr about this fuzzed CCITT strip; the log stays JSON lines.
    data = (CORPUS / "pillow" / "crash-0da013a13571cc8eb457a39fee8db18f8a3c7127.tif").read_bytes()
    with contextlib.suppress(grpc.RpcError):  # Pillow decodes it in the end
        upload(stub, data)
    assert any("Fax4Decode" in message for message in native_messages(cache_server))


def test_service_keeps_serving_after_the_hostile_corpus(
    stub: pb_grpc.CacheServiceStub, cache_channel: grpc.Channel
) -> None:
    for f in REFUSED:
        try:
            upload(stub, f.path.read_bytes())
        except grpc.RpcError as exc:
            assert exc.code() != grpc.StatusCode.UNAVAILABLE
    health = health_pb2_grpc.HealthStub(cache_channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="imageservice.v1.CacheService"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    data = png_bytes(32, 32, seed=7)
    assert download(stub, upload(stub, data).id)[1] == data
