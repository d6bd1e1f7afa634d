"""The cache service's RPCs over a real channel: metadata, listing, errors, limits, health."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import image_pb2

from common.errors import Reason
from tests.support import (
    CHUNK,
    download,
    failure,
    png_bytes,
    sha256,
    upload,
    upload_requests,
)


def test_metadata_describes_the_decoded_image(stub: pb_grpc.CacheServiceStub) -> None:
    data = png_bytes(123, 45, seed=1)
    before = time.time()
    meta = upload(
        stub, data, filename="cat.jpg", owner="alice", visibility=image_pb2.VISIBILITY_PUBLIC
    )
    assert len(meta.id) == 22
    # The name says JPEG; the bytes are PNG, and the bytes decide.
    assert (meta.format, meta.media_type) == ("PNG", "image/png")
    assert (meta.width, meta.height, meta.frames) == (123, 45, 1)
    assert (meta.original_filename, meta.owner) == ("cat.jpg", "alice")
    assert meta.visibility == image_pb2.VISIBILITY_PUBLIC
    assert meta.byte_size == len(data) and meta.sha256 == sha256(data)
    assert before - 1 <= meta.created_time.ToSeconds() <= time.time() + 1
    assert stub.StatImage(pb.StatImageRequest(id=meta.id)).image == meta


def test_visibility_defaults_to_private(stub: pb_grpc.CacheServiceStub) -> None:
    meta = upload(stub, png_bytes(4, 4), visibility=image_pb2.VISIBILITY_UNSPECIFIED)
    assert meta.visibility == image_pb2.VISIBILITY_PRIVATE


def test_images_larger_than_grpc_default_message_size_round_trip(
    stub: pb_grpc.CacheServiceStub,
) -> None:
    data = png_bytes(2000, 2000, noise=True)  # ~12 MB, three times gRPC's 4 MB default
    assert len(data) > 10 * 1024 * 1024
    meta = upload(stub, data)
    assert download(stub, meta.id)[1] == data


def test_list_is_per_owner_newest_first_with_page_tokens(stub: pb_grpc.CacheServiceStub) -> None:
    owner = "lister-" + str(time.time_ns())
    ids = [upload(stub, png_bytes(8, 8, seed=i), owner=owner).id for i in range(7)]
    upload(stub, png_bytes(8, 8, seed=99), owner="someone-else")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = stub.ListImages(pb.ListImagesRequest(owner=owner, page_size=3, page_token=token))
        seen += [m.id for m in page.images]
        assert all(m.owner == owner for m in page.images)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    assert pages == 3


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListImagesRequest(page_size=1001), "page_size"),
        (pb.ListImagesRequest(page_size=-1), "page_size"),
        (pb.ListImagesRequest(page_token="not-a-token!"), "page_token"),
        (pb.ListImagesRequest(owner="x" * 129), "owner"),
    ],
)
def test_bad_list_requests_name_the_field(
    stub: pb_grpc.CacheServiceStub, request_: pb.ListImagesRequest, field: str
) -> None:
    error = failure(stub.ListImages, request_)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.metadata["field"]) == (Reason.INVALID_ARGUMENT, field)


@pytest.mark.parametrize(
    "bad_id", ["", "short", "../../../../etc/passwd", "a" * 21 + "/", "é" * 22]
)
def test_bad_ids_are_invalid_arguments(stub: pb_grpc.CacheServiceStub, bad_id: str) -> None:
    for call, request_ in [
        (stub.StatImage, pb.StatImageRequest(id=bad_id)),
        (stub.GetImage, pb.GetImageRequest(id=bad_id)),
        (stub.DeleteImage, pb.DeleteImageRequest(id=bad_id)),
        (stub.GetVariant, pb.GetVariantRequest(image_id=bad_id, key="k")),
    ]:
        error = failure(call, request_)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, call
        assert error.reason == Reason.INVALID_ARGUMENT


def test_unknown_ids_are_not_found(stub: pb_grpc.CacheServiceStub) -> None:
    missing = "A" * 22
    for call, request_ in [
        (stub.StatImage, pb.StatImageRequest(id=missing)),
        (stub.GetImage, pb.GetImageRequest(id=missing)),
        (stub.DeleteImage, pb.DeleteImageRequest(id=missing)),
    ]:
        error = failure(call, request_)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, Reason.IMAGE_NOT_FOUND)


def test_delete_removes_image_and_blob(stub: pb_grpc.CacheServiceStub, data_dir: Path) -> None:
    meta = upload(stub, png_bytes(10, 10, seed=5))
    blob = data_dir / "blobs" / meta.id[:2] / meta.id[2:4] / meta.id
    assert blob.is_file()
    stub.DeleteImage(pb.DeleteImageRequest(id=meta.id))
    assert not blob.exists()
    assert (
        failure(stub.StatImage, pb.StatImageRequest(id=meta.id)).code == grpc.StatusCode.NOT_FOUND
    )
    assert (
        failure(stub.DeleteImage, pb.DeleteImageRequest(id=meta.id)).reason
        == Reason.IMAGE_NOT_FOUND
    )


def test_malformed_upload_streams(stub: pb_grpc.CacheServiceStub) -> None:
    def chunk_first() -> Iterator[pb.PutImageRequest]:
        yield pb.PutImageRequest(chunk=b"abc")

    def two_headers() -> Iterator[pb.PutImageRequest]:
        yield pb.PutImageRequest(header=pb.PutImageHeader())
        yield pb.PutImageRequest(header=pb.PutImageHeader())

    def empty() -> Iterator[pb.PutImageRequest]:
        yield pb.PutImageRequest(header=pb.PutImageHeader())

    def long_name() -> Iterator[pb.PutImageRequest]:
        yield pb.PutImageRequest(header=pb.PutImageHeader(original_filename="n" * 256))

    for stream in (chunk_first(), two_headers(), empty(), long_name(), iter(())):
        error = failure(stub.PutImage, stream)
        assert (error.code, error.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_ARGUMENT,
        )


def test_non_image_bytes_are_refused(stub: pb_grpc.CacheServiceStub) -> None:
    error = failure(stub.PutImage, upload_requests(b"<?php system($_GET['c']); ?>" * 10))
    assert error.reason == Reason.CORRUPT_IMAGE


def test_upload_over_the_byte_limit_is_refused_as_it_passes(
    stub: pb_grpc.CacheServiceStub, data_dir: Path
) -> None:
    limit = 50 * 1024 * 1024
    sent = 0

    def requests() -> Iterator[pb.PutImageRequest]:
        nonlocal sent
        yield pb.PutImageRequest(header=pb.PutImageHeader())
        while sent < 2 * limit:
            sent += CHUNK
            yield pb.PutImageRequest(chunk=b"\0" * CHUNK)

    error = failure(stub.PutImage, requests(), timeout=60)
    assert error.code == grpc.StatusCode.OUT_OF_RANGE
    assert (error.reason, error.metadata["limit"]) == (Reason.PAYLOAD_TOO_LARGE, str(limit))
    assert sent < 2 * limit  # refused before the client could send it all
    assert not list((data_dir / "blobs" / "tmp").iterdir())


def test_health_and_reflection(cache_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(cache_channel)
    for service in ("", "imageservice.v1.CacheService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(cache_channel)
    answers = list(
        reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"imageservice.v1.CacheService", "grpc.health.v1.Health"} <= names
    request_ = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="imageservice.v1.CacheService"
    )
    answer = next(iter(reflect.ServerReflectionInfo(iter([request_]))))
    proto = descriptor_pb2.FileDescriptorProto.FromString(
        answer.file_descriptor_response.file_descriptor_proto[0]
    )
    assert proto.package == "imageservice.v1"


def test_ids_and_keys_with_a_trailing_newline_are_refused(stub: pb_grpc.CacheServiceStub) -> None:
    image_id = upload(stub, png_bytes(4, 4, seed=77)).id
    error = failure(stub.StatImage, pb.StatImageRequest(id=image_id + "\n"))
    assert error.reason == Reason.INVALID_ARGUMENT
    error = failure(stub.GetVariant, pb.GetVariantRequest(image_id=image_id, key="abc\n"))
    assert error.metadata["field"] == "key"
