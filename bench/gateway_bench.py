"""Gateway benchmarks against a bare Starlette app on the same uvicorn setup.

- hot path: one cached 300x200 variant under `wrk -t2 -c16 -d10s`, against a bare
  Starlette app (same uvicorn, same worker count) returning the same bytes from memory;
- cold path: the time a cold variant request spends outside the processor (gateway
  wall time minus the processor's own time for that request id).

wrk comes from Debian's package of that name; `make bench` installs it when missing.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from bench import charts
from bench.processor_bench import photo
from tests.support import ROOT, ServiceProcess, free_port, start_all

WRK = ["wrk", "-t2", "-c16", "-d10s", "--latency"]
BARE_APP = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    BODY = Path(os.environ["BENCH_BODY"]).read_bytes()

    async def image(request):
        return Response(BODY, media_type="image/jpeg", headers={"ETag": '"x"'})

    app = Starlette(routes=[Route("/image", image)])
    """
)


def wrk(url: str) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms)."""
    out = subprocess.run([*WRK, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(p: str) -> float:
        value, unit = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rate, percentile("50"), percentile("99")


def cold_overhead_ms(
    http: httpx.Client, image_id: str, gateway: ServiceProcess, processor: ServiceProcess
) -> tuple[float, float]:
    """Medians over cold variant requests of what the gateway adds to the processor's own
    time: (from the gateway's access log, from the HTTP client's wall clock)."""
    walls = {}
    for n in range(20):
        rid = f"cold-{n}"
        start = time.perf_counter()
        response = http.get(
            f"/images/{image_id}?w=300&h=200&format=jpeg&q={40 + n}",
            headers={"X-Request-ID": rid},
        )
        walls[rid] = (time.perf_counter() - start) * 1000
        assert response.status_code == 200

    def per_request(server: ServiceProcess, msg: str) -> dict[str, float]:
        return {
            str(e["request_id"]): float(str(e["ms"]))
            for e in server.log_entries()
            if e.get("msg") == msg and str(e.get("request_id", "")).startswith("cold-")
        }

    inside = per_request(processor, "rpc")
    at_gateway = per_request(gateway, "request")
    charts.latencies(
        "cold request, 300x200 JPEG of a 4000x3000 original",
        {
            "the processor's own time": [inside[rid] for rid in walls],
            "the gateway's (its log)": [at_gateway[rid] for rid in walls],
            "a Python HTTP client's": list(walls.values()),
        },
    )
    return (
        statistics.median(at_gateway[rid] - inside[rid] for rid in walls),
        statistics.median(walls[rid] - inside[rid] for rid in walls),
    )


def start_bare(root: Path, body: bytes, workers: str) -> tuple[subprocess.Popen[bytes], str]:
    """The baseline: a bare Starlette app on the same uvicorn setup, bytes from memory."""
    (root / "body.jpg").write_bytes(body)
    (root / "bare.py").write_text(BARE_APP)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bare:app",
        "--port",
        str(port),
        "--workers",
        workers,
        "--no-access-log",
        "--log-level",
        "warning",
        "--app-dir",
        str(root),
    ]
    env = {"BENCH_BODY": str(root / "body.jpg"), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/image"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the bare app did not start")


def main() -> None:
    if shutil.which("wrk") is None:
        print("gateway: wrk is not installed (apt-get install wrk); skipped")
        return
    workers = "2"
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-") as tmp:
        root = Path(tmp)
        cache, processor, gateway = start_all(
            root, gateway_env={"IMAGESVC_GATEWAY_WORKERS": workers}
        )
        bare: subprocess.Popen[bytes] | None = None
        try:
            with httpx.Client(base_url=gateway.url, timeout=60) as http:
                image_id = http.post(
                    "/images", content=photo(0), headers={"Content-Type": "image/jpeg"}
                ).json()["id"]
                path = f"/images/{image_id}?w=300&h=200&fit=cover&format=jpeg"
                body = http.get(path).content
                cold, cold_wall = cold_overhead_ms(http, image_id, gateway, processor)
            bare, bare_url = start_bare(root, body, workers)
            bare_rate, bare_p50, bare_p99 = wrk(bare_url)
            rate, p50, p99 = wrk(gateway.url + path)
            hot = f"one cached variant, {' '.join(WRK[1:4])}, {workers} uvicorn workers"
            charts.throughput(hot, {"bare Starlette": [bare_rate], "gateway": [rate]})
            charts.percentiles(
                hot, {"bare Starlette": {50: bare_p50, 99: bare_p99}, "gateway": {50: p50, 99: p99}}
            )
            print(
                f"gateway: one cached 300x200 variant ({len(body)} bytes), "
                f"{' '.join(WRK[1:4])}, {workers} uvicorn workers"
            )
            print(
                f"  bare Starlette from memory: {bare_rate:8.0f} req/s, "
                f"p50 {bare_p50:.2f} ms, p99 {bare_p99:.2f} ms"
            )
            print(
                f"  gateway, variant cache hit: {rate:8.0f} req/s, "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
            )
            print(
                f"  ratio to bare Starlette: {rate / bare_rate:.2f}x "
                "(targets: >= 8200 req/s, twice thumbor's 4100; p99 < 10 ms)"
            )
            print(
                f"  cold request, added over the processor's own time: {cold:.2f} ms in the "
                f"gateway ({cold_wall:.2f} ms seen by a Python HTTP client) (target <= 2 ms)"
            )
        finally:
            if bare is not None:
                bare.terminate()
                bare.wait()
            for server in (gateway, processor, cache):
                server.terminate()
