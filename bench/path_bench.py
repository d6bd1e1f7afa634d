"""The request path as a user sees it: through HTTP, gateway, processor and cache.

- cold request: a 4000x3000 JPEG to a 300x200 JPEG never asked for before, one at a
  time, each against the in-process Pillow open + draft + thumbnail + save just before;
- cold throughput: 200 distinct transforms (8 originals x 25 sizes) at concurrency 8,
  against a 2-process Pillow pool doing the same 200;
- cached hits: one variant under `wrk -t2 -c16 -d3s` (answered from the gateway's memory).

Timed in alternating rounds (the machine's speed drifts), each figure a ratio to its
baseline measured in the same round; the median over rounds is printed.

`IMAGESVC_BENCH_OTHER=/path/to/another/checkout` also starts that checkout's services
(its own code and generated stubs) and measures both in the same rounds, for A/B
comparisons of two versions of the code; their cold throughput is also measured with
both loads running at once, which a drifting machine disturbs less.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.processor_bench import ORIGINALS, SIZES, photo, pillow_thumbnail
from tests.support import ROOT, ServiceProcess

ROUNDS = 8
COLD_CALLS = 25  # per round and stack
CONCURRENCY = 8
WRK = ["wrk", "-t2", "-c16", "-d3s"]


@dataclass
class Stack:
    """One checkout's cache, processor and gateway, and the images uploaded to it."""

    name: str
    gateway: ServiceProcess
    services: list[ServiceProcess]
    ids: list[str] = field(default_factory=list)
    serial: int = 0  # makes every cold request a new variant key
    cold: list[float] = field(default_factory=list)  # ratios to Pillow, per round
    throughput: list[float] = field(default_factory=list)  # ratios to the pool
    hits: list[float] = field(default_factory=list)  # req/s

    def cold_path(self, image_id: str, width: int, height: int) -> str:
        # The quality makes the key new; q 40-99 gives a distinct key for 60 calls per
        # width, the width (never binding: every one is the same thumbnail) the rest.
        self.serial += 1
        q, extra = 40 + self.serial % 60, self.serial // 60
        return f"/images/{image_id}?w={width + extra}&h={height}&format=jpeg&q={q}"


def start_stack(name: str, checkout: Path, root: Path) -> Stack:
    # Another checkout's services run its own code: its folder and its generated stubs.
    prefix: tuple[str, ...] = ()
    if checkout != ROOT:
        prefix = ("env", "-C", str(checkout), f"PYTHONPATH={checkout / 'gen'}")
    cache = ServiceProcess("cache", root / f"{name}-c", prefix=prefix).start()
    processor = ServiceProcess(
        "processor", root / f"{name}-p", {"IMAGESVC_CACHE_ADDRESS": cache.address}, prefix=prefix
    ).start()
    upstreams = {
        "IMAGESVC_CACHE_ADDRESS": cache.address,
        "IMAGESVC_PROCESSOR_ADDRESSES": processor.address,
        "IMAGESVC_GATEWAY_WORKERS": "2",
    }
    gateway = ServiceProcess("gateway", root / f"{name}-g", upstreams, prefix=prefix).start()
    return Stack(name, gateway, [gateway, processor, cache])


def cold_round(
    stacks: list[Stack], clients: dict[str, list[httpx.Client]], original: bytes
) -> float:
    """One round of cold requests, call by call in turn with Pillow (the machine's
    speed drifts within seconds): each stack's median ratio to the Pillow call just
    before it is appended to its `cold`; Pillow's median ms is returned."""
    ratios: dict[str, list[float]] = {s.name: [] for s in stacks}
    pillow: list[float] = []
    for n in range(COLD_CALLS):
        start = time.perf_counter()
        pillow_thumbnail(original, (300, 200))
        base = time.perf_counter() - start
        pillow.append(base)
        for stack in stacks[n % len(stacks) :] + stacks[: n % len(stacks)]:
            path = stack.cold_path(stack.ids[0], 300, 200)
            start = time.perf_counter()
            response = clients[stack.name][0].get(path)
            ratios[stack.name].append((time.perf_counter() - start) / base)
            assert response.status_code == 200, response.text
    for stack in stacks:
        stack.cold.append(statistics.median(ratios[stack.name]))
    return statistics.median(pillow) * 1000


def stack_throughput(stack: Stack, clients: list[httpx.Client]) -> float:
    """Requests per second for 200 distinct cold transforms at concurrency 8."""
    paths = [stack.cold_path(image_id, w, h) for image_id in stack.ids for w, h in SIZES]

    def one(n: int) -> None:
        client = clients[n % CONCURRENCY]
        for path in paths[n::CONCURRENCY]:
            assert client.get(path).status_code == 200

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        start = time.perf_counter()
        list(pool.map(one, range(CONCURRENCY)))
        return len(paths) / (time.perf_counter() - start)


