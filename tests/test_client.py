"""The Python client (imagesvc), sync and async, against the real gateway (issue 15)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image as PILImage

from common.urlsigning import SigningKey
from gateway.signing import sign
from imagesvc import (
    PARAMETERS,
    AsyncClient,
    BadRequest,
    Client,
    Forbidden,
    InvalidParameter,
    NotFound,
    ServiceUnreachable,
    Signer,
    UnprocessableImage,
    URLBuilder,
)
from imagesvc.urls import image_path, query
from processor import parameters
from processor.operations.base import RequestLimits
from tests.support import ROOT, ServiceProcess, free_port, png_bytes

OWNER_KEY = "client-key-0123456789ab"
OTHER_KEY = "other-key-0123456789abc"
SECRET = "S" * 32
API_KEYS = f"clientowner:{OWNER_KEY},other:{OTHER_KEY}"
SIGNING_KEYS = f"ck:{SECRET}"


@pytest.fixture(scope="module")
def signing(
    stack: Callable[..., ServiceProcess], processor_server: ServiceProcess
) -> ServiceProcess:
    """A gateway with API keys and URL signing, over the session's services."""
    env = {"IMAGESVC_API_KEYS": API_KEYS, "IMAGESVC_URL_SIGNING_KEYS": SIGNING_KEYS}
    return stack(env, processor=processor_server)


@pytest.fixture
def client(gateway_server: ServiceProcess) -> Iterator[Client]:
    with Client(gateway_server.url, timeout=30) as made:
        yield made


def size_and_format(data: bytes) -> tuple[tuple[int, int], str | None]:
    with PILImage.open(io.BytesIO(data)) as image:
        return image.size, image.format


def test_parameters_are_the_processors_declarations() -> None:
    declared = parameters.table(RequestLimits(max_output_dimension=8192, max_blur_sigma=50.0))
    assert list(PARAMETERS) == [param.name for param in declared]
    assert query({"w": 300, "grayscale": True, "flip": False, "crop": (0, 0, 10, 10)}) == [
        ("w", "300"),
        ("grayscale", ""),
        ("crop", "0,0,10,10"),
    ]
    assert query({"dpr": 2.0, "wm_opacity": 0.5, "preset": "thumb"}) == [
        ("dpr", "2"),
        ("wm_opacity", "0.5"),
        ("preset", "thumb"),
    ]
    for bad in ({"width": 3}, {"fit": "squash"}, {"q": 101}, {"w": 2.5}, {"grayscale": "yes"}):
        with pytest.raises(InvalidParameter) as refused:
            query(bad)
        assert refused.value.parameter == next(iter(bad))
    assert image_path("AAAAAAAAAAAAAAAAAAAAAA", {"w": 3}) == "/images/AAAAAAAAAAAAAAAAAAAAAA?w=3"
    built = URLBuilder("http://x:1/").image("AAAAAAAAAAAAAAAAAAAAAA", w=3, format="webp")
    assert built == "http://x:1/images/AAAAAAAAAAAAAAAAAAAAAA?w=3&format=webp"


def test_the_signer_is_the_gateways_scheme() -> None:
    """The vector in docs/http.md, and agreement with the gateway's own signing."""
    secret = "0123456789abcdef0123456789abcdef"
    path = "/images/AAAAAAAAAAAAAAAAAAAAAA"
    signed = Signer("k1", secret.encode()).sign(
        f"{path}?%C3%A9t%C3%A9=a%20b%2F~&a-b=1&a=2",
        {"bg": "ff0000", "crop": "0,0,10,10", "grayscale": True, "w": 300},
        expires=1767225600,
    )
    assert signed.endswith("&sig=eUdXz7r-Zs483kphN049ZzahEPKN9NUgO5RKiBeus34")
    ours = Signer.parse(f"k1:{secret}").sign(path, {"w": 3}, expires=99)
    assert ours == f"{path}?" + sign(path, [("w", "3")], SigningKey("k1", secret.encode()), 99)
    with pytest.raises(ValueError):
        Signer("k1", b"x").sign(f"{path}?sig=abc")


