"""Processor benchmarks, each against in-process Pillow measured in the same run.

- single cold transform: a 4000x3000 JPEG to a 300x200 JPEG through Process (the
  variant cold, the original stored in the cache service), against Pillow's open +
  draft + thumbnail + save on bytes in memory: each call against Pillow timed on the
  core its render ran on (Linux: read from /proc), and against Pillow spread over
  both cores;
- cold throughput: 200 distinct transforms (8 originals x 25 sizes) at concurrency 8,
  against a 2-process Pillow pool doing the same 200 with no network; and the
  service with 2 workers against itself with 1;
- hit cost: a cached variant through the processor against the same variant read
  from the cache service directly.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from imageservice.v1 import cache_service_pb2 as pb
from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from imageservice.v1 import processor_service_pb2 as ppb
from imageservice.v1 import processor_service_pb2_grpc as ppb_grpc
from PIL import Image

from bench import charts
from bench.timing import ThreadCores, core_matched, interleaved_ms, median_ms
from tests.support import (
    CORPUS,
    ServiceProcess,
    channel,
    collect,
    process_request,
    upload,
)

SIZES = [(300 + 4 * n, 200) for n in range(25)]
ORIGINALS = 8
CONCURRENCY = 8
# Many short alternating blocks: the machine's speed drifts by 20% within a minute.
COLD_RUNS, COLD_ROUNDS = 120, 12
# JPEG qualities 80+salt keep each throughput run cold (2 and 3 serve the 1-worker runs).
THROUGHPUT_SALTS = (1, 4, 5, 6, 7)


def photo(seed: int) -> bytes:
    """A 4000x3000 JPEG from a real photograph (about 2 MB), distinct per seed."""
    source = Image.open(CORPUS / "exif-orientation" / "Landscape_1.jpg").convert("RGB")
    source = source.rotate(seed * 0.5, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    source.resize((4000, 3000), Image.Resampling.LANCZOS).save(out, "JPEG", quality=90)
    return out.getvalue()


def pillow_thumbnail(data: bytes, size: tuple[int, int]) -> int:
    """The baseline: what a bare Pillow script does for one thumbnail."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", size)
    image.thumbnail(size)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=82)
    return len(out.getvalue())


def resize(width: int, height: int) -> ppb.Operation:
    return ppb.Operation(resize=ppb.Resize(width=width, height=height))


def jpeg(request: ppb.ProcessRequest, quality: int = 82) -> ppb.ProcessRequest:
    """JPEG output; a distinct quality gives a distinct (cold) variant key."""
    request.transformation.output.format = ppb.OUTPUT_FORMAT_JPEG
    request.transformation.output.quality = quality
    return request


def service_throughput(address: str, ids: list[str], salt: int) -> float:
    """Requests per second for the 200 distinct transforms at concurrency 8."""
    jobs = [(image_id, size) for image_id in ids for size in SIZES]
    with channel(address) as ch:
        stub = ppb_grpc.ProcessorServiceStub(ch)

        def one(job: tuple[str, tuple[int, int]]) -> None:
            image_id, (w, h) = job
            # The salt (the JPEG quality) makes every run's keys new: all cold.
            request = jpeg(process_request(image_id, resize(w, h)), quality=80 + salt)
            collect(stub.Process(request, timeout=120))

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(one, jobs[:CONCURRENCY]))  # warm the channel and workers
            start = time.perf_counter()
            list(pool.map(one, jobs))
            return len(jobs) / (time.perf_counter() - start)


def pool_throughput(originals: list[bytes]) -> float:
    jobs = [(data, size) for data in originals for size in SIZES]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(pillow_thumbnail, *zip(*jobs[:4], strict=True)))
        start = time.perf_counter()
        list(pool.map(pillow_thumbnail, *zip(*jobs, strict=True)))
        return len(jobs) / (time.perf_counter() - start)