def pool_throughput(pool: ProcessPoolExecutor, originals: list[bytes]) -> float:
    jobs = [(data, size) for data in originals for size in SIZES]
    start = time.perf_counter()
    list(pool.map(pillow_thumbnail, *zip(*jobs, strict=True)))
    return len(jobs) / (time.perf_counter() - start)


def wrk_rate(url: str) -> float:
    out = subprocess.run([*WRK, url], capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def main() -> None:
    originals = [photo(seed) for seed in range(ORIGINALS)]
    checkouts = [("this", ROOT)]
    if other := os.environ.get("IMAGESVC_BENCH_OTHER"):
        checkouts.append(("other", Path(other).resolve()))
    with (
        tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-") as tmp,
        ProcessPoolExecutor(2) as pool,
        contextlib.ExitStack() as closing,
    ):
        stacks: list[Stack] = []
        try:
            for name, checkout in checkouts:
                stacks.append(start_stack(name, checkout, Path(tmp)))
            clients = {
                s.name: [
                    closing.enter_context(httpx.Client(base_url=s.gateway.url, timeout=60))
                    for _ in range(CONCURRENCY)
                ]
                for s in stacks
            }
            hit_paths = {}
            for stack in stacks:
                http = clients[stack.name][0]
                for data in originals:
                    response = http.post(
                        "/images", content=data, headers={"Content-Type": "image/jpeg"}
                    )
                    stack.ids.append(response.json()["id"])
                for image_id in stack.ids:  # the processor holds every original from now
                    assert http.get(stack.cold_path(image_id, 300, 200)).status_code == 200
                hit_paths[stack.name] = f"/images/{stack.ids[0]}?w=300&h=200&fit=cover"
                assert http.get(hit_paths[stack.name]).status_code == 200
            pool_throughput(pool, originals[:2])  # the pool's processes started
            pillows, pools, side_by_side = [], [], []
            for r in range(ROUNDS):
                # Each round in another order, so no stack always follows the baseline.
                order = stacks[r % len(stacks) :] + stacks[: r % len(stacks)]
                pillows.append(cold_round(order, clients, originals[0]))
                pooled = pool_throughput(pool, originals)
                pools.append(pooled)
                for stack in order:
                    rate = stack_throughput(stack, clients[stack.name])
                    stack.throughput.append(rate / pooled)
                if len(stacks) == 2:
                    # Both at once as well: each meets the same load from elsewhere on the
                    # machine at the same moment, so their ratio drifts less.
                    with ThreadPoolExecutor(2) as both:
                        rates = list(
                            both.map(lambda s: stack_throughput(s, clients[s.name]), stacks)
                        )
                    side_by_side.append(rates[0] / rates[1])
                if shutil.which("wrk") and r % 2 == 0:
                    # Every other round: the first to follow the cold load meets its
                    # stores still finishing, so the stacks take that place in turn.
                    for stack in stacks if r % 4 == 0 else stacks[::-1]:
                        stack.hits.append(wrk_rate(stack.gateway.url + hit_paths[stack.name]))
            print(
                "path: through HTTP (2 gateway workers), 4000x3000 JPEG -> 300x200 JPEG; "
                f"medians of {ROUNDS} alternating rounds (Pillow {statistics.median(pillows):.1f} "
                f"ms, 2-process pool {statistics.median(pools):.1f} req/s)"
            )
            for stack in stacks:
                label = "" if len(stacks) == 1 else f" [{stack.name}]"
                print(
                    f"  cold request{label}: {statistics.median(stack.cold):.3f}x Pillow ("
                    + ", ".join(f"{x:.3f}" for x in stack.cold)
                    + ")"
                )
                print(
                    f"  cold throughput{label}: {statistics.median(stack.throughput):.3f}x the "
                    "pool (" + ", ".join(f"{x:.3f}" for x in stack.throughput) + ")"
                )
                if stack.hits:
                    print(
                        f"  cached hits{label}: {statistics.median(stack.hits):.0f} req/s ("
                        + ", ".join(f"{x:.0f}" for x in stack.hits)
                        + ")"
                    )
            if len(stacks) == 2:
                this, other_stack = stacks

                def paired(a: list[float], b: list[float]) -> str:
                    ratios = [x / y for x, y in zip(a, b, strict=True)]
                    return (
                        f"{statistics.median(ratios):.3f} ("
                        + ", ".join(f"{x:.3f}" for x in ratios)
                        + ")"
                    )

                print(f"  this / other, cold request time: {paired(this.cold, other_stack.cold)}")
                print(
                    "  this / other, cold throughput: "
                    f"{paired(this.throughput, other_stack.throughput)}"
                )
                print(
                    "  this / other, cold throughput side by side: "
                    f"{paired(side_by_side, [1.0] * len(side_by_side))}"
                )
                if this.hits:
                    print(f"  this / other, cached hits: {paired(this.hits, other_stack.hits)}")
        finally:
            for stack in stacks:
                for server in stack.services:
                    server.terminate()