def test_every_route_sync(client: Client, gateway_server: ServiceProcess) -> None:
    data = png_bytes(40, 30, noise=True)
    seen: list[tuple[int, int | None]] = []
    image = client.upload(data, filename="a.png", progress=lambda n, t: seen.append((n, t)))
    assert (image.width, image.height, image.format) == (40, 30, "PNG")
    assert image.sha256 == hashlib.sha256(data).hexdigest() and image.filename == "a.png"
    assert seen and seen[-1] == (len(data), len(data))

    assert client.info(image.id) == image
    original = client.get(image.id)
    assert original.content == data and original.etag == f'"{image.sha256}"'
    variant = client.get(image.id, w=20, format="webp")
    assert size_and_format(variant.content) == ((20, 15), "WEBP")
    assert variant.media_type == "image/webp" and variant.cache in ("HIT", "MISS")
    head = client.head(image.id, {"w": 20, "format": "webp"})
    assert head.content == b"" and head.size == len(variant.content)
    assert size_and_format(client.blurred(image.id).content)[0] == (40, 30)

    assert client.find(image.sha256) == [image]
    assert client.list(limit=1).images[0].id == image.id  # newest first
    assert client.presets() == {}
    assert client.health() == {"status": "ok"}
    assert client.ready()["status"] == "ok"
    assert "imagesvc_http_requests_total" in client.metrics()
    assert "/images" in client.openapi()["paths"]
    assert client.url(image.id, w=20) == f"{gateway_server.url}/images/{image.id}?w=20"

    client.delete(image.id)
    with pytest.raises(NotFound) as missing:
        client.info(image.id)
    assert missing.value.status == 404
    assert missing.value.problem["status"] == 404 and missing.value.title == "Not found"
    assert str(missing.value) == "404 Not found: no such image"


def test_multipart_upload_of_a_file_with_progress(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(300, 200, noise=True))  # more than one chunk of httpx's
    seen: list[int] = []
    image = client.upload(path, multipart=True, progress=lambda n, t: seen.append(n))
    assert image.filename == "photo.png" and image.byte_size == path.stat().st_size
    assert seen[-1] == path.stat().st_size and len(seen) > 1
    client.delete(image.id)


def test_iterating_follows_every_page(signing: ServiceProcess) -> None:
    with Client(signing.url, token=OWNER_KEY) as client:
        made = [client.upload(png_bytes(4, 4, noise=True)).id for _ in range(5)]
        listed = [image.id for image in client.iter_images(page_size=2)]
        assert listed[:5] == made[::-1]
        first = client.list(limit=2)
        assert len(first.images) == 2 and first.next_cursor
        second = client.list(limit=2, cursor=first.next_cursor)
        assert [i.id for i in second.images] == made[2:0:-1]
        for image_id in made:
            client.delete(image_id)


def test_errors_raise_with_the_problem_body(client: Client, tmp_path: Path) -> None:
    image = client.upload(png_bytes(8, 8, noise=True))
    with pytest.raises(BadRequest) as bad:
        client.get(image.id, w=99999)  # past the service's IMAGESVC_MAX_OUTPUT_DIMENSION
    assert bad.value.parameter == "w" and bad.value.problem["parameter"] == "w"
    assert bad.value.detail.startswith("w: must be between 1 and")
    with pytest.raises(UnprocessableImage) as corrupt:
        client.upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, filename="broken.png")
    assert corrupt.value.status == 422 and corrupt.value.type.startswith("/problems/")
    with pytest.raises(InvalidParameter):
        client.get(image.id, blurry=3)  # refused before asking
    with Client(f"http://127.0.0.1:{free_port()}") as nowhere, pytest.raises(ServiceUnreachable):
        nowhere.health()
    client.delete(image.id)


