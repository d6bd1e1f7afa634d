"""The web page at / and the API docs at /docs, end to end in real headless Chromium:
Playwright driving Debian's chromium (`make engines` installs it; Playwright's own
browser downloads are not used). Every page here must load nothing from outside
loopback and log no error to the console."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright

from tests.support import ROOT, ServiceProcess, start_all

CHROMIUM = Path("/usr/bin/chromium")
# Set to a folder (docs/screenshots) to keep the screenshots there; they go to the
# test's temporary folder otherwise, so a test run changes no file in the repository.
SCREENSHOTS = os.environ.get("SCREENSHOTS_DIR", "")
KEY = "alice-web-key-0123456789"
SIGNING = f"k1:{'S' * 32}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make engines` (as root) installs Debian's chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServiceProcess]]:
    """A cache, a processor and a gateway without auth, of these tests' own: the
    gallery lists every anonymous image, so the session's (other tests', of every shape)
    would be in it. More gateways over them are appended (gateway_with)."""
    started = list(start_all(tmp_path_factory.mktemp("web")))
    yield started
    for server in reversed(started):
        server.kill()


@pytest.fixture(scope="module")
def gateway_with(
    services: list[ServiceProcess], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[dict[str, str]], ServiceProcess]:
    """Another gateway over the same services, with these settings."""

    def start(env: dict[str, str]) -> ServiceProcess:
        cache, processor = services[0], services[1]
        upstreams = {
            "IMAGESVC_CACHE_ADDRESS": cache.address,
            "IMAGESVC_PROCESSOR_ADDRESSES": processor.address,
        }
        gateway = ServiceProcess(
            "gateway", tmp_path_factory.mktemp("g") / "g", {**upstreams, **env}
        )
        services.append(gateway.start())
        return gateway

    return start


@contextmanager
def watched(browser: Browser, width: int, height: int = 900) -> Iterator[tuple[Page, list[str]]]:
    """A page of its own, and what went wrong on it: console errors, uncaught exceptions,
    and any request for another host than 127.0.0.1 (refused, never sent)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    problems: list[str] = []

    def loopback_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            problems.append(f"request off loopback: {route.request.url}")
            route.abort()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console error: {message.text}")

    context.route("**/*", loopback_only)
    page = context.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    try:
        yield page, problems
    finally:
        context.close()


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    folder = ROOT / SCREENSHOTS if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=folder / name)


def landscape(path: Path, width: int = 640, height: int = 480) -> Path:
    """A small picture with something to see in it (a sky, a sun, hills)."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        draw.line([(0, y), (width, y)], fill=(70 + y // 6, 130 + y // 8, 220 - y // 8))
    draw.ellipse([width * 0.68, height * 0.12, width * 0.84, height * 0.33], fill=(250, 205, 70))
    draw.polygon([(0, height), (0, height * 0.62), (width * 0.45, height * 0.48),
                  (width, height * 0.7), (width, height)], fill=(52, 120, 70))  # fmt: skip
    out = io.BytesIO()
    image.save(out, "PNG")
    path.write_bytes(out.getvalue())
    return path


def upload_through_the_page(page: Page, picture: Path) -> str:
    """Upload picture with the file input; its gallery entry's image id once listed."""
    page.get_by_test_id("upload-input").set_input_files(picture)
    item = page.get_by_test_id("gallery-item").filter(has_text=picture.name)
    expect(item).to_be_visible()
    # Its thumbnail, fetched by the page with its key where it has one, is shown.
    expect(item.locator("img")).to_have_js_property("naturalWidth", 240)
    return str(item.get_attribute("data-id"))


@pytest.mark.parametrize("width", [375, 1440])
def test_upload_transform_and_delete_through_the_page(
    browser: Browser, services: list[ServiceProcess], tmp_path: Path, width: int
) -> None:
    gateway = services[2]
    picture = landscape(tmp_path / f"hills-{width}-{secrets.token_hex(3)}.png")
    with watched(browser, width) as (page, problems):
        response = page.goto(f"{gateway.url}/")
        assert response is not None and response.ok
        assert "default-src 'self'" in response.headers["content-security-policy"]
        image_id = upload_through_the_page(page, picture)

        # By keyboard: the entry takes focus and Enter opens it.
        page.get_by_test_id("gallery-item").filter(has_text=picture.name).focus()
        page.keyboard.press("Enter")
        preview = page.get_by_test_id("preview")
        expect(preview).to_have_js_property("naturalWidth", 640)
        expect(page.get_by_role("heading", name=picture.name)).to_be_focused()

        page.get_by_test_id("param-w").fill("123")
        expect(preview).to_have_js_property("naturalWidth", 123)
        expect(page.get_by_text("123 \u00d7 92 px")).to_be_visible()
        url = f"{gateway.url}/images/{image_id}?w=123"
        expect(page.get_by_test_id("variant-url")).to_have_text(url)
        expect(page.locator("#curl")).to_have_text(f"curl -o image.png '{url}'")
        # The URL shown serves what the preview showed.
        assert Image.open(io.BytesIO(httpx.get(url).content)).size == (123, 92)

        # Every control has a name a screen reader reads.
        unnamed = page.evaluate(
            """() => [...document.querySelectorAll("input, select, button")]
                .filter((el) => !el.labels?.length && !el.getAttribute("aria-label")
                    && !el.getAttribute("aria-labelledby") && !el.textContent.trim())
                .map((el) => el.outerHTML)"""
        )
        assert unnamed == []
        # Usable at this width: nothing wider than the window.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        screenshot(page, tmp_path, f"page-{width}.png")

        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete image").click()
        expect(page.get_by_test_id("gallery-item").filter(has_text=picture.name)).to_have_count(0)
        expect(page.get_by_role("status").filter(has_text="Deleted")).to_be_visible()
        assert httpx.get(f"{gateway.url}/images/{image_id}").status_code == 404
    assert problems == []


