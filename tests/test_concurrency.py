"""Many clients at once against one real cache service."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc

from tests.support import download, png_bytes, sha256, upload


def test_fifty_parallel_uploads_and_reads_are_consistent(stub: pb_grpc.CacheServiceStub) -> None:
    shared = png_bytes(200, 200, noise=True)
    shared_id = upload(stub, shared).id
    owner = "parallel"

    def work(n: int) -> tuple[str, str]:
        data = png_bytes(64 + n, 64, seed=n)
        meta = upload(stub, data, owner=owner, filename=f"{n}.png")
        got_meta, got = download(stub, meta.id)
        assert got == data and got_meta.sha256 == sha256(data)
        assert download(stub, shared_id)[1] == shared
        return meta.id, sha256(data)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(work, range(50)))
    ids = {image_id for image_id, _ in results}
    assert len(ids) == 50
    listed = stub.ListImages(pb.ListImagesRequest(owner=owner, page_size=100)).images
    assert {m.id for m in listed} == ids
    assert {m.sha256 for m in listed} == {digest for _, digest in results}