def test_signed_urls_by_the_gateway_and_by_the_client(signing: ServiceProcess) -> None:
    with Client(signing.url, token=OWNER_KEY, signer=Signer("ck", SECRET.encode())) as client:
        image = client.upload(png_bytes(10, 10, noise=True), visibility="private")
        signed = client.signed_url(image.id, w=5, grayscale=True, expires_in=60)
        assert signed.url.startswith(f"{signing.url}/images/{image.id}?")
        local = client.sign_url(image.id, w=5, expires_in=60)
        for url in (signed.url, local):
            answer = httpx.get(url, timeout=30)  # no key: the signature grants the read
            assert answer.status_code == 200, answer.text
            assert size_and_format(answer.content)[0] == (5, 5)
        unsigned = httpx.get(client.url(image.id, w=5), timeout=30)
        assert unsigned.status_code == 404  # private, and no signature
        public = client.upload(png_bytes(10, 10, noise=True), visibility="public")
        tampered = local.replace("w=5", "w=6")
        refused = httpx.get(tampered, timeout=30)
        assert refused.status_code == 403 and refused.json()["reason"] == "SIGNATURE_INVALID"
    with Client(signing.url, token=OTHER_KEY) as other:
        with pytest.raises(NotFound):
            other.info(image.id)
        with pytest.raises(Forbidden) as forbidden:
            other.delete(public.id)
        assert forbidden.value.status == 403 and "owner" in forbidden.value.detail
        assert other.find(image.sha256) == []  # not another's, even by its bytes
    with Client(signing.url, token=OWNER_KEY) as client:
        client.delete(image.id)
        client.delete(public.id)


def test_every_route_async(gateway_server: ServiceProcess, tmp_path: Path) -> None:
    path = tmp_path / "async.png"
    path.write_bytes(png_bytes(40, 30, noise=True))

    async def scenario() -> None:
        async with AsyncClient(gateway_server.url, timeout=30) as client:
            seen: list[int] = []
            image = await client.upload(path, progress=lambda n, t: seen.append(n))
            assert seen[-1] == path.stat().st_size and image.filename == "async.png"
            multi = await client.upload(path.read_bytes(), multipart=True, filename="m.png")
            assert multi.sha256 == image.sha256
            assert await client.info(image.id) == image
            assert (await client.get(image.id)).content == path.read_bytes()
            variant = await client.get(image.id, {"w": 20, "format": "png"})
            assert size_and_format(variant.content) == ((20, 15), "PNG")
            assert (await client.head(image.id)).size == image.byte_size
            assert (await client.blurred(image.id)).content
            found = {i.id for i in await client.find(image.sha256)}
            assert found >= {image.id, multi.id}
            page = await client.list(limit=1, sha256=image.sha256)
            assert page.images[0].id == multi.id and page.next_cursor
            listed = [i.id async for i in client.iter_images(page_size=1, sha256=image.sha256)]
            assert listed[:2] == [multi.id, image.id]
            assert await client.presets() == {}
            assert (await client.health())["status"] == "ok"
            assert (await client.ready())["status"] == "ok"
            assert "imagesvc_http" in await client.metrics()
            assert (await client.openapi())["openapi"].startswith("3.1")
            with pytest.raises(BadRequest) as bad:
                await client.get(image.id, w=99999)
            assert bad.value.parameter == "w"
            for made in (image, multi):
                await client.delete(made.id)
            with pytest.raises(NotFound):
                await client.delete(image.id)

    asyncio.run(scenario())


def test_async_signed_url(signing: ServiceProcess) -> None:
    async def scenario() -> None:
        async with AsyncClient(signing.url, token=OWNER_KEY) as client:
            image = await client.upload(png_bytes(6, 6, noise=True), visibility="private")
            signed = await client.signed_url(image.id, w=3)
            async with httpx.AsyncClient(timeout=30) as http:
                assert (await http.get(signed.url)).status_code == 200
            await client.delete(image.id)

    asyncio.run(scenario())


def test_the_docs_client_example_runs(
    gateway_server: ServiceProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = (ROOT / "docs" / "http.md").read_text()
    start = page.index("## The Python client")
    block = re.search(r"```python\n(.*?)```", page[start:], re.DOTALL)
    assert block is not None
    picture = tmp_path / "cat.png"
    picture.write_bytes(png_bytes(640, 480, noise=True))
    code = (
        block.group(1)
        .replace("http://127.0.0.1:8080", gateway_server.url)
        .replace('"cat.png"', repr(str(picture)))
    )
    names: dict[str, object] = {}
    exec(compile(code, "docs/http.md", "exec"), names)
    assert size_and_format(names["thumb"].content) == ((300, 200), "WEBP")  # type: ignore[attr-defined]
    assert capsys.readouterr().out == "404 no such image\n"
    assert str(names["signed"]).startswith(f"{gateway_server.url}/images/")