def test_a_key_reads_private_images_and_signs_urls(
    browser: Browser, gateway_with: Callable[[dict[str, str]], ServiceProcess], tmp_path: Path
) -> None:
    presets = tmp_path / "presets.toml"
    presets.write_text('[square]\nw = 64\nh = 64\nfit = "cover"\n')
    gateway = gateway_with(
        {
            "IMAGESVC_API_KEYS": f"alice:{KEY}",
            "IMAGESVC_URL_SIGNING_KEYS": SIGNING,
            "IMAGESVC_PRESETS": str(presets),
        }
    )
    picture = landscape(tmp_path / "private.png", 320, 240)
    with watched(browser, 1440) as (page, problems):
        page.goto(f"{gateway.url}/")
        page.get_by_label("API key or token").fill(KEY)
        page.get_by_role("button", name="Use").click()
        # Private by default where keys are configured: only the key shows it.
        image_id = upload_through_the_page(page, picture)
        assert httpx.get(f"{gateway.url}/images/{image_id}").status_code == 404
        page.get_by_test_id("gallery-item").filter(has_text=picture.name).click()
        preview = page.get_by_test_id("preview")
        expect(preview).to_have_js_property("naturalWidth", 320)
        page.get_by_label("Preset").select_option("square")  # from GET /presets
        expect(preview).to_have_js_property("naturalHeight", 64)
        expect(page.get_by_test_id("variant-url")).to_have_text(
            f"{gateway.url}/images/{image_id}?preset=square"
        )
        page.get_by_label("Preset").select_option("")
        page.get_by_test_id("param-w").fill("100")
        expect(preview).to_have_js_property("naturalWidth", 100)
        expect(page.locator("#curl")).to_contain_text('-H "Authorization: Bearer $IMAGESVC_TOKEN"')

        page.get_by_role("button", name="Sign URL").click()
        signed = page.locator("#signed-url")
        expect(signed).to_contain_text("&sig=")
        answer = httpx.get(signed.inner_text())  # no key: the signature is the grant
        assert answer.status_code == 200
        assert Image.open(io.BytesIO(answer.content)).size == (100, 75)

        # The key stays for the tab's life (sessionStorage), not in the page's address.
        page.reload()
        expect(page.get_by_test_id("gallery-item").filter(has_text=picture.name)).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('imagesvc.token')") == KEY
        page.get_by_label("API key or token").fill("not-a-key")
        page.get_by_role("button", name="Use").click()
        expect(page.locator("#gallery-status")).to_have_text("the API key is not valid")
    # The refused list is a 401, which Chromium logs as a resource that failed: expected.
    refused = "console error: Failed to load resource: the server responded with a status of 401"
    assert [p for p in problems if not p.startswith(refused)] == []


def test_drop_several_files_and_scroll_for_more(
    browser: Browser, gateway_with: Callable[[dict[str, str]], ServiceProcess], tmp_path: Path
) -> None:
    """Files dropped together upload together, each with its progress bar; the gallery
    pages through the list (24 a page) as it scrolls, newest first."""
    gateway = gateway_with({"IMAGESVC_API_KEYS": f"bob:{KEY}"})
    auth = {"Authorization": f"Bearer {KEY}"}
    for n in range(25):  # more than a page, before the page opens
        small = io.BytesIO()
        Image.new("RGB", (8, 8), (n * 9, 80, 160)).save(small, "PNG")
        answer = httpx.post(
            f"{gateway.url}/images?filename=old-{n}.png",
            content=small.getvalue(),
            headers={**auth, "Content-Type": "image/png"},
        )
        assert answer.status_code == 201
    dropped = [landscape(tmp_path / f"dropped-{n}.png", 300 + n, 250) for n in range(3)]
    with watched(browser, 1440) as (page, problems):
        page.goto(f"{gateway.url}/")
        page.get_by_label("API key or token").fill(KEY)
        page.get_by_role("button", name="Use").click()
        items = page.get_by_test_id("gallery-item")
        expect(items).to_have_count(24)
        expect(items.first).to_contain_text("old-24.png")

        files = [{"name": p.name, "data": list(p.read_bytes())} for p in dropped]
        transfer = page.evaluate_handle(
            """files => {
                const transfer = new DataTransfer();
                for (const f of files) {
                    const bytes = new Uint8Array(f.data);
                    transfer.items.add(new File([bytes], f.name, {type: "image/png"}));
                }
                return transfer;
            }""",
            files,
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
        for picture in dropped:
            row = page.locator("#uploads li", has_text=picture.name)
            expect(row.locator("progress")).to_have_js_property("value", 1)
            expect(row).to_contain_text("stored")
            expect(items.filter(has_text=picture.name)).to_have_count(1)

        # Scrolling to the end asks for the next page (the list's cursor), once.
        page.mouse.wheel(0, 20000)
        expect(items).to_have_count(28)
        expect(page.get_by_role("button", name="Load more")).to_be_hidden()
        expect(items.last).to_contain_text("old-0.png")
    assert problems == []


def test_docs_are_swagger_ui_served_from_here(
    browser: Browser, services: list[ServiceProcess], tmp_path: Path
) -> None:
    gateway = services[2]
    with watched(browser, 1440) as (page, problems):
        response = page.goto(f"{gateway.url}/docs")
        assert response is not None and response.ok
        assert "default-src 'self'" in response.headers["content-security-policy"]
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("imageservice")
        operation = page.locator(".opblock-summary-path", has_text="/images/{image_id}/info")
        expect(operation).to_be_visible()
        screenshot(page, tmp_path, "docs-1440.png")
    assert problems == []
