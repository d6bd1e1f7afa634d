"""The gRPC to HTTP error mapping, one test per row, plus auth, limits and outages."""

from __future__ import annotations

import asyncio
import io
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from PIL import Image
from starlette.types import Receive, Scope, Send

from gateway.observability import Metrics, Observability
from tests.support import (
    CORPUS,
    ServiceProcess,
    animation,
    free_port,
    is_problem,
    open_image,
    png_bytes,
    start_all,
    wait_for,
)

KEY_ALICE = "alice-key-0123456789"
KEY_BOB = "bob-key-0123456789ab"


def big_jpeg() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((400, 300), 40).convert("RGB").resize((4000, 3000)).save(
        out, "JPEG", quality=90
    )
    return out.getvalue()


def test_400_bad_parameters_name_the_parameter(http: httpx.Client) -> None:
    image_id = http.post(
        "/images", files={"file": ("a.png", png_bytes(20, 20), "image/png")}
    ).json()["id"]
    for query, name in [
        ("w=abc", "w"),
        ("w=0", "w"),
        ("w=10&w=20", "w"),
        ("fit=squash&w=5", "fit"),
        ("fit=cover", "fit"),
        ("crop=1,2,3", "crop"),
        ("bg=red&rotate=10", "bg"),
        ("q=101", "q"),
        ("format=tiff", "format"),
        ("blur=nan", "blur"),
        ("blur=51", "blur"),  # the processor's own limit, in the query's words
        ("bogus=1", "bogus"),
    ]:
        body = is_problem(http.get(f"/images/{image_id}?{query}"), 400)
        assert body["parameter"] == name, query


def test_415_unsupported_media_type(http: httpx.Client) -> None:
    is_problem(http.post("/images", content=b"hello", headers={"Content-Type": "text/plain"}), 415)
    wmf = (CORPUS / "pillow/drawing.wmf").read_bytes()
    body = is_problem(http.post("/images", files={"file": ("d.wmf", wmf, "image/wmf")}), 415)
    assert body["reason"] == "UNSUPPORTED_MEDIA_TYPE"


def test_422_corrupt_image(http: httpx.Client) -> None:
    data = (CORPUS / "pillow/truncated_jpeg.jpg").read_bytes()
    body = is_problem(http.post("/images", files={"file": ("t.jpg", data, "image/jpeg")}), 422)
    assert body["reason"] == "CORRUPT_IMAGE"


def test_413_pixel_bombs(http: httpx.Client) -> None:
    data = (CORPUS / "fuzzdb/lottapixel.jpg").read_bytes()
    body = is_problem(
        http.post("/images", content=data, headers={"Content-Type": "image/jpeg"}), 413
    )
    assert body["reason"] == "IMAGE_TOO_LARGE"


def test_404_for_unknown_and_malformed_ids(http: httpx.Client) -> None:
    for path in (
        "/images/" + "A" * 22,
        "/images/nope",
        "/images/" + "A" * 22 + "/info",
    ):
        body = is_problem(http.get(path), 404)
        assert body["detail"] == "no such image"
    is_problem(http.get("/images/..%2F..%2Fetc%2Fpasswd"), 404)
    is_problem(http.delete("/images/" + "B" * 22), 404)
    is_problem(http.get("/nowhere"), 404)
    is_problem(http.put("/images"), 405)