def main() -> None:
    originals = [photo(seed) for seed in range(ORIGINALS)]
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-") as tmp:
        root = Path(tmp)
        cache = ServiceProcess("cache", root / "cache").start()
        processors: list[ServiceProcess] = []
        try:

            def processor(workers: int) -> ServiceProcess:
                env = {
                    "IMAGESVC_CACHE_ADDRESS": cache.address,
                    "IMAGESVC_PROCESSOR_WORKERS": str(workers),
                }
                server = ServiceProcess("processor", root / f"p{workers}", env).start()
                processors.append(server)
                return server

            two = processor(os.cpu_count() or 2)
            with channel(cache.address) as cch, channel(two.address) as pch:
                cstub = pb_grpc.CacheServiceStub(cch)
                pstub = ppb_grpc.ProcessorServiceStub(pch)
                ids = [upload(cstub, data).id for data in originals]
                print(
                    f"processor: 4000x3000 JPEG ({len(originals[0]) / 1e6:.1f} MB) -> 300x200 JPEG"
                )

                def cold(width: int = 0) -> Callable[[int], None]:
                    def call(i: int) -> None:
                        # Every call a new key (i counts from the warm-ups' negatives); the
                        # box's width never binds, so each is the same 267x200 thumbnail.
                        n = i + COLD_ROUNDS
                        box = resize(300 + n // 60 + width, 200)
                        request = jpeg(process_request(ids[0], box), quality=20 + n % 60)
                        metadata = (("x-request-id", f"cold-{width}-{i}"),)
                        collect(pstub.Process(request, metadata=metadata))

                    return call

                # In alternating blocks: the machine's speed drifts, and timing
                # all of one and then all of the other would measure the drift.
                # Pillow's blocks take each core in turn: the render runs on either.
                base, service = interleaved_ms(
                    lambda i: pillow_thumbnail(originals[0], (300, 200)),
                    cold(),
                    runs=COLD_RUNS,
                    rounds=COLD_ROUNDS,
                    spread_baseline=True,
                    record=charts.recorder(
                        "single cold transform, Pillow on each core in turn",
                        "Pillow",
                        "Process",
                    ),
                )
                inside = statistics.median(
                    float(str(e["ms"]))
                    for e in two.log_entries()
                    if e.get("msg") == "rpc" and str(e.get("request_id", "")).startswith("cold-0-")
                )
                # The judged figure: each call against Pillow on the core its render
                # ran on, timed in the same round. The cores drift apart here (one 25%
                # slower for seconds at a time) and a render lands on either, so a
                # baseline spread over both mixes two speeds (reported too, as before).
                matched, matched_ms, matched_base = core_matched(
                    lambda i: pillow_thumbnail(originals[0], (300, 200)),
                    cold(width=20),
                    ThreadCores(two.pid),
                    runs=COLD_RUNS,
                    rounds=COLD_ROUNDS,
                    record=charts.recorder(
                        "single cold transform, Pillow pinned to each core per round",
                        "Pillow",
                        "Process",
                    ),
                )
                report(
                    "single cold transform, seen by a Python gRPC client",
                    f"Pillow {matched_base:.1f} ms, service (Process) {matched_ms:.1f} ms: "
                    f"{matched:.2f}x (median of each call over Pillow on its render's core)",
                    "<= 1.10x",
                )
                report(
                    "the same against Pillow spread over both cores",
                    f"Pillow {base:.1f} ms, service (Process) {service:.1f} ms: "
                    f"{service / base:.2f}x",
                    "",
                )
                report(
                    "single cold transform, the processor's own time",
                    f"{inside:.1f} ms: {inside / base:.2f}x",
                    "",
                )

                hit_request = jpeg(process_request(ids[0], resize(300, 200)), quality=82)
                meta, _ = collect(pstub.Process(hit_request))
                time.sleep(0.5)
                direct = pb.GetVariantRequest(image_id=ids[0], key=meta.key)
                via_cache = median_ms(
                    lambda i: list(cstub.GetVariant(direct)),
                    200,
                    record=charts.recorder("cache hit", "GetVariant, from the cache"),
                )

                def via_processor(i: int) -> None:
                    list(pstub.Process(hit_request, metadata=(("x-request-id", f"hit-{i}"),)))

                end_to_end = median_ms(
                    via_processor,
                    200,
                    record=charts.recorder("cache hit", "Process, through the processor"),
                )
                added = processor_overhead_ms(two, cache)
                report(
                    "cache hit, added inside the processor",
                    f"{added:.2f} ms (its Process time less any wait on the cache service)",
                    "<= 1 ms",
                )
                report(
                    "cache hit, end to end",
                    f"direct from cache {via_cache:.2f} ms, through processor {end_to_end:.2f} ms",
                    "",
                )

            # Alternated and repeated: this machine's speed drifts by 20% within a
            # minute, so each service run is compared with the pool run just before it.
            pools, svcs = [], []
            for salt in THROUGHPUT_SALTS:
                pools.append(pool_throughput(originals))
                svcs.append(service_throughput(two.address, ids, salt=salt))
            pool, svc2 = statistics.median(pools), statistics.median(svcs)
            ratios = [s / p for s, p in zip(svcs, pools, strict=True)]
            against_pool = {"2-process Pillow pool": pools, "service": svcs}
            charts.throughput("cold throughput, 200 distinct at concurrency 8", against_pool)
            one = processor(1)
            svc1 = service_throughput(one.address, ids, salt=2)
            charts.throughput(
                "1 render thread to one per core", {"1 render thread": [svc1], "one per core": svcs}
            )
            report(
                f"cold throughput, {len(SIZES) * ORIGINALS} distinct at concurrency {CONCURRENCY}",
                f"2-process Pillow pool {pool:.1f} req/s, service {svc2:.1f} req/s (medians): "
                f"{statistics.median(ratios):.2f}x (median of {len(ratios)} adjacent pairs: "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + ")",
                ">= 0.95x",
            )
            report(
                "cold throughput, 1 render thread to one per core",
                f"{svc1:.1f} req/s to {svc2:.1f} req/s: {svc2 / svc1:.2f}x",
                ">= 1.8x",
            )
            # The same services confined to one core (cache and processor alike): what
            # "uses every core" buys, without the second core quietly helping.
            pin = ("taskset", "-c", "0")
            single = ServiceProcess("cache", root / "c-1core", prefix=pin).start()
            processors.append(single)
            with channel(single.address) as ch:
                single_ids = [upload(pb_grpc.CacheServiceStub(ch), data).id for data in originals]
            env = {"IMAGESVC_CACHE_ADDRESS": single.address, "IMAGESVC_PROCESSOR_WORKERS": "1"}
            pinned = ServiceProcess("processor", root / "p-1core", env, prefix=pin).start()
            processors.append(pinned)
            svc_core = service_throughput(pinned.address, single_ids, salt=3)
            charts.throughput("the service on 1 core to 2", {"1 core": [svc_core], "2 cores": svcs})
            report(
                "cold throughput, the service on 1 core to 2 cores",
                f"{svc_core:.1f} req/s to {svc2:.1f} req/s: {svc2 / svc_core:.2f}x",
                ">= 1.8x",
            )
        finally:
            for server in processors:
                server.terminate()
            cache.terminate()


def report(what: str, figures: str, target: str) -> None:
    print(f"  {what}: {figures}" + (f" (target {target})" if target else ""))


def processor_overhead_ms(processor: ServiceProcess, cache: ServiceProcess) -> float:
    """Median time a hit-* request spent in the processor, less any time it waited on
    the cache service for it (none when the processor holds the variant in memory)."""
    cache_ms = {
        e["request_id"]: float(str(e["ms"]))
        for e in cache.log_entries()
        if str(e.get("request_id", "")).startswith("hit-") and e.get("msg") == "rpc"
    }
    deltas = [
        float(str(e["ms"])) - cache_ms.get(e["request_id"], 0.0)
        for e in processor.log_entries()
        if e.get("msg") == "rpc" and str(e.get("request_id", "")).startswith("hit-")
    ]
    return statistics.median(deltas)
