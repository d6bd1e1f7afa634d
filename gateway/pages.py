"""The web page at / and the API docs at /docs: static files shipped in the package
(gateway/web/, and Swagger UI from the swagger-ui-bundle-v2 package), served under a
Content-Security-Policy that lets them load nothing but the gateway's own."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import openapi

WEB = Path(__file__).parent / "web"
# Scripts, styles, fetches and frames from this origin only; no inline script, no eval.
# The page shows images it fetched itself (with the caller's key) as blob: URLs; Swagger
# UI's stylesheet draws its icons from data: URLs.
_POLICY = (
    "default-src 'self'; img-src 'self' {images}; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
PAGE_POLICY = _POLICY.format(images="blob:")
DOCS_POLICY = _POLICY.format(images="data:")


def _headers(policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # a signed URL in the page's address stays here
        # Revalidated each time (ETag), so a new version of the gateway shows at once.
        "Cache-Control": "no-cache",
    }


class _WithHeaders:
    """Pure ASGI: adds headers to every answer of the app it wraps (StaticFiles)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with)


def swagger_ui_dir() -> Path:
    """Where swagger-ui-bundle-v2 keeps Swagger UI's files (its documented attribute; the
    folder's name carries the version)."""
    return Path(str(importlib.import_module("swagger_ui_bundle").swagger_ui_path))


def _html(summary: str) -> dict[str, Any]:
    """A page's OpenAPI: static HTML that loads its scripts from /ui or /docs/assets."""
    return {
        "get": {
            "summary": summary,
            "responses": {
                "200": {
                    "description": "An HTML page.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    }


class Index(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return FileResponse(WEB / "index.html", headers=_headers(PAGE_POLICY))

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        return _html("The web page (upload, browse, transform)")


class Docs(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return FileResponse(WEB / "docs.html", headers=_headers(DOCS_POLICY))

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        return _html("These docs, in Swagger UI")


def routes() -> list[BaseRoute]:
    return [
        Route("/", Index),
        Route("/docs", Docs),
        # Only GET and HEAD; a missing file is the usual 404 problem (HTTPException).
        Mount("/ui", _WithHeaders(StaticFiles(directory=WEB), _headers(PAGE_POLICY))),
        Mount(
            "/docs/assets",
            _WithHeaders(StaticFiles(directory=swagger_ui_dir()), _headers(DOCS_POLICY)),
        ),
    ]
