"""`python -m bench.soak` (`make soak`): the whole system under a long mixed load, and
whether any service's memory grows.

Starts a cache, a processor and a gateway (real processes, as the tests do), drives
SOAK_REQUESTS (20k) mixed requests at 32 at a time over HTTP — uploads, hits, cold
renders, deletes, lists — and samples each service's resident memory (its processes'
VmRSS, from /proc) as it goes. The working set is bounded (20 to 60 live images, their
variants purged with them), so once the caches are warm memory should stay put. It
fails (exit 1) on any 5xx or failed connection, or when a service's mean RSS over the
last quarter of the run is more than 10% off its mean over the second quarter (the
first is warm-up). `--allocator` picks the C allocator every service runs with, to
compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from launcher.allocator import ALLOCATORS
from tests.support import ServiceProcess, start_all

REQUESTS = 20_000
CONCURRENCY = 32
SAMPLE_SECONDS = 0.5
TOLERANCE = 0.10  # how far the last quarter's mean RSS may be from the second's
MIN_LIVE, MAX_LIVE = 20, 60  # images kept between uploads and deletes
# Each request's kind, by weight; the working set stays bounded because deletes keep up
# with uploads, and a delete purges the image's variants everywhere.
MIX = {"upload": 10, "delete": 10, "cold": 20, "hit": 45, "list": 15}


def rss_bytes(pid: int) -> int:
    """The resident memory of pid and every process under it (uvicorn's workers)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


class Sampler(threading.Thread):
    """Samples each service's RSS every SAMPLE_SECONDS until stopped."""

    def __init__(self, services: dict[str, ServiceProcess]) -> None:
        super().__init__(daemon=True)
        self.services = services
        self.samples: dict[str, list[int]] = {name: [] for name in services}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for name, server in self.services.items():
                self.samples[name].append(rss_bytes(server.pid))
            self.stopped.wait(SAMPLE_SECONDS)


def quarters(samples: list[int]) -> list[float]:
    """The mean of each quarter of samples, in order."""
    n = len(samples)
    return [statistics.fmean(samples[i * n // 4 : (i + 1) * n // 4]) for i in range(4)]


def png(rng: random.Random) -> bytes:
    """A small photo-like PNG of its own: noise, so every upload is new bytes."""
    width, height = rng.randint(64, 320), rng.randint(64, 240)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


@dataclass
class Load:
    """What the requests found: status counts per kind, and what failed."""

    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    live: collections.deque[str] = field(default_factory=collections.deque)
    rendered: dict[str, list[int]] = field(default_factory=dict)  # image → widths made
    next_width: int = 16

    def record(self, kind: str, response: httpx.Response) -> None:
        self.statuses[kind, response.status_code] += 1
        if response.status_code >= 500:
            self.failures.append(f"{kind} {response.request.url.path}: {response.status_code}")


async def drive(url: str, requests: int, concurrency: int, seed: int = 16) -> Load:
    """Send `requests` mixed requests, `concurrency` at a time; return what they found."""
    load = Load()
    rng = random.Random(seed)
    kinds, weights = list(MIX), list(MIX.values())
    remaining = [requests]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def kind_now() -> str:
        kind = rng.choices(kinds, weights)[0]
        if kind == "delete" and len(load.live) <= MIN_LIVE:
            return "upload"
        if kind == "upload" and len(load.live) >= MAX_LIVE:
            return "delete"
        if kind in ("cold", "hit") and not load.live:
            return "upload"
        if kind == "hit" and not any(load.rendered.get(i) for i in load.live):
            return "cold"
        return kind

    async def one(http: httpx.AsyncClient) -> None:
        kind = kind_now()
        if kind == "upload":
            body = png(rng)
            response = await http.post(
                "/images?visibility=public", content=body, headers={"content-type": "image/png"}
            )
            if response.status_code == 201:
                image_id = response.json()["id"]
                load.live.append(image_id)
                load.rendered[image_id] = []
        elif kind == "delete":
            image_id = load.live.popleft()  # the oldest: no new request picks it now
            load.rendered.pop(image_id, None)
            response = await http.delete(f"/images/{image_id}")
        elif kind == "list":
            response = await http.get("/images", params={"limit": 20})
        else:
            image_id = rng.choice(load.live)
            widths = load.rendered.setdefault(image_id, [])
            if kind == "hit" and widths:
                width = rng.choice(widths)
            else:
                kind, width = "cold", load.next_width
                load.next_width = load.next_width % 400 + 1  # never upscaled past the source
                widths.append(width)
            response = await http.get(f"/images/{image_id}", params={"w": width, "format": "webp"})
        # A request racing a delete of its image may find it gone (404): fine. A 5xx is not.
        load.record(kind, response)

    async def worker(http: httpx.AsyncClient) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            try:
                await one(http)
            except httpx.HTTPError as exc:
                load.failures.append(f"{type(exc).__name__}: {exc}")

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return load


@dataclass(frozen=True)
class Verdict:
    load: Load
    seconds: float
    rss: dict[str, list[float]]  # service → its quarters' mean RSS

    def growth(self, service: str) -> float:
        """The last quarter's mean over the second's, minus one."""
        q = self.rss[service]
        return q[3] / q[1] - 1

    @property
    def flat(self) -> bool:
        return all(abs(self.growth(s)) <= TOLERANCE for s in self.rss)

    @property
    def passed(self) -> bool:
        return self.flat and not self.load.failures


def soak(
    requests: int,
    concurrency: int = CONCURRENCY,
    allocator: str = "glibc",
    report: Callable[[str], None] = print,
) -> Verdict:
    """Start the system with `allocator`, soak it, and judge it."""
    env = ALLOCATORS[allocator]
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-soak-") as tmp:
        cache, processor, gateway = start_all(Path(tmp), env, env, env)
        servers = {"cache": cache, "processor": processor, "gateway": gateway}
        for name, server in servers.items():
            preloaded = env.get("LD_PRELOAD", "")
            if preloaded and preloaded not in Path(f"/proc/{server.pid}/maps").read_text():
                raise RuntimeError(f"{name} runs without {preloaded}: is it installed?")
        sampler = Sampler(servers)
        try:
            sampler.start()
            started = time.monotonic()
            load = asyncio.run(drive(gateway.url, requests, concurrency))
            seconds = time.monotonic() - started
            sampler.stopped.set()
            sampler.join()
        finally:
            sampler.stopped.set()
            for server in servers.values():
                server.kill()
    verdict = Verdict(load, seconds, {s: quarters(v) for s, v in sampler.samples.items()})
    mib = 1024 * 1024
    report(
        f"soak: {requests} requests at {concurrency} at a time in {seconds:.0f} s "
        f"({requests / seconds:.0f} req/s), allocator {allocator}"
    )
    counts = ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(load.statuses.items()))
    report(f"  answers: {counts}")
    for service, q in verdict.rss.items():
        means = " ".join(f"{m / mib:6.1f}" for m in q)
        report(
            f"  {service:9} RSS MiB by quarter: {means}   "
            f"last vs second quarter {verdict.growth(service):+.1%}"
        )
    for failure in load.failures[:20]:
        report(f"  failed: {failure}")
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument(
        "--requests", type=int, default=int(os.environ.get("SOAK_REQUESTS", REQUESTS))
    )
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--allocator", choices=sorted(ALLOCATORS), default="glibc")
    args = parser.parse_args(argv)
    verdict = soak(args.requests, args.concurrency, args.allocator)
    if not verdict.flat:
        print(f"soak: FAILED: a service's RSS moved more than {TOLERANCE:.0%}")
    if verdict.load.failures:
        print(f"soak: FAILED: {len(verdict.load.failures)} requests failed (5xx or no answer)")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
