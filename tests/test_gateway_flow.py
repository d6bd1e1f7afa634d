"""End to end over HTTP: upload, originals, variants, HTTP caching, info, list, delete."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from PIL import Image

from tests.support import CORPUS, ServiceProcess, png_bytes, sha256, start_all, wait_for

JPEG = (CORPUS / "exif-orientation" / "Landscape_3.jpg").read_bytes()


def opened(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def test_upload_both_ways_then_read_transform_and_delete(http: httpx.Client) -> None:
    multipart = http.post("/images", files={"file": ("cat.jpg", JPEG, "image/jpeg")})
    assert multipart.status_code == 201, multipart.text
    meta = multipart.json()
    assert multipart.headers["location"] == f"/images/{meta['id']}"
    assert (meta["filename"], meta["format"], meta["width"], meta["height"]) == (
        "cat.jpg",
        "JPEG",
        1800,
        1200,
    )
    raw = http.post(
        "/images?filename=raw.png", content=png_bytes(64, 48), headers={"Content-Type": "image/png"}
    )
    assert raw.status_code == 201 and raw.json()["filename"] == "raw.png"

    original = http.get(f"/images/{meta['id']}")
    assert original.status_code == 200 and original.content == JPEG
    assert original.headers["content-type"] == "image/jpeg"
    assert original.headers["content-length"] == str(len(JPEG))
    assert original.headers["etag"] == f'"{meta["sha256"]}"'
    assert "immutable" in original.headers["cache-control"]

    variant = http.get(f"/images/{meta['id']}?w=300&format=png")
    image = opened(variant.content)
    assert (image.format, image.size) == ("PNG", (300, 200))
    assert variant.headers["content-type"] == "image/png" and "vary" not in variant.headers
    cover = http.get(f"/images/{meta['id']}?w=100&h=100&fit=cover&format=jpeg&q=70")
    assert opened(cover.content).size == (100, 100)

    negotiated = http.get(f"/images/{meta['id']}?w=120", headers={"Accept": "image/webp,*/*"})
    assert opened(negotiated.content).format == "WEBP"
    assert negotiated.headers["vary"] == "Accept"
    plain = http.get(f"/images/{meta['id']}?w=120", headers={"Accept": "*/*"})
    assert opened(plain.content).format == "JPEG"
    assert plain.headers["etag"] != negotiated.headers["etag"]

    info = http.get(f"/images/{meta['id']}/info")
    assert info.json() == meta
    blurred = http.get(f"/blurred-images/{meta['id']}")
    assert blurred.status_code == 200 and opened(blurred.content).size == (1800, 1200)

    assert http.delete(f"/images/{meta['id']}").status_code == 204
    for path in (
        f"/images/{meta['id']}",
        f"/images/{meta['id']}?w=300&format=png",
        f"/images/{meta['id']}/info",
    ):
        gone = http.get(path)
        assert gone.status_code == 404, path
        assert gone.headers["content-type"] == "application/problem+json"


def test_etags_give_304_and_head_gives_headers(http: httpx.Client) -> None:
    image_id = http.post(
        "/images", files={"file": ("a.png", png_bytes(80, 60, seed=3), "image/png")}
    ).json()["id"]
    for path in (f"/images/{image_id}", f"/images/{image_id}?w=40&format=webp"):
        first = http.get(path)
        again = http.get(path, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == first.headers["etag"]
        assert http.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
        head = http.head(path)
        assert head.status_code == 200 and head.content == b""
        for name in ("etag", "content-type", "content-length", "cache-control"):
            assert head.headers[name] == first.headers[name], name


def test_list_pages_newest_first(http: httpx.Client) -> None:
    mine = [
        http.post(
            "/images", files={"file": ("p.png", png_bytes(10, 10, seed=500 + n), "image/png")}
        ).json()["id"]
        for n in range(5)
    ]
    seen: list[str] = []
    url = "/images?limit=2"
    pages = 0
    while url and pages < 500:
        page = http.get(url)
        assert page.status_code == 200
        body = page.json()
        assert len(body["images"]) <= 2
        seen += [image["id"] for image in body["images"]]
        url = f"/images?limit=2&cursor={body['next_cursor']}" if body["next_cursor"] else ""
        if body["next_cursor"]:
            assert 'rel="next"' in page.headers["link"]
        pages += 1
    positions = [seen.index(image_id) for image_id in mine]
    assert positions == sorted(positions, reverse=True)  # newest first
    assert len(seen) == len(set(seen))
    assert http.get("/images?limit=0").status_code == 400
    assert http.get("/images?cursor=garbage!").json()["parameter"] == "cursor"


def test_request_ids_reach_every_service(
    http: httpx.Client, cache_server: ServiceProcess, processor_server: ServiceProcess
) -> None:
    image_id = http.post(
        "/images", files={"file": ("r.png", png_bytes(30, 30, seed=9), "image/png")}
    ).json()["id"]
    response = http.get(f"/images/{image_id}?w=17", headers={"X-Request-ID": "req-abc-123"})
    assert response.headers["x-request-id"] == "req-abc-123"
    for server in (cache_server, processor_server):
        assert any(e.get("request_id") == "req-abc-123" for e in server.log_entries()), (
            server.module
        )
    generated = http.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32


def test_health_metrics_and_openapi(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    image_id = http.post(
        "/images", files={"file": ("m.png", png_bytes(20, 20, seed=11), "image/png")}
    ).json()["id"]
    http.get(f"/images/{image_id}?w=10")
    metrics = http.get("/metrics").text
    assert 'imagesvc_http_requests_total{method="POST",route="/images",status="201"}' in metrics
    assert "imagesvc_http_request_duration_seconds_bucket" in metrics
    assert 'imagesvc_variant_cache_total{result="miss"}' in metrics
    assert 'imagesvc_http_bytes_total{direction="in"}' in metrics
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/images",
        "/images/{image_id}",
        "/images/{image_id}/info",
        "/blurred-images/{image_id}",
        "/healthz",
        "/health",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/presets",
        "/",
        "/docs",
    }
    documented = {p["name"] for p in doc["paths"]["/images/{image_id}"]["get"]["parameters"]}
    from gateway.params import Parameters, RequestLimits

    assert {p.name for p in Parameters(RequestLimits(8192, 50)).table} | {"image_id"} == documented


def processed(server: ServiceProcess) -> int:
    return sum(
        1
        for e in server.log_entries()
        if e.get("msg") == "rpc" and "Process" in str(e.get("method"))
    )


def test_hot_answers_come_from_memory_and_go_with_the_image(
    http: httpx.Client, processor_server: ServiceProcess, cache_channel: object
) -> None:
    image_id = http.post(
        "/images", files={"file": ("h.png", png_bytes(90, 60, seed=21), "image/png")}
    ).json()["id"]
    path = f"/images/{image_id}?w=30&format=png"
    first = http.get(path)
    assert first.headers["x-cache"] == "MISS"
    before = processed(processor_server)
    again = http.get(path)
    assert again.headers["x-cache"] == "HIT" and again.content == first.content
    assert processed(processor_server) == before  # not even asked
    assert http.get(path, headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    assert http.delete(f"/images/{image_id}").status_code == 204
    assert http.get(path).status_code == 404
    assert http.get(f"/images/{image_id}").status_code == 404


def test_a_delete_elsewhere_reaches_the_gateway(http: httpx.Client, stub: object) -> None:
    from imageservice.v1 import cache_service_pb2 as pb

    image_id = http.post(
        "/images", files={"file": ("w.png", png_bytes(50, 40, seed=22), "image/png")}
    ).json()["id"]
    path = f"/images/{image_id}?w=20&format=png"
    http.get(path)
    assert http.get(path).headers["x-cache"] == "HIT"
    assert http.get(f"/images/{image_id}").status_code == 200
    stub.DeleteImage(pb.DeleteImageRequest(id=image_id))  # type: ignore[attr-defined]
    wait_for(
        lambda: http.get(path).status_code == 404,
        "404 for a deleted image's variant",
        timeout=2,
        every=0.01,
    )
    assert http.get(f"/images/{image_id}").status_code == 404


def test_a_variant_too_large_for_one_message_is_streamed_made_once(
    http: httpx.Client, processor_server: ServiceProcess
) -> None:
    image_id = http.post(
        "/images", files={"file": ("n.png", png_bytes(600, 500, noise=True), "image/png")}
    ).json()["id"]
    # Noise stays incompressible: about 900 KB, several of the processor's messages.
    path = f"/images/{image_id}?w=600&format=png"
    response = http.get(path, headers={"X-Request-ID": "too-large-for-one"})
    assert response.status_code == 200 and len(response.content) > 512 * 1024
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["etag"] == f'"{sha256(response.content)}"'
    assert opened(response.content).size == (600, 500)
    mine = [e for e in processor_server.log_entries() if e.get("request_id") == "too-large-for-one"]
    calls = [str(e["method"]).rsplit("/", 1)[1] for e in mine if e.get("msg") == "rpc"]
    assert calls == ["Process"]
    assert [e.get("msg") for e in mine].count("processed") == 1
    assert http.head(path).headers["content-length"] == str(len(response.content))


def test_an_animated_gif_stays_animated_for_a_browser(http: httpx.Client) -> None:
    frames = [Image.new("L", (64, 48), 40 * n) for n in range(5)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=40)
    created = http.post("/images", content=gif.getvalue(), headers={"Content-Type": "image/gif"})
    image_id = created.json()["id"]
    browser = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
    answer = http.get(f"/images/{image_id}?w=32", headers={"Accept": browser})
    assert answer.headers["content-type"] == "image/webp" and answer.headers["vary"] == "Accept"
    assert getattr(opened(answer.content), "n_frames", 1) == 5
    no_avif = http.get(f"/images/{image_id}?w=32", headers={"Accept": "image/avif;q=0,*/*"})
    assert no_avif.headers["content-type"] == "image/gif"


def test_services_need_not_agree_on_chunk_bytes(tmp_path: Path) -> None:
    # Each service chooses the size of the chunks it sends; every one takes the largest.
    # A cache sending 3 MiB chunks, a processor 1 KiB ones, a gateway on the default:
    # an original over 3 MiB and a variant of it go every way between them.
    cache, processor, gateway = start_all(
        tmp_path,
        {"IMAGESVC_CHUNK_BYTES": "3MiB"},
        processor_env={"IMAGESVC_CHUNK_BYTES": "1KiB"},
    )
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            png = png_bytes(1100, 1000, noise=True)
            assert len(png) > 3 * 1024 * 1024
            image_id = client.post(
                "/images", content=png, headers={"Content-Type": "image/png"}
            ).json()["id"]
            assert client.get(f"/images/{image_id}").content == png
            path = f"/images/{image_id}?w=1100&format=png"
            made = client.get(path)
            assert made.status_code == 200 and opened(made.content).size == (1100, 1000)
            assert client.get(path).content == made.content
    finally:
        for server in (gateway, processor, cache):
            server.kill()