def test_upload_at_the_limit_and_one_byte_over(stack: Callable[..., ServiceProcess]) -> None:
    data = png_bytes(100, 100, noise=True)
    limit = len(data) + 100
    exact = data + b"\0" * 100  # bytes after IEND: still a valid PNG, exactly at the limit
    gateway = stack({"IMAGESVC_MAX_UPLOAD_BYTES": str(limit)})
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        raw = {"Content-Type": "image/png"}
        assert http.post("/images", content=exact, headers=raw).status_code == 201
        assert (
            http.post("/images", files={"file": ("x.png", exact, "image/png")}).status_code == 201
        )
        is_problem(http.post("/images", content=exact + b"\0", headers=raw), 413)
        is_problem(http.post("/images", files={"file": ("x.png", exact + b"\0", "image/png")}), 413)

    # Chunked, no length declared: the answer comes once the limit passes, while the
    # client is still sending.
    sent = 0
    with socket.create_connection(("127.0.0.1", gateway.port)) as conn:
        conn.sendall(
            b"POST /images HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"1000\r\n" + b"\0" * 4096 + b"\r\n"
        while sent < 100 * limit and not select.select([conn], [], [], 0.002)[0]:
            try:
                conn.sendall(chunk)
            except OSError:
                break
            sent += 4096
        assert conn.recv(100).startswith(b"HTTP/1.1 413")
    assert sent < 10 * limit
    # A declared length over the limit is refused before any byte of the body is read.
    with socket.create_connection(("127.0.0.1", gateway.port)) as conn:
        conn.sendall(
            b"POST /images HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 999999999\r\n\r\n"
        )
        assert conn.recv(100).startswith(b"HTTP/1.1 413")


def test_401_403_and_hidden_private_images(stack: Callable[..., ServiceProcess]) -> None:
    keys = f"alice:{KEY_ALICE},bob:{KEY_BOB}"
    gateway = stack({"IMAGESVC_API_KEYS": keys})
    alice = {"Authorization": f"Bearer {KEY_ALICE}"}
    bob = {"X-API-Key": KEY_BOB}
    png = png_bytes(30, 20, seed=4)
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        anonymous = http.post("/images", content=png, headers={"Content-Type": "image/png"})
        assert is_problem(anonymous, 401) and "Bearer" in anonymous.headers["www-authenticate"]
        wrong = {"Authorization": "Bearer not-a-real-key-at-all", "Content-Type": "image/png"}
        is_problem(http.post("/images", content=png, headers=wrong), 401)

        private = http.post(
            "/images", files={"file": ("p.png", png, "image/png")}, headers=alice
        ).json()
        public = http.post(
            "/images?visibility=public", files={"file": ("q.png", png, "image/png")}, headers=alice
        ).json()
        assert (private["owner"], private["visibility"], public["visibility"]) == (
            "alice",
            "private",
            "public",
        )

        assert http.get(f"/images/{private['id']}", headers=alice).status_code == 200
        assert http.get(f"/images/{private['id']}?w=10", headers=alice).status_code == 200
        for path in (
            f"/images/{private['id']}",
            f"/images/{private['id']}?w=10",
            f"/images/{private['id']}/info",
        ):
            assert is_problem(http.get(path, headers=bob), 404) == is_problem(
                http.get(path), 404
            ) | {"instance": path.split("?")[0]}
        assert http.get(f"/images/{public['id']}").status_code == 200
        is_problem(http.delete(f"/images/{public['id']}", headers=bob), 403)
        is_problem(http.delete(f"/images/{private['id']}", headers=bob), 404)
        is_problem(http.delete(f"/images/{private['id']}"), 401)
        listed = http.get("/images", headers=alice).json()["images"]
        assert {private["id"], public["id"]} <= {image["id"] for image in listed}
        # Bob's list is his own (other tests of the session upload as bob too).
        bobs = http.get("/images", headers=bob).json()["images"]
        assert {image["owner"] for image in bobs} <= {"bob"}
        assert http.delete(f"/images/{private['id']}", headers=alice).status_code == 204


def test_503_when_overloaded_with_retry_after(
    stack: Callable[..., ServiceProcess], http: httpx.Client
) -> None:
    gateway = stack(
        processor_env={"IMAGESVC_PROCESSOR_WORKERS": "1", "IMAGESVC_PROCESSOR_QUEUE": "0"}
    )
    image_id = http.post(
        "/images", content=big_jpeg(), headers={"Content-Type": "image/jpeg"}
    ).json()["id"]
    statuses: list[httpx.Response] = []
    barrier = threading.Barrier(5)

    def hit(n: int) -> None:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            barrier.wait()
            statuses.append(client.get(f"/images/{image_id}?blur={20 + n}&format=jpeg"))

    threads = [threading.Thread(target=hit, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = [r for r in statuses if r.status_code == 503]
    assert busy and any(r.status_code == 200 for r in statuses)
    for response in busy:
        assert is_problem(response, 503)["reason"] == "OVERLOADED"
        assert int(response.headers["retry-after"]) >= 1


def test_504_when_processing_is_too_slow(
    stack: Callable[..., ServiceProcess], http: httpx.Client
) -> None:
    gateway = stack(processor_env={"IMAGESVC_PROCESSING_TIMEOUT_SECONDS": "0.1"})
    image_id = http.post(
        "/images", content=big_jpeg(), headers={"Content-Type": "image/jpeg"}
    ).json()["id"]
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        is_problem(client.get(f"/images/{image_id}?blur=45"), 504)


def test_animations_too_large_whole_are_refused_at_once_and_blurred_as_a_still(
    stack: Callable[..., ServiceProcess], http: httpx.Client
) -> None:
    gateway = stack(processor_env={"IMAGESVC_MAX_PIXELS": "200000"})
    gif = animation((200, 200), 10)  # 400,000 pixels in all
    image_id = http.post("/images", content=gif, headers={"Content-Type": "image/gif"}).json()["id"]
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        # The endpoint takes no parameters, so it cannot fail on size: a still.
        blurred = client.get(f"/blurred-images/{image_id}")
        assert blurred.status_code == 200 and blurred.headers["content-type"] == "image/gif"
        assert getattr(open_image(blurred.content), "n_frames", 1) == 1
        body = is_problem(client.get(f"/images/{image_id}?format=webp&w=200"), 422)
        assert body["reason"] == "OUTPUT_TOO_LARGE" and "first frame" in str(body["detail"])
        still = client.get(f"/images/{image_id}?format=webp&w=200&frames=first")
        assert getattr(open_image(still.content), "n_frames", 1) == 1
        whole = client.get(f"/images/{image_id}?format=webp&w=100")  # 100,000 in all
        assert open_image(whole.content).n_frames == 10  # type: ignore[attr-defined]


def test_503_while_a_service_is_down_then_recovery(
    stack: Callable[..., ServiceProcess],
    cache_server: ServiceProcess,
    http: httpx.Client,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        "IMAGESVC_CACHE_ADDRESS": cache_server.address,
        "IMAGESVC_PROCESSOR_LISTEN": f"127.0.0.1:{port}",
    }
    processor = ServiceProcess("processor", tmp_path / "p", env).start()
    gateway = stack({"IMAGESVC_GATEWAY_TIMEOUT_SECONDS": "3"}, processor=processor)
    image_id = http.post(
        "/images", files={"file": ("a.png", png_bytes(40, 40, seed=8), "image/png")}
    ).json()["id"]
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        assert client.get(f"/images/{image_id}?w=20").status_code == 200
        processor.kill()
        start = time.monotonic()
        down = client.get(f"/images/{image_id}?w=21")
        assert time.monotonic() - start < 3.5  # within the deadline
        assert is_problem(down, 503) and int(down.headers["retry-after"]) >= 1
        assert client.get("/readyz").status_code == 503
        assert client.get(f"/images/{image_id}").status_code == 200  # originals still served
        processor.start()
        wait_for(
            lambda: client.get(f"/images/{image_id}?w=22").status_code == 200,
            "recovery of the gateway",
            timeout=15,
            every=0.2,
        )
        assert client.get("/readyz").status_code == 200
    processor.kill()


def test_cache_service_down_then_back(stack: Callable[..., ServiceProcess], tmp_path: Path) -> None:
    port = free_port()
    cache, processor, gateway = start_all(tmp_path, {"IMAGESVC_CACHE_LISTEN": f"127.0.0.1:{port}"})
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            image_id = client.post(
                "/images", content=png_bytes(20, 20), headers={"Content-Type": "image/png"}
            ).json()["id"]
            assert client.get(f"/images/{image_id}").status_code == 200
            assert client.get(f"/images/{image_id}").status_code == 200  # now held in memory
            cache.kill()
            # With the deletion watch broken, nothing held may be served: 503, not stale bytes.
            wait_for(
                lambda: client.get(f"/images/{image_id}").status_code == 503,
                "503 for what the gateway held",
                timeout=5,
                every=0.05,
            )
            down = client.get(f"/images/{image_id}")
            assert is_problem(down, 503) and "retry-after" in down.headers
            is_problem(
                client.post(
                    "/images", content=png_bytes(5, 5), headers={"Content-Type": "image/png"}
                ),
                503,
            )
            cache.start()
            wait_for(
                lambda: client.get(f"/images/{image_id}").status_code == 200,
                "recovery of the gateway",
                timeout=15,
                every=0.2,
            )
    finally:
        for server in (gateway, processor, cache):
            server.kill()


def test_services_started_before_their_cache_wait_for_it_quietly(tmp_path: Path) -> None:
    # As under `make run`, where all three start at once and the cache may be the slowest.
    address = f"127.0.0.1:{free_port()}"
    processor = ServiceProcess(
        "processor", tmp_path / "p", {"IMAGESVC_CACHE_ADDRESS": address}
    ).start()
    gateway = ServiceProcess(
        "gateway",
        tmp_path / "g",
        {"IMAGESVC_CACHE_ADDRESS": address, "IMAGESVC_PROCESSOR_ADDRESSES": processor.address},
    ).start()
    cache = ServiceProcess("cache", tmp_path / "c", {"IMAGESVC_CACHE_LISTEN": address})
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            # Each has found the cache missing on the channel its deletion watch (opened
            # first, as it starts) uses: the gateway itself, and the processor behind it.
            assert client.get("/readyz").json()["services"]["cache"] == "UNAVAILABLE"
            is_problem(client.get(f"/images/{'A' * 22}?w=5"), 503)
            cache.start()
            wait_for(
                lambda: client.get("/readyz").status_code == 200,
                "cache found by the gateway",
                timeout=60,
                every=0.1,
            )
            image_id = client.post(
                "/images", content=png_bytes(20, 20), headers={"Content-Type": "image/png"}
            ).json()["id"]
            # The gateway has found its cache; the processor behind it may still be
            # waiting to try again (at most 2 s): 503s until then.
            wait_for(
                lambda: client.get(f"/images/{image_id}?w=5").status_code == 200,
                "cache found by the processor",
                timeout=60,
                every=0.1,
            )
    finally:
        for server in (gateway, processor, cache):
            if server.running:
                assert server.terminate() == 0
            server.kill()
    for server in (processor, gateway):
        loud = [e for e in server.log_entries() if e["level"] in ("warning", "error")]
        assert loud == [], server.module


def multipart(parts: list[bytes], boundary: bytes = b"XX") -> tuple[bytes, dict[str, str]]:
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


def test_malformed_multipart_bodies_are_400(http: httpx.Client) -> None:
    png = png_bytes(12, 12, seed=31)
    head = b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    unterminated, headers = multipart([head, png])
    is_problem(http.post("/images", content=unterminated, headers=headers), 400)
    big = png_bytes(700, 700, noise=True)  # arrives in many chunks
    broken, headers = multipart([head, big, b"\r\n--XX x"])
    is_problem(http.post("/images", content=broken, headers=headers), 400)
    junk_tail, headers = multipart([head, png, b"\r\n--XX-z"])
    is_problem(http.post("/images", content=junk_tail, headers=headers), 400)
    long_boundary = b"B" * 300
    body, headers = multipart([b"--" + long_boundary + b"\r\n"], long_boundary)
    is_problem(http.post("/images", content=body, headers=headers), 400)
    good, headers = multipart([head, png, b"\r\n--XX--\r\n"])
    assert http.post("/images", content=good, headers=headers).json()["bytes"] == len(png)


def test_odd_inputs_are_400_not_500(http: httpx.Client) -> None:
    for limit in ("%C2%B2", "%EF%BC%92", "-1", "1e3"):
        is_problem(http.get(f"/images?limit={limit}"), 400)
    allowed = http.put("/images/" + "A" * 22)
    is_problem(allowed, 405)
    assert set(allowed.headers["allow"].split(", ")) == {"GET", "HEAD", "DELETE"}
    assert set(http.delete("/images").headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}


def test_info_has_its_own_validator(http: httpx.Client) -> None:
    image = http.post(
        "/images", files={"file": ("i.png", png_bytes(9, 9, seed=32), "image/png")}
    ).json()
    info = http.get(f"/images/{image['id']}/info")
    assert info.headers["etag"] != f'"{image["sha256"]}"'
    assert info.headers["cache-control"] == "private, no-cache"
    again = http.get(f"/images/{image['id']}/info", headers={"If-None-Match": info.headers["etag"]})
    assert again.status_code == 304


def test_an_unhandled_error_is_a_500_problem_with_the_request_id() -> None:
    # A handler that raises cannot be provoked through the real routes: this app stands in.
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=Observability(broken, Metrics()))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.get("/images/x", headers={"X-Request-ID": "r-1"})

    response = asyncio.run(call())
    body = is_problem(response, 500)
    assert body == {
        "type": "about:blank",
        "title": "Internal error",
        "status": 500,
        "detail": "the gateway failed; see its log",
        "instance": "/images/x",
    }
    assert response.headers["X-Request-ID"] == "r-1"
