"""OpenTelemetry traces across the three services, and the trace id in their logs.

The services export by OTLP to a collector this test runs itself: OTLP's TraceService
on an ephemeral loopback port, keeping what it is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common import jsonlog, tracing
from common.jsonlog import request_id
from processor.metrics import ProcessorMetrics
from processor.workers import Workers
from tests.support import ServiceProcess, png_bytes, start_all

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent, with the service.name of its resource."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource in request.resource_spans:
                names = [a.value.string_value for a in resource.resource.attributes]
                keys = [a.key for a in resource.resource.attributes]
                service = dict(zip(keys, names, strict=True)).get("service.name", "")
                for scope in resource.scope_spans:
                    for s in scope.spans:
                        self.spans.append(
                            Span(
                                service,
                                s.name,
                                s.kind,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    kept = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(kept, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield kept, port
    server.stop(None)


@pytest.fixture(scope="module")
def traced(
    collector: tuple[Collector, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, ServiceProcess, ServiceProcess]]:
    """A cache, a processor and a gateway exporting their spans to the collector."""
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: spans arrive while the test waits
    }
    with pytest.MonkeyPatch.context() as env:  # every service inherits the test's
        for name, value in otel.items():
            env.setenv(name, value)
        servers = start_all(tmp_path_factory.mktemp("tracing"))
    yield servers
    for server in servers:
        server.kill()


def spans_of(collector: Collector, trace_id: str, until: list[tuple[str, str]]) -> list[Span]:
    """The trace's spans, once it has one of each (service, name) in until."""
    deadline = time.monotonic() + 30
    while True:
        spans = collector.of_trace(trace_id)
        have = {(s.service, s.name) for s in spans}
        if all(wanted in have for wanted in until) or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def one(spans: list[Span], service: str, name: str, kind: int | None = None) -> Span:
    found = [s for s in spans if (s.service, s.name) == (service, name)]
    found = [s for s in found if kind is None or s.kind == kind]
    assert len(found) == 1, (
        service,
        name,
        [(s.service, s.name, s.kind, s.span_id, s.parent_id) for s in spans],
    )
    return found[0]


def test_one_trace_covers_gateway_processor_and_cache(
    traced: tuple[ServiceProcess, ServiceProcess, ServiceProcess],
    collector: tuple[Collector, int],
) -> None:
    cache, processor, gateway = traced
    kept = collector[0]
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        upload = http.post("/images", files={"file": ("t.png", png_bytes(40, 30), "image/png")})
        assert upload.status_code == 201, upload.text
        image_id = upload.json()["id"]
        # The caller's own span, as a traced client would send it.
        trace_id, caller = os.urandom(16).hex(), os.urandom(8).hex()
        answer = http.get(
            f"/images/{image_id}?w=20&format=png",
            headers={"traceparent": f"00-{trace_id}-{caller}-01"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-cache"] == "MISS"

    cache_rpc = "imageservice.v1.CacheService/"
    spans = spans_of(
        kept,
        trace_id,
        [
            ("imagesvc-gateway", "GET /images/{image_id}"),
            ("imagesvc-processor", "render"),
            ("imagesvc-cache", f"/{cache_rpc}PutVariant"),
        ],
    )
    assert {s.service for s in spans} == {
        "imagesvc-gateway",
        "imagesvc-processor",
        "imagesvc-cache",
    }

    # HTTP: the gateway's span is the caller's child.
    request = one(spans, "imagesvc-gateway", "GET /images/{image_id}", SERVER)
    assert request.parent_id == caller

    # gateway -> processor: the client span under the request, the server span under it.
    calls = [s for s in spans if s.service == "imagesvc-gateway" and s.kind == CLIENT]
    assert calls and all(c.parent_id == request.span_id for c in calls)
    to_processor = [c for c in calls if "ProcessorService" in c.name]
    assert len(to_processor) == 1, calls
    process = one(spans, "imagesvc-processor", to_processor[0].name, SERVER)
    assert process.parent_id == to_processor[0].span_id

    # processor -> cache: the lookup, the original's fetch and the store, each a client
    # span of the processor's call answered by the cache's server span under it.
    for method in ("GetVariant", "GetImage", "PutVariant"):
        name = f"/{cache_rpc}{method}"
        client = one(spans, "imagesvc-processor", name, CLIENT)
        assert client.parent_id == process.span_id, method
        assert one(spans, "imagesvc-cache", name, SERVER).parent_id == client.span_id, method

    # The render ran on a worker thread, still within the call's span.
    assert one(spans, "imagesvc-processor", "render").parent_id == process.span_id

    # Every service's log lines about the request carry its trace id.
    lines = {s.module: s.log_entries() for s in (cache, processor, gateway)}
    for module, entries in lines.items():
        assert any(e.get("trace_id") == trace_id for e in entries), module
    access = [e for e in lines["gateway"] if e.get("msg") == "request" and e.get("status") == 200]
    assert access[-1]["trace_id"] == trace_id
    assert access[-1]["span_id"] == request.span_id


def test_the_environment_decides_whether_to_trace() -> None:
    assert tracing.wanted({}) is None
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp,console"}) == "otlp,console"
    # An endpoint alone means the specification's default exporter, OTLP.
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}) == "otlp"
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}) == "otlp"
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}
    assert tracing.wanted(disabled) is None


def test_a_log_line_within_a_span_carries_its_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    # As configure() leaves it with tracing on (an earlier test may have turned it off).
    monkeypatch.setattr(tracing, "_on", True)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    formatter = jsonlog.JsonFormatter("test")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None)

    outside = json.loads(formatter.format(record))
    assert "trace_id" not in outside and "span_id" not in outside
    with provider.get_tracer("test").start_as_current_span("work"):
        inside = json.loads(formatter.format(record))
    (span,) = exporter.get_finished_spans()
    assert inside["trace_id"] == format(span.context.trace_id, "032x")
    assert inside["span_id"] == format(span.context.span_id, "016x")
    # Configured off, no span is looked for (none is ever started then).
    monkeypatch.setattr(tracing, "_on", False)
    with provider.get_tracer("test").start_as_current_span("work"):
        assert "trace_id" not in json.loads(formatter.format(record))


def test_render_threads_run_in_their_callers_context() -> None:
    """What a render thread sees of the call (the request id here, the trace as well)."""
    workers = Workers(2, 2, 10, max_abandoned=2, metrics=ProcessorMetrics())

    async def main() -> list[str]:
        async def one(rid: str) -> str:
            request_id.set(rid)
            return await workers.submit(request_id.get, "label")

        return list(await asyncio.gather(one("first"), one("second")))

    try:
        assert asyncio.run(main()) == ["first", "second"]
    finally:
        workers.shutdown()


def test_an_exporter_the_sdk_does_not_know_stops_the_service(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "IMAGESVC_DATA_DIR": str(tmp_path),
        "IMAGESVC_CACHE_LISTEN": "127.0.0.1:0",
        "OTEL_TRACES_EXPORTER": "carrier-pigeon",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cache"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "cache: bad configuration: OTEL_TRACES_EXPORTER=carrier-pigeon" in done.stderr
