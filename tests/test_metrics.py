"""Prometheus metrics, read over HTTP from the real services: the gRPC services' own
port, the gateway's /metrics added up over its workers, renders that outlive their
callers, and the dashboard and alert rules in ops/ against what the services export."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import processor_service_pb2 as ppb
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc
from PIL import Image

from common.errors import Reason
from common.ids import new_image_id
from tests.support import (
    ROOT,
    Samples,
    ServiceProcess,
    channel,
    collect,
    failure,
    png_bytes,
    process_request,
    sample,
    scrape,
    start_all,
    upload,
)

DASHBOARD = ROOT / "ops" / "grafana" / "imagesvc.json"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "ops" / "prometheus" / "alerts.test.yml"
PROMTOOL = shutil.which("promtool")
CALLS = "imagesvc_grpc_server_handled_total"
CACHE = "imageservice.v1.CacheService"
PROCESSOR = "imageservice.v1.ProcessorService"
Services = tuple[ServiceProcess, ServiceProcess, ServiceProcess]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A cache and a processor with metrics ports, and a gateway of two workers."""
    started = start_all(
        tmp_path_factory.mktemp("metrics"),
        cache_env={"IMAGESVC_CACHE_METRICS_PORT": "0"},
        gateway_env={"IMAGESVC_GATEWAY_WORKERS": "2"},
        processor_env={"IMAGESVC_PROCESSOR_METRICS_PORT": "0"},
    )
    yield started
    for server in reversed(started):
        assert server.terminate() == 0


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


