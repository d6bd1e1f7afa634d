"""Scopes end to end: JWTs through a real gateway, and the cache service's own checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import image_pb2

from common.caller import ANONYMOUS, SCOPES, Caller
from tests.support import (
    ROOT,
    ServiceProcess,
    failure,
    free_port,
    is_problem,
    png_bytes,
    upload,
    upload_requests,
)

SECRET = "jwt-secret-for-the-scope-tests-0123456789"
ALICE_KEY = "alice-key-0123456789"  # API keys and tokens side by side
PNG = {"Content-Type": "image/png"}


def token(owner: str, scope: str, expires_in: int = 300) -> dict[str, str]:
    claims = {"sub": owner, "scope": scope, "exp": int(time.time()) + expires_in}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@pytest.fixture(scope="module")
def http(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> Iterator[httpx.Client]:
    env = {"IMAGESVC_JWT_SECRET": SECRET, "IMAGESVC_API_KEYS": f"alice:{ALICE_KEY}"}
    gateway = stack(env, processor=processor_server)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


def made(http: httpx.Client, headers: dict[str, str], seed: int, query: str = "") -> str:
    response = http.post(
        f"/images{query}", content=png_bytes(6, 6, seed=seed), headers={**PNG, **headers}
    )
    assert response.status_code == 201, response.text
    image_id: str = response.json()["id"]
    return image_id


def test_uploads_need_the_write_scope(http: httpx.Client) -> None:
    png = png_bytes(6, 6, seed=81)
    for scope in ("images:read", "images:read images:delete", ""):
        body = is_problem(
            http.post("/images", content=png, headers={**PNG, **token("alice", scope)}), 403
        )
        assert body["type"] == "/problems/forbidden"
        assert body["detail"] == "this needs the images:write scope"
    is_problem(http.post("/images", content=png, headers=PNG), 401)
    written = http.post("/images", content=png, headers={**PNG, **token("alice", "images:write")})
    assert written.status_code == 201
    assert (written.json()["owner"], written.json()["visibility"]) == ("alice", "private")


def test_deletes_need_the_delete_scope(http: httpx.Client) -> None:
    image_id = made(http, token("alice", "images:write"), seed=82)
    path = f"/images/{image_id}"
    for scope in ("images:read images:write", "images:read"):
        body = is_problem(http.delete(path, headers=token("alice", scope)), 403)
        assert body["detail"] == "this needs the images:delete scope"
    assert http.get(path, headers=token("alice", "images:read")).status_code == 200
    is_problem(http.delete(path), 401)
    assert http.delete(path, headers=token("alice", "images:delete")).status_code == 204
    is_problem(http.get(path, headers=token("alice", "images:read")), 404)


def test_an_owner_deletes_their_own_images_only_and_an_admin_any(http: httpx.Client) -> None:
    private = made(http, token("bob", "images:write"), seed=83)
    public = made(http, token("bob", "images:write"), seed=84, query="?visibility=public")
    alice = token("alice", "images:read images:write images:delete")
    # Bob's private image does not exist for Alice; his public one is not hers to delete.
    is_problem(http.delete(f"/images/{private}", headers=alice), 404)
    body = is_problem(http.delete(f"/images/{public}", headers=alice), 403)
    assert body["detail"] == "only the owner may delete it"
    # images:admin reaches every owner's images with the caller's other scopes.
    reader = token("ops", "images:admin")
    body = is_problem(http.delete(f"/images/{private}", headers=reader), 403)
    assert body["detail"] == "this needs the images:delete scope"
    admin = token("ops", "images:admin images:delete")
    for image_id in (private, public):
        assert http.delete(f"/images/{image_id}", headers=admin).status_code == 204
        is_problem(http.get(f"/images/{image_id}", headers=admin), 404)


def test_a_token_for_one_owner_cannot_read_anothers_private_image(http: httpx.Client) -> None:
    private = made(http, token("bob", "images:write"), seed=85)
    alice = token("alice", "images:read images:write images:delete images:other")
    missing = "M" * 22
    for suffix in ("", "/info", "?w=3"):
        hidden = is_problem(http.get(f"/images/{private}{suffix}", headers=alice), 404)
        absent = is_problem(http.get(f"/images/{missing}{suffix}", headers=alice), 404)
        assert {k: v for k, v in hidden.items() if k != "instance"} == {
            k: v for k, v in absent.items() if k != "instance"
        }
    listed = http.get("/images?limit=100", headers=alice).json()["images"]
    assert private not in {image["id"] for image in listed}
    assert http.get(f"/images/{private}", headers=token("bob", "images:read")).status_code == 200
    assert http.get(f"/images/{private}", headers=token("ops", "images:admin")).status_code == 200


def test_reading_ones_own_private_images_needs_the_read_scope(http: httpx.Client) -> None:
    private = made(http, token("carol", "images:write"), seed=86)
    public = made(http, token("carol", "images:write"), seed=87, query="?visibility=public")
    reader, writer = token("carol", "images:read"), token("carol", "images:write")
    # The owner's read first puts the answers in the gateway's memory: a caller without
    # the scope must not be answered from there either.
    for suffix in ("", "/info", "?w=3"):
        assert http.get(f"/images/{private}{suffix}", headers=reader).status_code == 200
        assert http.get(f"/images/{private}{suffix}", headers=reader).status_code == 200
        body = is_problem(http.get(f"/images/{private}{suffix}", headers=writer), 403)
        assert body["detail"] == "reading a private image needs the images:read scope"
        # Public images are everyone's, a caller's without the scope too.
        assert http.get(f"/images/{public}{suffix}", headers=writer).status_code == 200
    is_problem(http.get("/images", headers=writer), 403)
    listed = http.get("/images", headers=reader).json()["images"]
    assert {private, public} <= {image["id"] for image in listed}


def test_a_token_that_does_not_verify_is_refused_never_anonymous(http: httpx.Client) -> None:
    public = made(http, token("dave", "images:write"), seed=88, query="?visibility=public")
    assert http.get(f"/images/{public}").status_code == 200  # anyone's, anonymously
    now = int(time.time())
    stale = jwt.encode({"sub": "dave", "exp": now - 120}, SECRET, algorithm="HS256")
    forged = jwt.encode({"sub": "dave", "exp": now + 300}, "x" * 40, algorithm="HS256")
    for bad, why in (
        (stale, "the token has expired"),
        (forged, "the token's signature does not verify"),
        ("not-a-key-nor-a-token", "the credential is neither an API key nor a token"),
    ):
        response = http.get(f"/images/{public}", headers={"Authorization": f"Bearer {bad}"})
        body = is_problem(response, 401)
        assert body["detail"] == why
        assert response.headers["www-authenticate"].startswith("Bearer")
    # An X-API-Key is a key or nothing: never read as a token.
    body = is_problem(http.get(f"/images/{public}", headers={"X-API-Key": stale}), 401)
    assert body["detail"] == "the API key is not valid"


def test_api_keys_still_work_beside_tokens(http: httpx.Client) -> None:
    image_id = made(http, {"Authorization": f"Bearer {ALICE_KEY}"}, seed=89)
    assert http.get(f"/images/{image_id}", headers=token("alice", "images:read")).status_code == 200
    assert http.delete(f"/images/{image_id}", headers={"X-API-Key": ALICE_KEY}).status_code == 204


def test_an_unreachable_jwks_is_503_not_401(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    gateway = stack({"IMAGESVC_JWT_JWKS": url}, processor=processor_server)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"sub": "alice", "exp": int(time.time()) + 300}
    signed = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k"})
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        response = http.get(f"/images/{'M' * 22}", headers={"Authorization": f"Bearer {signed}"})
        is_problem(response, 503)
        assert response.headers["retry-after"]
        is_problem(http.post("/images", content=png_bytes(4, 4), headers=PNG), 401)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"IMAGESVC_JWT_SECRET": "too-short-secret"}, b"IMAGESVC_JWT_SECRET"),
        ({"IMAGESVC_JWT_JWKS": "/nonexistent/jwks.json"}, b"IMAGESVC_JWT_JWKS"),
    ],
)
def test_bad_jwt_settings_stop_the_gateway(variables: dict[str, str], named: bytes) -> None:
    env = {**os.environ, "IMAGESVC_GATEWAY_PORT": "0", **variables}
    result = subprocess.run(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert result.returncode != 0
    assert named in result.stderr
    assert b"too-short-secret" not in result.stderr  # a secret is never printed


# --- the cache service's own checks ---------------------------------------------------


def put(stub: pb_grpc.CacheServiceStub, owner: str, caller: Caller | None, seed: int) -> Any:
    requests = upload_requests(png_bytes(5, 5, seed=seed), owner=owner)
    metadata = None if caller is None else caller.metadata()
    return stub.PutImage(requests, timeout=60, metadata=metadata)


def test_the_cache_stores_a_callers_images_as_their_own_only(
    stub: pb_grpc.CacheServiceStub,
) -> None:
    bob = Caller("bob", True)
    refused = failure(put, stub, "alice", bob, 90)
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    assert failure(put, stub, "", ANONYMOUS, 91).code == grpc.StatusCode.PERMISSION_DENIED
    assert put(stub, "bob", bob, 92).image.owner == "bob"
    assert put(stub, "alice", Caller("ops", True, SCOPES), 93).image.owner == "alice"
    assert put(stub, "alice", None, 94).image.owner == "alice"  # internal callers


def test_the_cache_deletes_a_callers_own_images_only(stub: pb_grpc.CacheServiceStub) -> None:
    def image(visibility: image_pb2.Visibility.ValueType, seed: int) -> str:
        return upload(stub, png_bytes(5, 5, seed=seed), owner="alice", visibility=visibility).id

    private, public = (
        image(image_pb2.VISIBILITY_PRIVATE, 95),
        image(image_pb2.VISIBILITY_PUBLIC, 96),
    )
    bob = Caller("bob", True).metadata()

    def delete(image_id: str, metadata: Any) -> Any:
        return stub.DeleteImage(pb.DeleteImageRequest(id=image_id), timeout=10, metadata=metadata)

    hidden = failure(delete, private, bob)
    missing = failure(delete, "M" * 22, bob)
    assert hidden.code == missing.code == grpc.StatusCode.NOT_FOUND
    assert (hidden.message, hidden.reason) == (missing.message, missing.reason)
    denied = failure(delete, public, bob)
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    anonymous = failure(delete, public, ANONYMOUS.metadata())
    assert anonymous.code == grpc.StatusCode.PERMISSION_DENIED
    for image_id in (private, public):  # refused, so still there
        assert stub.StatImage(pb.StatImageRequest(id=image_id)).image.id == image_id
    delete(private, Caller("alice", True).metadata())
    delete(public, Caller("ops", True, SCOPES).metadata())
    for image_id in (private, public):
        assert failure(stub.StatImage, pb.StatImageRequest(id=image_id)).code == (
            grpc.StatusCode.NOT_FOUND
        )
    internal = image(image_pb2.VISIBILITY_PRIVATE, 97)
    delete(internal, None)  # internal callers are not scoped
