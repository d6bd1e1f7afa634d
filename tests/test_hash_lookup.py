"""GET /images?sha256=: a lookup by content, scoped as any listing (issue 15)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import grpc
import httpx
import pytest
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc

from tests.support import ServiceProcess, is_problem, png_bytes

ALICE = "alice-key-lookup-0123456789"
BOB = "bob-key-lookup-0123456789"
OPS = "ops-key-lookup-0123456789"
API_KEYS = f"alice:{ALICE},bob:{BOB},ops:{OPS}:admin"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(http: httpx.Client, data: bytes, key: str, query: str = "") -> str:
    headers = {"Content-Type": "image/png", **bearer(key)}
    made = http.post(f"/images{query}", content=data, headers=headers)
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


@pytest.fixture(scope="module")
def keyed(stack: Callable[..., ServiceProcess], processor_server: ServiceProcess) -> ServiceProcess:
    return stack({"IMAGESVC_API_KEYS": API_KEYS}, processor=processor_server)


def test_lookup_finds_the_callers_own_images_of_those_bytes_only(keyed: ServiceProcess) -> None:
    data = png_bytes(8, 8, noise=True)  # bytes no other test stores
    digest = hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        mine = [upload(http, data, ALICE) for _ in range(3)]
        upload(http, png_bytes(8, 8, noise=True), ALICE)  # other bytes
        public = upload(http, data, BOB, "?visibility=public")  # bob's, even public
        got = http.get("/images", params={"sha256": digest}, headers=bearer(ALICE))
        assert got.status_code == 200, got.text
        found = got.json()
        assert [image["id"] for image in found["images"]] == mine[::-1]
        assert {image["sha256"] for image in found["images"]} == {digest}
        # Paged as any listing; the next link keeps the filter.
        first = http.get(f"/images?sha256={digest}&limit=2", headers=bearer(ALICE))
        assert [i["id"] for i in first.json()["images"]] == mine[:0:-1]
        link = first.headers["link"]
        assert f"sha256={digest}" in link
        rest = http.get(link[1 : link.index(">")], headers=bearer(ALICE)).json()
        assert [i["id"] for i in rest["images"]] == mine[:1] and rest["next_cursor"] is None
        # Bob finds his own; nobody learns of the others' (public or not).
        bobs = http.get("/images", params={"sha256": digest}, headers=bearer(BOB)).json()
        assert [i["id"] for i in bobs["images"]] == [public]
        nobody = http.get("/images", params={"sha256": "0" * 64}, headers=bearer(ALICE))
        assert nobody.json() == {"images": [], "next_cursor": None}


@pytest.mark.parametrize("value", ["", "ab", "A" * 64, "g" * 64, "a" * 65])
def test_a_sha256_of_another_shape_is_a_400_naming_it(http: httpx.Client, value: str) -> None:
    body = is_problem(http.get("/images", params={"sha256": value}), 400)
    assert body["parameter"] == "sha256"


def test_the_cache_service_refuses_a_malformed_hash(stub: pb_grpc.CacheServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListImages(pb.ListImagesRequest(sha256="XYZ"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_openapi_states_the_parameter(http: httpx.Client) -> None:
    listing = http.get("/openapi.json").json()["paths"]["/images"]["get"]
    (param,) = [p for p in listing["parameters"] if p["name"] == "sha256"]
    assert param["schema"]["pattern"] == "^[0-9a-f]{64}$"
