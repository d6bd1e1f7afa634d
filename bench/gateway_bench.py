"""Gateway benchmarks against a bare Starlette app on the same uvicorn setup.

- hot path: one cached 300x200 variant under `wrk -t2 -c16 -d3s`, against a bare
  Starlette app (same uvicorn, same worker count) returning the same bytes from memory,
  in alternating rounds (the machine's load drifts); besides requests per second, the
  CPU each server spent per request (all its processes, read from /proc), which other
  load on the machine moves far less;
- cold path: the time a cold variant request spends outside the processor (gateway
  wall time minus the processor's own time for that request id).

wrk comes from Debian's package of that name; `make bench` installs it when missing.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import charts
from bench.processor_bench import photo
from tests.support import ROOT, ServiceProcess, free_port, start_all

WRK = ["wrk", "-t2", "-c16", "-d3s", "--latency"]
ROUNDS = 6
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


@dataclass(frozen=True)
class Load:
    rate: float  # requests per second
    p50: float  # ms
    p99: float  # ms
    cpu_us: float  # the server's CPU time per request, all its processes


def wrk(url: str, pid: int) -> Load:
    """One wrk run against url, served by pid and its children."""
    before = cpu_seconds(pid)
    out = subprocess.run([*WRK, url], capture_output=True, text=True, check=True).stdout
    spent = cpu_seconds(pid) - before
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]

    def percentile(p: str) -> float:
        value, unit = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return Load(rate, percentile("50"), percentile("99"), spent / max(count, 1) * 1e6)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of pid and its descendants (Linux /proc)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        pending += [int(child) for child in children]
    return total


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
            loads: dict[str, list[Load]] = {"bare Starlette": [], "gateway": []}
            targets = {
                "bare Starlette": (bare_url, bare.pid),
                "gateway": (gateway.url + path, gateway.pid),
            }
            for r in range(ROUNDS):
                for name in sorted(targets, reverse=r % 2 == 1):  # each goes first in turn
                    loads[name].append(wrk(*targets[name]))
            hot = f"one cached variant, {' '.join(WRK[1:4])}, {workers} uvicorn workers"
            charts.throughput(hot, {name: [x.rate for x in runs] for name, runs in loads.items()})
            charts.percentiles(
                hot,
                {
                    name: {
                        50: statistics.median(x.p50 for x in runs),
                        99: statistics.median(x.p99 for x in runs),
                    }
                    for name, runs in loads.items()
                },
            )
            print(
                f"gateway: one cached 300x200 variant ({len(body)} bytes), "
                f"{' '.join(WRK[1:4])}, {workers} uvicorn workers, {ROUNDS} alternating rounds"
            )
            for name, runs in loads.items():
                print(
                    f"  {name + ':':16s} {statistics.median(x.rate for x in runs):8.0f} req/s "
                    f"({min(x.rate for x in runs):.0f}-{max(x.rate for x in runs):.0f}), "
                    f"p50 {statistics.median(x.p50 for x in runs):.2f} ms, "
                    f"p99 {statistics.median(x.p99 for x in runs):.2f} ms, "
                    f"{statistics.median(x.cpu_us for x in runs):.1f} us CPU per request"
                )
            pairs = list(zip(loads["gateway"], loads["bare Starlette"], strict=True))
            rates = [ours.rate / theirs.rate for ours, theirs in pairs]
            cpus = [theirs.cpu_us / ours.cpu_us for ours, theirs in pairs]
            print(
                f"  ratio to bare Starlette: {statistics.median(rates):.2f}x in req/s "
                f"({min(rates):.2f}-{max(rates):.2f}), {statistics.median(cpus):.2f}x in CPU per "
                "request (target >= 0.8x; >= 8200 req/s, twice thumbor's 4100; p99 < 10 ms)"
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