def eventually(server: ServiceProcess, check: object, timeout: float = 10.0) -> Samples:
    """server's samples once check(samples) holds (work after a call, such as storing
    its variant, is counted when it ends)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if check(samples) or time.monotonic() > deadline:  # type: ignore[operator]
            return samples
        time.sleep(0.05)


def test_the_grpc_services_count_calls_renders_and_stores(services: Services) -> None:
    cache, processor, _ = services
    cache_before, processor_before = scrape(cache), scrape(processor)
    with channel(cache.address) as ch:
        stub = pb_grpc.CacheServiceStub(ch)
        image = upload(stub, png_bytes(64, 48, seed=1))
        missing = failure(stub.StatImage, pb.StatImageRequest(id=new_image_id()))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    request = process_request(image.id, ppb.Operation(resize=ppb.Resize(width=20)))
    with channel(processor.address) as ch:
        pstub = ppb_grpc.ProcessorServiceStub(ch)
        for _ in range(2):  # rendered, then from the processor's memory
            assert collect(pstub.Process(request, timeout=30))[0].width == 20

    after = scrape(processor)
    method = {"service": PROCESSOR, "method": "Process"}
    assert grew(processor_before, after, CALLS, **method, code="OK") == 2
    seconds = "imagesvc_grpc_server_handling_seconds_count"
    assert grew(processor_before, after, seconds, **method) == 2
    assert (
        grew(processor_before, after, "imagesvc_processor_render_seconds_count", format="png") == 1
    )
    operation = "imagesvc_processor_operation_seconds_count"
    assert grew(processor_before, after, operation, operation="resize") == 1
    hot = "imagesvc_processor_hot_cache_total"
    assert grew(processor_before, after, hot, result="miss") == 1
    assert grew(processor_before, after, hot, result="hit") == 1
    assert sample(after, "imagesvc_processor_renders_in_flight") == 0
    assert sample(after, "process_resident_memory_bytes") > 10_000_000
    assert sample(after, "process_open_fds") > 0

    # The variant is stored after the call: counted once PutVariant has ended.
    put = {"service": CACHE, "method": "PutVariant", "code": "OK"}
    after = eventually(cache, lambda s: grew(cache_before, s, CALLS, **put) == 1)
    assert grew(cache_before, after, CALLS, **put) == 1
    assert grew(cache_before, after, CALLS, service=CACHE, method="PutImage", code="OK") == 1
    assert (
        grew(cache_before, after, CALLS, service=CACHE, method="StatImage", code="NOT_FOUND") == 1
    )
    assert grew(cache_before, after, CALLS, service=CACHE, method="GetVariant", code="OK") == 1
    store = "imagesvc_cache_backend_seconds_count"
    assert grew(cache_before, after, store, store="metadata", operation="insert") == 1
    assert grew(cache_before, after, store, store="blobs", operation="put") == 1
    assert grew(cache_before, after, store, store="variants", operation="put") == 1
    lookups = "imagesvc_cache_variant_lookups_total"
    assert grew(cache_before, after, lookups, result="miss") == 1
    tier = "imagesvc_cache_variant_tier_bytes"
    assert grew(cache_before, after, tier, tier="memory") > 0
    assert sample(after, "imagesvc_cache_variant_tier_budget_bytes", tier="memory") == 256 * 2**20
    assert sample(after, "process_resident_memory_bytes") > 10_000_000


def test_the_gateways_workers_are_counted_together(services: Services) -> None:
    gateway = services[2]
    route = {"route": "/healthz", "method": "GET", "status": "200"}
    before = sample(scrape(gateway), "imagesvc_http_requests_total", **route)
    sent = 0
    served_by: set[object] = set()

    def ask(_: int) -> int:
        # A connection of its own each, so both workers accept some.
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            return client.get("/healthz").status_code

    with ThreadPoolExecutor(8) as pool:
        while len(served_by) < 2:
            assert sent < 400, "one worker took every connection"
            assert set(pool.map(ask, range(40))) == {200}
            sent += 40
            served_by = {
                e["pid"]
                for e in gateway.log_entries()
                if e.get("msg") == "request" and e.get("route") == "/healthz"
            }
    # Whichever worker answers /metrics, it counts every worker's requests.
    for _ in range(4):
        counted = sample(scrape(gateway), "imagesvc_http_requests_total", **route) - before
        assert counted == sent


def slow_jpeg() -> bytes:
    """A 4000x3000 photo-like JPEG: blurred and encoded as AVIF, seconds of work."""
    base = Image.effect_noise((400, 300), 50).convert("RGB")
    out = io.BytesIO()
    base.resize((4000, 3000), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_renders_past_their_deadline_are_counted_and_bound_new_ones(
    cache_server: ServiceProcess, stub: pb_grpc.CacheServiceStub, tmp_path: Path
) -> None:
    processor = ServiceProcess(
        "processor",
        tmp_path / "p",
        {
            "IMAGESVC_CACHE_ADDRESS": cache_server.address,
            "IMAGESVC_PROCESSOR_METRICS_PORT": "0",
            "IMAGESVC_PROCESSOR_WORKERS": "2",
            "IMAGESVC_PROCESSOR_MAX_ABANDONED": "1",
            "IMAGESVC_PROCESSING_TIMEOUT_SECONDS": "0.5",
        },
    ).start()
    try:
        slow = upload(stub, slow_jpeg()).id
        quick = upload(stub, png_bytes(32, 32, seed=2)).id

        def blurred(image_id: str, sigma: float) -> ppb.ProcessRequest:
            op = ppb.Operation(blur=ppb.Blur(sigma=sigma))
            return process_request(image_id, op, format=ppb.OUTPUT_FORMAT_AVIF)

        with channel(processor.address) as ch:
            pstub = ppb_grpc.ProcessorServiceStub(ch)
            late = failure(pstub.Process, blurred(slow, 45), timeout=60)
            assert (late.code, late.reason) == (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                Reason.DEADLINE_EXCEEDED,
            )
            # Its render runs on, holding a thread nobody waits for: the one allowed.
            refused = failure(pstub.Process, blurred(quick, 3), timeout=60)
            samples = scrape(processor)
            assert (refused.code, refused.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                Reason.OVERLOADED,
            )
            assert sample(samples, "imagesvc_processor_abandoned_renders") == 1
            assert sample(samples, "imagesvc_processor_deadline_exceeded_total") == 1
            assert sample(samples, "imagesvc_processor_refused_total", reason="abandoned") == 1
            assert sample(samples, "imagesvc_processor_refused_total", reason="capacity") == 0
            code = {"service": PROCESSOR, "method": "Process"}
            assert sample(samples, CALLS, **code, code="DEADLINE_EXCEEDED") == 1
            assert sample(samples, CALLS, **code, code="RESOURCE_EXHAUSTED") == 1
            # Once it has ended, renders are admitted again.
            done = eventually(
                processor,
                lambda s: sample(s, "imagesvc_processor_abandoned_renders") == 0,
                timeout=120,
            )
            assert sample(done, "imagesvc_processor_abandoned_renders") == 0
            assert collect(pstub.Process(blurred(quick, 3), timeout=60))[0].width == 32
        assert processor.terminate() == 0
    finally:
        processor.kill()


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_queries() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def names_in(query: str) -> set[str]:
    return set(re.findall(r"\b(?:imagesvc|process)_[a-z_]+\b", query))


def test_every_metric_the_dashboard_and_alerts_use_is_exported(services: Services) -> None:
    gateway = services[2]
    # Traffic that touches every series: an upload, a render, a cached variant.
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        created = http.post(
            "/images", content=png_bytes(40, 30, seed=3), headers={"Content-Type": "image/png"}
        )
        assert created.status_code == 201
        for _ in range(2):
            assert http.get(created.headers["location"] + "?w=16").status_code == 200
    exported = {name for server in services for name, _ in scrape(server)}
    used = set().union(*map(names_in, dashboard_queries() + alert_queries()))
    assert len(used) > 20  # the pattern finds them
    assert used - exported == set()


def test_the_alert_rules_and_the_dashboards_queries_pass_promtool(tmp_path: Path) -> None:
    assert PROMTOOL, "promtool is missing: `make engines` (as root) installs Debian's prometheus"
    check = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent, capture_output=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # The dashboard's queries, with Grafana's variables filled in, as recording rules:
    # promtool parses each one.
    variables = {"$__rate_interval": "5m", "$job_gateway": ".*", "$job_cache": ".*"}
    variables |= {"$job_processor": ".*", "$instance": ".*"}
    records = []
    for n, query in enumerate(dashboard_queries()):
        for variable, value in variables.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        records.append({"record": f"dashboard:query_{n}", "expr": query})
    rules = tmp_path / "dashboard.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    parsed = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True)
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
