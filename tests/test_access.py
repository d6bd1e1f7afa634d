"""Who may do what: API keys, admins, and private images that read as missing ones."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import image_pb2

from common.caller import OWN_SCOPES, SCOPES, Caller
from common.env import ConfigError, Env
from gateway.config import ApiKey, Settings
from tests.support import (
    ALICE,
    BOB,
    KEYS,
    OPS,
    ROOT,
    ServiceProcess,
    bearer,
    failure,
    is_problem,
    paired_ratio,
    png_bytes,
    upload,
)


def test_a_key_given_to_two_owners_stops_the_gateway(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "IMAGESVC_GATEWAY_PORT": "0",  # whatever else runs on this machine
        "IMAGESVC_API_KEYS": f"alice:{ALICE},bob:{ALICE}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert result.returncode != 0
    assert b"IMAGESVC_API_KEYS gives one key to both alice and bob" in result.stderr
    assert ALICE.encode() not in result.stderr  # a secret is never printed


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (f"alice:{ALICE},alice:{ALICE}", "lists a key of alice twice"),
        ("alice:short", "keys of 16 or more characters"),
        (f"alice:{ALICE}:root", "owner:key:admin"),
        (f":{ALICE}", "owner:key"),
    ],
)
def test_bad_api_keys_are_refused(keys: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(Env({"IMAGESVC_API_KEYS": keys}))


def test_api_keys_name_their_owner_and_admins() -> None:
    keys = Settings.from_env(Env({"IMAGESVC_API_KEYS": KEYS})).api_keys
    assert keys == {
        ALICE: ApiKey("alice", OWN_SCOPES),
        BOB: ApiKey("bob", OWN_SCOPES),
        OPS: ApiKey("ops", SCOPES),
    }


def test_an_admin_key_may_delete_any_image(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> None:
    open_door = stack(processor=processor_server)  # before keys were configured
    keyed = stack({"IMAGESVC_API_KEYS": KEYS}, processor=processor_server)
    png = png_bytes(6, 6, seed=71)
    with httpx.Client(base_url=open_door.url, timeout=30) as http:
        ownerless = http.post("/images", content=png, headers={"Content-Type": "image/png"})
        assert ownerless.json()["owner"] == ""
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        path = f"/images/{ownerless.json()['id']}"
        is_problem(http.delete(path), 401)
        is_problem(http.delete(path, headers=bearer(ALICE)), 403)
        private = http.post(
            "/images", content=png, headers={"Content-Type": "image/png", **bearer(ALICE)}
        ).json()
        assert http.get(f"/images/{private['id']}", headers=bearer(OPS)).status_code == 200
        for image_path in (path, f"/images/{private['id']}"):
            assert http.delete(image_path, headers=bearer(OPS)).status_code == 204
            is_problem(http.get(image_path, headers=bearer(OPS)), 404)


def test_an_image_without_an_owner_is_no_anonymous_callers_own(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> None:
    # Private and ownerless (uploaded before keys were configured): with keys, only an
    # admin sees it. An anonymous caller owns nothing, not even what no one owns.
    open_door = stack(processor=processor_server)
    keyed = stack({"IMAGESVC_API_KEYS": KEYS}, processor=processor_server)
    png = png_bytes(7, 7, seed=75)
    with httpx.Client(base_url=open_door.url, timeout=30) as http:
        made = http.post(
            "/images?visibility=private", content=png, headers={"Content-Type": "image/png"}
        ).json()
    assert (made["owner"], made["visibility"]) == ("", "private")
    path = f"/images/{made['id']}"
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        for headers in ({}, bearer(ALICE)):
            for asked in (path, f"{path}/info", f"{path}?w=3"):
                is_problem(http.get(asked, headers=headers), 404)
        listed = {image["id"] for image in http.get("/images?limit=100").json()["images"]}
        assert made["id"] not in listed
        assert http.get(path, headers=bearer(OPS)).content == png


def test_an_owner_may_be_any_text(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> None:
    key = "jose-key-0123456789"
    gateway = stack({"IMAGESVC_API_KEYS": f"josé:{key}"}, processor=processor_server)
    png = png_bytes(6, 5, seed=76)
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        made = http.post(
            "/images", content=png, headers={"Content-Type": "image/png", **bearer(key)}
        ).json()
        assert made["owner"] == "josé"
        path = f"/images/{made['id']}"
        assert http.get(path, headers=bearer(key)).content == png
        assert http.get(f"{path}/info", headers=bearer(key)).json()["owner"] == "josé"
        assert http.get(f"{path}?w=3", headers=bearer(key)).status_code == 200
        assert [i["id"] for i in http.get("/images", headers=bearer(key)).json()["images"]] == [
            made["id"]
        ]
        is_problem(http.get(path), 404)
        assert http.delete(path, headers=bearer(key)).status_code == 204


def test_the_cache_service_hides_what_the_caller_may_not_read(
    stub: pb_grpc.CacheServiceStub,
) -> None:
    private = upload(
        stub, png_bytes(5, 5, seed=72), owner="alice", visibility=image_pb2.VISIBILITY_PRIVATE
    ).id
    bob = Caller("bob", True).metadata()
    seen = failure(stub.StatImage, pb.StatImageRequest(id=private), metadata=bob)
    missing = failure(stub.StatImage, pb.StatImageRequest(id="M" * 22), metadata=bob)
    assert seen.code == missing.code == grpc.StatusCode.NOT_FOUND
    assert (seen.message, seen.reason) == (missing.message, missing.reason)
    fetched = failure(stub.GetImage, pb.GetImageRequest(id=private), metadata=bob)
    assert fetched.code == grpc.StatusCode.NOT_FOUND
    alice = Caller("alice", True).metadata()
    assert stub.StatImage(pb.StatImageRequest(id=private), metadata=alice).image.id == private
    admin = Caller("ops", True, SCOPES).metadata()
    assert stub.StatImage(pb.StatImageRequest(id=private), metadata=admin).image.id == private
    # Internal callers name no caller and are not scoped.
    assert stub.StatImage(pb.StatImageRequest(id=private)).image.owner == "alice"
    public = upload(
        stub, png_bytes(5, 5, seed=73), owner="alice", visibility=image_pb2.VISIBILITY_PUBLIC
    )
    assert stub.StatImage(pb.StatImageRequest(id=public.id), metadata=bob).image.id == public.id


@pytest.mark.parametrize("query", ["", "?w=3"])
def test_a_private_image_takes_as_long_to_refuse_as_a_missing_one(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess, query: str
) -> None:
    gateway = stack({"IMAGESVC_API_KEYS": KEYS}, processor=processor_server)
    png = png_bytes(8, 8, seed=74 + len(query))
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        private = http.post(
            "/images", content=png, headers={"Content-Type": "image/png", **bearer(ALICE)}
        ).json()["id"]
        # Its owner's reads put it in the gateway's memory.
        for _ in range(3):
            assert http.get(f"/images/{private}{query}", headers=bearer(ALICE)).status_code == 200
        paths = {"private": f"/images/{private}{query}", "missing": f"/images/{'M' * 22}{query}"}
        times: dict[str, list[float]] = {"private": [], "missing": []}
        answers = {}
        pairs = list(paths.items())
        for n in range(300):  # interleaved, so both see the same machine
            # Each first in turn: a fixed order would read the machine as a difference.
            for name, path in pairs if n % 2 == 0 else pairs[::-1]:
                started = time.perf_counter()
                response = http.get(path, headers=bearer(BOB))
                times[name].append(time.perf_counter() - started)
                answers[name] = (response.status_code, response.json()["detail"])
    assert answers["private"] == answers["missing"] == (404, "no such image")
    # Before, a private image held in memory was refused 4-5x faster than a missing id.
    ratio = paired_ratio(times["private"], times["missing"])
    assert 0.75 < ratio < 1.33, (ratio, statistics.median(times["missing"]) * 1000)
