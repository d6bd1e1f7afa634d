"""Request ids, JSON access logs and Prometheus metrics, as one pure ASGI middleware;
and, when tracing is on, OpenTelemetry's around it."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import tracing
from common.jsonlog import request_id

log = logging.getLogger("gateway.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Not traced unless OTEL_PYTHON_ASGI_EXCLUDED_URLS or OTEL_PYTHON_EXCLUDED_URLS say
# otherwise: probes and scrapes, every few seconds, would bury the requests.
UNTRACED_URLS = "/healthz$,/health$,/readyz$,/metrics$"


def tracing_middleware() -> list[Middleware]:
    """OpenTelemetry's ASGI middleware, when tracing is on: a server span per request
    (child of the caller's `traceparent`, if any), named by its method until
    Observability knows its route. Body reads and writes are no spans of their own: an
    image is sent in many."""
    if not tracing.on():
        return []
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.util.http import get_excluded_urls, parse_excluded_urls

    variables = ("OTEL_PYTHON_ASGI_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS")
    if any(name in os.environ for name in variables):
        excluded = get_excluded_urls("ASGI")
    else:
        excluded = parse_excluded_urls(UNTRACED_URLS)

    def named(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return scope.get("method", "HTTP"), {}

    return [
        Middleware(
            OpenTelemetryMiddleware,
            excluded_urls=excluded,
            default_span_details=named,
            exclude_spans=["receive", "send"],
        )
    ]


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imagesvc_http_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imagesvc_http_request_duration_seconds",
            "HTTP request latency by route and method.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.bytes = Counter(
            "imagesvc_http_bytes_total",
            "HTTP body bytes received (in) and sent (out).",
            ["direction"],
            registry=self.registry,
        )
        self.variants = Counter(
            "imagesvc_variant_cache_total",
            "Variants served, by whether the variant cache had them.",
            ["result"],
            registry=self.registry,
        )


def _name_span(scope: Scope) -> None:
    """Name the request's span by its route, once routed: one name for every image's
    requests, not one per path."""
    span = trace.get_current_span()
    route = getattr(scope.get("route"), "path", None)
    if route is not None and span.is_recording():
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)


class Observability:
    """Binds a request id (X-Request-ID in, or a new one), times, counts and logs."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500
        sent = 0
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                _name_span(scope)  # before the answer is sent, which ends the span
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await tagged_send(message)

        try:
            await self.app(scope, counting_receive, watched_send)
        except Exception:
            # Answered here, inside the request id's scope, as a problem document; the
            # traceback goes to the log only.
            log.exception("unhandled error")
            if not started:
                body = b'{"type":"about:blank","title":"Internal error","status":500}'
                await tagged_send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await tagged_send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(elapsed)
            self.metrics.bytes.labels("in").inc(received)
            self.metrics.bytes.labels("out").inc(sent)
            log.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "bytes_out": sent,
                },
            )
            request_id.reset(token)
