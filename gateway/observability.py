"""Request ids, JSON access logs and Prometheus metrics, as one pure ASGI middleware;
and, when tracing is on, OpenTelemetry's around it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, values
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import process, tracing
from common.jsonlog import HotLog, request_id
from gateway.problems import PROBLEM_JSON, HTTPProblem, problem_body

log = logging.getLogger("gateway.access")
access = HotLog("gateway.access")

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


# Set by `python -m gateway` for several workers (gateway/__main__.py): each worker
# writes its series to files there, and /metrics adds up every worker's.
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
if os.environ.get(MULTIPROCESS_VARIABLE):
    # Before any metric exists in this process (they are all made in Metrics below).
    # prometheus_client's own identifier, os.getpid, is a system call on every value
    # written: four or five per request. process.pid answers the same without one.
    values.ValueClass = values.MultiProcessValue(process_identifier=process.pid)  # type: ignore[no-untyped-call]


class Tally:
    """Counter increments added up within one turn of the event loop and written as it
    ends. In multiprocess mode every write to a counter costs about as much as the rest
    of an answer from memory, and under load one turn answers many requests: the same
    counter is then written once for all of them."""

    def __init__(self) -> None:
        self._pending: dict[Counter, float] = {}

    def inc(self, counter: Counter, amount: float = 1.0) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._write)
        self._pending[counter] = self._pending.get(counter, 0.0) + amount

    def _write(self) -> None:
        pending, self._pending = self._pending, {}
        for counter, amount in pending.items():
            counter.inc(amount)


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own; `exposed` is what
    /metrics serves: these, or with several workers every worker's together."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.exposed = self.registry
        self.tally = Tally()  # for the counters every request adds to
        if os.environ.get(MULTIPROCESS_VARIABLE):
            # prometheus_client chose file-backed values at import, from the variable.
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed)  # type: ignore[no-untyped-call]
        else:
            # One worker: its process is the gateway's. (Several: each worker is its own
            # process, and the multiprocess mode does not add up process metrics.)
            ProcessCollector(registry=self.registry)
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
        self.traced = tracing.on()
        self.tally = metrics.tally
        self.bytes_in = metrics.bytes.labels("in")
        self.bytes_out = metrics.bytes.labels("out")
        # Each (route, method, status)'s counter and histogram, looked up once: a label
        # lookup costs more than the count itself, on every request.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")
        if not (rid and _REQUEST_ID.match(rid)):
            # An id must be unique, not secret (a client may choose its own): the random
            # module's generator, seeded apart in every process, needs no system call.
            rid = f"{random.getrandbits(128):032x}"
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500
        started = False
        sent = 0
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status, sent, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                if self.traced:
                    _name_span(scope)  # before the answer is sent, which ends the span
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagged_send)
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
            requests, latency = self._of(route, method, status)
            self.tally.inc(requests)
            latency.observe(elapsed)
            if received:
                self.tally.inc(self.bytes_in, received)
            if sent:
                self.tally.inc(self.bytes_out, sent)
            access.info(
                "request",
                {
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "bytes_out": sent,
                },
            )
            request_id.reset(token)

    def _of(self, route: str, method: str, status: int) -> tuple[Counter, Histogram]:
        """The request counter and latency histogram for these labels."""
        series = self._series.get((route, method, status))
        if series is None:
            # Bounded: routes are the app's, methods and statuses few (an unknown
            # method is answered 405 under "unmatched" or its route).
            requests = self.metrics.requests.labels(route, method, str(status))
            series = (requests, self.metrics.latency.labels(route, method))
            self._series[(route, method, status)] = series
        return series
