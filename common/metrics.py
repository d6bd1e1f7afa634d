"""Prometheus metrics of the gRPC services: calls by method and status, process
metrics, and the HTTP port that serves them (IMAGESVC_CACHE_METRICS_PORT,
IMAGESVC_PROCESSOR_METRICS_PORT)."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from common.env import Env
from common.ports import split, unavailable

# Seconds, from a hot-cache hit (tens of microseconds) to a large render.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def metrics_port(env: Env, variable: str) -> int | None:
    """The port named by variable (without its IMAGESVC_ prefix): None when unset or
    empty (no metrics port), 0 for one the system picks (announced in the log)."""
    if not (env.raw(variable) or "").strip():
        return None
    return env.integer(variable, 0, minimum=0, maximum=65535)


class MethodMetrics:
    """One method's series, their labels resolved once: a call's end costs two dict
    lookups and two increments."""

    def __init__(self, calls: Counter, latency: Histogram, service: str, method: str) -> None:
        self._calls = calls
        self._labels = (service, method)
        self._latency = latency.labels(service, method)
        self._by_code = {grpc.StatusCode.OK: calls.labels(service, method, "OK")}

    def ended(self, code: grpc.StatusCode, seconds: float) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._calls.labels(*self._labels, code.name)
        counter.inc()
        self._latency.observe(seconds)


class ServiceMetrics:
    """A service's registry: its gRPC calls, its process, and whatever else it adds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # RSS, CPU seconds, open and maximum file descriptors, start time (from /proc).
        ProcessCollector(registry=self.registry)
        self.calls = Counter(
            "imagesvc_grpc_server_handled_total",
            "gRPC calls ended, by service, method and status code.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imagesvc_grpc_server_handling_seconds",
            "Time from a gRPC call's start to its handler's end, by service and method.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def method(self, full_method: str) -> MethodMetrics:
        """The series of "/package.Service/Method"."""
        service, _, method = full_method.lstrip("/").rpartition("/")
        return MethodMetrics(self.calls, self.latency, service, method)


def serve(registry: CollectorRegistry, listen: str, port: int, variable: str) -> WSGIServer:
    """Serve registry at /metrics on port, on the host of the gRPC listen address, from a
    thread of its own (a scrape never waits for the event loop); AddressUnavailable,
    naming variable, when it cannot bind. The port chosen is server.server_port."""
    parts = split(listen)
    host = "127.0.0.1" if parts is None else parts[0]  # a unix: socket: loopback
    try:
        server, _ = start_http_server(port, host, registry)
    except OSError as exc:
        raise unavailable(f"{host}:{port}", exc, variable) from None
    return server


async def serve_beside(
    grpc_server: grpc.aio.Server,
    registry: CollectorRegistry,
    listen: str,
    port: int | None,
    variable: str,
) -> WSGIServer | None:
    """serve() for a gRPC service already listening, when port is set (None: metrics off);
    the gRPC server is stopped when they cannot be served, so the service exits whole."""
    if port is None:
        return None
    try:
        return serve(registry, listen, port, variable)
    except Exception:
        await grpc_server.stop(None)
        raise


def stop(server: WSGIServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
