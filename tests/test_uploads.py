"""Uploads through the gateway: slow clients, time caps, empty bodies and long names."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx

from tests.support import ServiceProcess, is_problem, png_bytes, wait_for

PNG = "image/png"


def trickle(data: bytes, pieces: int, every: float) -> Iterator[bytes]:
    """data in equal pieces, one every `every` seconds: a slow client that never stops."""
    step = -(-len(data) // pieces)
    for start in range(0, len(data), step):
        time.sleep(every)
        yield data[start : start + step]


def test_a_slow_steady_upload_is_not_cut_off(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> None:
    # 20 pieces, one every 0.25 s: 5 s in all, more than twice the longest pause allowed,
    # at 12 KB/s; the length is declared, as curl does.
    gateway = stack({"IMAGESVC_GATEWAY_TIMEOUT_SECONDS": "2"}, processor=processor_server)
    data = png_bytes(140, 140, noise=True)
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        raw = http.post(
            "/images",
            content=trickle(data, 20, 0.25),
            headers={"Content-Type": PNG, "Content-Length": str(len(data))},
        )
        assert raw.status_code == 201, raw.text
        assert raw.json()["bytes"] == len(data)
        head = b"--XX\r\nContent-Disposition: form-data; name=file; filename=slow.png\r\n\r\n"
        body = head + data + b"\r\n--XX--\r\n"
        form = http.post(
            "/images",
            content=trickle(body, 20, 0.25),
            headers={
                "Content-Type": "multipart/form-data; boundary=XX",
                "Content-Length": str(len(body)),
            },
        )
        assert form.status_code == 201, form.text
        assert form.json()["filename"] == "slow.png"


def test_an_upload_past_its_time_cap_is_408_and_leaves_nothing(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> None:
    gateway = stack(
        {"IMAGESVC_GATEWAY_TIMEOUT_SECONDS": "5", "IMAGESVC_UPLOAD_TIMEOUT_SECONDS": "1.5"},
        processor=processor_server,
    )
    data = png_bytes(100, 100, noise=True)
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        before = {image["id"] for image in http.get("/images?limit=100").json()["images"]}
        # 40 pieces, one every 0.1 s: never a pause, but 4 s in all.
        slow = http.post("/images", content=trickle(data, 40, 0.1), headers={"Content-Type": PNG})
        body = is_problem(slow, 408)
        assert "1.5s" in str(body["detail"])
        after = {image["id"] for image in http.get("/images?limit=100").json()["images"]}
        assert after == before

    # Cut off at the cap, not at the end of the body (which the client sends regardless).
    def answered() -> list[dict[str, object]]:
        return [e for e in gateway.log_entries() if e.get("status") == 408]

    wait_for(answered, "408 in the log", timeout=10, every=0.05)
    assert 1500 <= float(answered()[0]["ms"]) < 3500  # type: ignore[arg-type]


def test_an_empty_upload_says_so(http: httpx.Client) -> None:
    raw = is_problem(http.post("/images", content=b"", headers={"Content-Type": PNG}), 400)
    form = is_problem(http.post("/images", files={"file": ("e.png", b"", PNG)}), 400)
    for body in (raw, form):
        assert "empty upload" in str(body["detail"])
        assert "parameter" not in body


def test_a_filename_longer_than_255_characters_is_refused(http: httpx.Client) -> None:
    png = png_bytes(4, 4, seed=61)
    long = "n" * 252 + ".png"
    raw = http.post(f"/images?filename={long}", content=png, headers={"Content-Type": PNG})
    assert is_problem(raw, 400)["parameter"] == "filename"
    form = http.post("/images", files={"file": (long, png, PNG)})
    assert is_problem(form, 400)["parameter"] == "filename"
    longest = "n" * 251 + ".png"
    kept = http.post("/images", files={"file": (longest, png, PNG)})
    assert kept.json()["filename"] == longest
    # Characters, not bytes: 255 of them in UTF-8 is more bytes than that.
    accented = "é" * 251 + ".png"
    assert http.post("/images", files={"file": (accented, png, PNG)}).json()["filename"] == accented
