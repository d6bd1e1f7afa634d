"""Gateway and processor replicas: 2 of each (one cache) against 1, through HTTP with wrk.

All processes share this machine's 2 cores, so a second replica adds no CPU: what the
figures show is what the extra processes and hops cost (or, where one process could not
use both cores, what they win), not how a deployment on more machines would scale.

- hit: one cached 300x200 variant, answered from the gateways' memory;
- cold: a variant never asked for before on every request (a render each), from a
  wrk script that walks through (w, h, q) without repeating itself.

With 2 gateways, one wrk per gateway runs at once with half the threads and
connections of the single wrk that loads 1 gateway, and their rates are summed. Each
gateway of the pair knows both processors (round-robin); the single gateway only the
first. One gateway of 2 uvicorn workers (on the first processor) tells a second
replica's cost apart from a second process's. Every topology is up throughout; they are
measured in rounds, each starting with another.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import charts
from bench.processor_bench import photo
from tests.support import ServiceProcess

SECONDS = 8
ROUNDS = 3
HIT = "w=300&h=200&fit=cover&format=jpeg"
# Thumbnails from 200x150 to 399x299: all decoded at the same JPEG draft scale (1/8 of
# the 4000x3000 original), so every cold request costs about the same render.
COLD_LUA = textwrap.dedent(
    """
    local image, base, span
    local counter = 0
    local made = 0

    function setup(thread)
        thread:set("offset", made)
        made = made + 1
    end

    function init(args)
        image, base, span = args[1], tonumber(args[2]), tonumber(args[3])
    end

    function request()
        counter = counter + 1
        local k = base + offset * span + counter
        local w = 200 + k % 200
        local h = 150 + math.floor(k / 200) % 150
        local q = 40 + math.floor(k / 30000) % 50
        return wrk.format(nil, image .. "?format=jpeg&w=" .. w .. "&h=" .. h .. "&q=" .. q)
    end
    """
)
# Keys one wrk thread may take: far more than the few hundred renders of a cold run,
# and all of them together (1.5 million) far more than the runs take.
THREAD_SPAN = 20_000


@dataclass(frozen=True)
class Load:
    """What wrk measured on one gateway."""

    rate: float
    failed: int  # non-2xx answers and socket errors


def _wrk(
    url: str, threads: int, connections: int, script: Path | None, args: list[str]
) -> subprocess.Popen[str]:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{SECONDS}s", "--timeout", "10s"]
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    if args:
        command += ["--", *args]  # the script's init(args)
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def _read(proc: subprocess.Popen[str]) -> Load:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    failed = sum(
        int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|errors: connect):?\s*(\d+)", out)
    )
    socket = re.search(r"read (\d+), write (\d+), timeout (\d+)", out)
    if socket:
        failed += sum(int(n) for n in socket.groups())
    return Load(rate, failed)


class Topology:
    """Gateways that share a load; cold runs take fresh variant keys from a counter."""

    runs = 0

    def __init__(self, name: str, gateways: list[ServiceProcess], image_id: str, lua: Path):
        self.name = name
        self.gateways = gateways
        self.image_id = image_id
        self.lua = lua

    def load(self, cold: bool, threads: int = 2, connections: int = 16) -> Load:
        """wrk on every gateway at once, threads and connections split among them; the
        rates summed."""
        each_threads = threads // len(self.gateways)
        each_connections = connections // len(self.gateways)
        procs = []
        for gateway in self.gateways:
            if cold:
                Topology.runs += 1
                base = Topology.runs * THREAD_SPAN * threads
                args = [f"/images/{self.image_id}", str(base), str(THREAD_SPAN)]
                procs.append(_wrk(gateway.url, each_threads, each_connections, self.lua, args))
            else:
                url = f"{gateway.url}/images/{self.image_id}?{HIT}"
                procs.append(_wrk(url, each_threads, each_connections, None, []))
        loads = [_read(p) for p in procs]
        return Load(sum(x.rate for x in loads), sum(x.failed for x in loads))


def main() -> None:
    if shutil.which("wrk") is None:
        print("scale: wrk is not installed (apt-get install wrk); skipped")
        return
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-") as tmp:
        root = Path(tmp)
        lua = root / "cold.lua"
        lua.write_text(COLD_LUA)
        servers: list[ServiceProcess] = []

        def start(module: str, name: str, env: dict[str, str]) -> ServiceProcess:
            servers.append(ServiceProcess(module, root / name, env).start())
            return servers[-1]

        try:
            cache = start("cache", "c", {})
            to_cache = {"IMAGESVC_CACHE_ADDRESS": cache.address}
            p1 = start("processor", "p1", to_cache)
            p2 = start("processor", "p2", to_cache)
            both = f"{p1.address},{p2.address}"
            single = start(
                "gateway", "g1", {**to_cache, "IMAGESVC_PROCESSOR_ADDRESSES": p1.address}
            )
            # The same 2 gateway processes, as workers of one gateway: what a second
            # replica costs beyond a second process.
            workers = start(
                "gateway",
                "g1w2",
                {
                    **to_cache,
                    "IMAGESVC_PROCESSOR_ADDRESSES": p1.address,
                    "IMAGESVC_GATEWAY_WORKERS": "2",
                },
            )
            pair = [
                start("gateway", f"g2{n}", {**to_cache, "IMAGESVC_PROCESSOR_ADDRESSES": both})
                for n in "ab"
            ]
            with httpx.Client(base_url=single.url, timeout=60) as http:
                image_id = http.post(
                    "/images", content=photo(0), headers={"Content-Type": "image/jpeg"}
                ).json()["id"]
            # Warm up: every gateway holds the hit, every processor the original.
            for gateway in [single, workers, *pair]:
                with httpx.Client(base_url=gateway.url, timeout=60) as http:
                    assert http.get(f"/images/{image_id}?{HIT}").status_code == 200
                    for n in range(4):
                        url = f"/images/{image_id}?format=jpeg&w=100&h={100 + n}&q=95"
                        assert http.get(url).status_code == 200
            topologies = [
                Topology("1 gateway, 1 processor", [single], image_id, lua),
                Topology("1 gateway of 2 workers, 1 proc.", [workers], image_id, lua),
                Topology("2 gateways, 2 processors", pair, image_id, lua),
            ]
            results: dict[tuple[str, str], list[Load]] = {}
            for r in range(ROUNDS):
                order = topologies[r % 3 :] + topologies[: r % 3]
                for kind, cold, connections in (("hit", False, 16), ("cold", True, 8)):
                    for topology in order:
                        load = topology.load(cold, connections=connections)
                        results.setdefault((kind, topology.name), []).append(load)
        finally:
            for server in reversed(servers):
                server.terminate()
        report(results, [t.name for t in topologies])


def report(results: dict[tuple[str, str], list[Load]], names: list[str]) -> None:
    print(
        f"scale: replicas on one 2-core machine, one cache, wrk {SECONDS}s x {ROUNDS} rounds"
        " (hit: 2 threads, 16 connections in all; cold: 2 threads, 8 connections);"
        " median req/s; ratio to 1 gateway (1 worker) and 1 processor"
    )
    for kind in ("hit", "cold"):
        rates = [statistics.median(x.rate for x in results[(kind, n)]) for n in names]
        each_round = {n: [x.rate for x in results[(kind, n)]] for n in names}
        charts.throughput(f"{kind}: wrk {SECONDS}s, {ROUNDS} rounds", each_round)
        failed = [sum(x.failed for x in results[(kind, n)]) for n in names]
        for name, rate, bad in zip(names, rates, failed, strict=True):
            print(
                f"  {kind:>4} {name:>32}: {rate:8.1f} req/s {rate / rates[0]:6.2f}x ({bad} failed)"
            )
