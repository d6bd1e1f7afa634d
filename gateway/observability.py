"""Request ids, JSON access logs and Prometheus metrics, as one pure ASGI middleware."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.jsonlog import request_id
from gateway.problems import PROBLEM_JSON, HTTPProblem, problem_body

log = logging.getLogger("gateway.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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
                body = json.dumps(
                    problem_body(
                        HTTPProblem(500, "Internal error", "the gateway failed; see its log"),
                        scope["path"],
                    )
                ).encode()
                await tagged_send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", PROBLEM_JSON.encode()),
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
