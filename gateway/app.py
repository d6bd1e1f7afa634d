"""The Starlette application: routes, lifespan, middleware and error handlers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common import jsonlog, tracing
from gateway import images, openapi, pages, params, signed_urls
from gateway.answers import answer_cache
from gateway.config import Settings
from gateway.observability import Metrics, Observability, tracing_middleware
from gateway.problems import HTTPProblem, from_grpc, problem_response
from gateway.ratelimit import Limiter
from gateway.shared import SharedAnswers
from gateway.upstream import Upstream

# What a script on another origin may read of an answer besides the CORS-safelisted
# headers (Content-Type, Cache-Control...).
CORS_EXPOSED = [
    "ETag",
    "Content-Length",
    "Location",
    "X-Cache",
    "X-Request-ID",
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
]


class Liveness(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        return {"get": {"summary": "Liveness", "responses": {"200": openapi.STATUS_OK}}}


class OriginalLiveness(Liveness):
    """/health: the original service's name for /healthz."""

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        return {
            "get": {
                "summary": "Liveness, as /healthz (the original service's route)",
                "responses": {"200": openapi.STATUS_OK},
            }
        }


class Readiness(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        settings = images.settings_of(request)
        states = await images.upstream_of(request).ready(min(2.0, settings.timeout_seconds))
        if all(state == "SERVING" for state in states.values()):
            return JSONResponse({"status": "ok", "services": states})
        return JSONResponse(
            {"status": "unavailable", "services": states},
            status_code=503,
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        return {
            "get": {
                "summary": "Readiness: both gRPC services answer SERVING",
                "responses": {"200": openapi.STATUS_OK, **openapi.errors(503)},
            }
        }


class MetricsText(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        registry = images.metrics_of(request).exposed
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        text = {"text/plain": {"schema": {"type": "string"}}}
        return {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Text exposition format.", "content": text}},
            }
        }


class OpenAPIDocument(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return JSONResponse(request.app.state.openapi)

    @staticmethod
    def openapi(context: openapi.Context) -> dict[str, Any]:
        json = {"application/json": {"schema": {"type": "object"}}}
        return {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1.", "content": json}},
            }
        }


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem)
    return problem_response(exc, request.url.path)


async def on_grpc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, grpc.aio.AioRpcError)
    settings = images.settings_of(request)
    return problem_response(from_grpc(exc, settings.retry_after_seconds), request.url.path)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
    problem = HTTPProblem(exc.status_code, title, str(exc.detail), headers=dict(exc.headers or {}))
    return problem_response(problem, request.url.path)


def create_app(settings: Settings | None = None) -> Starlette:
    """The gateway app; settings from the environment unless given."""
    settings = settings or Settings.from_env()
    jsonlog.configure("gateway", settings.log_level)  # in every worker process
    tracing.configure("gateway")
    registry = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        upstream = Upstream.connect(settings)
        hot = answer_cache(settings.hot_cache_bytes)
        watcher = asyncio.create_task(hot.watch(upstream.cache))
        limiter = Limiter.connect(settings.rate_limit_url, settings.key_prefix)
        try:
            yield {"upstream": upstream, "hot": hot, "limiter": limiter}
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await upstream.close()

    # One endpoint per path: it answers 405 listing every method the path has.
    image_route = Route("/images/{image_id}", images.Image)
    routes = [
        Route("/images", images.Images),
        image_route,
        Route("/images/{image_id}/info", images.ImageInfo),
        Route("/blurred-images/{image_id}", images.BlurredImage),
        Route("/presets", images.PresetList),
        Route("/healthz", Liveness),
        Route("/health", OriginalLiveness),
        Route("/readyz", Readiness),
        Route("/metrics", MetricsText),
        Route("/openapi.json", OpenAPIDocument),
        *pages.routes(),  # the web page at / and the API docs at /docs
    ]
    if settings.signing.enabled:
        routes.append(Route("/images/{image_id}/signed-urls", signed_urls.SignedUrls))
    # Tracing outside Observability, so a request's log line carries its trace id.
    middleware = [*tracing_middleware(), Middleware(Observability, metrics=registry)]
    if settings.cors_origins:
        # Inside Observability, so preflights are counted, logged and carry a request id.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "HEAD", "POST", "DELETE"],
                allow_headers=[
                    "Authorization",
                    "X-API-Key",
                    "Content-Type",
                    "If-None-Match",
                    "X-Request-ID",
                ],
                expose_headers=CORS_EXPOSED,
                max_age=600,
            )
        )
    # Innermost, so what it answers is counted, logged and given CORS headers too.
    middleware.append(
        Middleware(SharedAnswers, settings=settings, route=image_route, metrics=registry)
    )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            HTTPProblem: on_problem,
            grpc.aio.AioRpcError: on_grpc_error,
            HTTPException: on_http_error,
            # No handler for Exception: Observability answers whatever else is raised.
        },
        lifespan=lifespan,
    )
    # A redirect from /path/ to /path would name the host the request named, which a
    # client chooses: trailing slashes are simply not found.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.metrics = registry
    app.state.params = params.Parameters(
        params.RequestLimits(settings.max_output_dimension, settings.max_blur_sigma)
    )
    app.state.openapi = openapi.document(
        app.routes,
        openapi.Context(app.state.params.table, settings.presets, settings.signing.enabled),
    )
    return app
