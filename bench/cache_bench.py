"""Cache service put/get throughput against writing and reading the same bytes on the same disk.

The baseline does what a durable store must at least do: write a temp file, fsync,
rename, fsync the folder; and read the file back. The service adds gRPC streaming,
hashing, validation by decoding, and the SQLite commit.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from imageservice.v1 import cache_service_pb2_grpc as pb_grpc
from PIL import Image

from bench import charts
from bench.timing import median_ms
from tests.support import ServiceProcess, channel, download, upload

KiB = 1024
MiB = 1024 * KiB


def noise_image(target: int, fmt: str) -> bytes:
    """An incompressible image of about target bytes."""
    side = int((target / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    while True:
        out = io.BytesIO()
        image.save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {"compress_level": 1}))
        if len(out.getvalue()) >= target * 0.95 or side > 10_000:
            return out.getvalue()
        side = int(side * (target / len(out.getvalue())) ** 0.5) + 1
        image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))


def durable_write(folder: Path, name: str, data: bytes) -> None:
    temp = folder / f"{name}.partial"
    with temp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, folder / name)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def measure(
    stub: pb_grpc.CacheServiceStub, folder: Path, label: str, data: bytes, runs: int
) -> list[tuple[str, float, float]]:
    """(op, baseline ms, service ms) for put and get of data (label names it in charts)."""
    ids: list[str] = []

    def base_put(i: int) -> None:
        durable_write(folder, f"b{i}", data)

    def base_get(i: int) -> None:
        (folder / f"b{max(i, 0)}").read_bytes()

    def svc_put(i: int) -> None:
        ids.append(upload(stub, data).id)

    def svc_get(i: int) -> None:
        download(stub, ids[max(i, 0)])

    def timed(
        op: str, baseline: Callable[[int], None], service: Callable[[int], None]
    ) -> tuple[str, float, float]:
        title = f"{label}, {op}"
        base = median_ms(baseline, runs, record=charts.recorder(title, "the same disk"))
        return op, base, median_ms(service, runs, record=charts.recorder(title, "cache service"))

    return [timed("put", base_put, svc_put), timed("get", base_get, svc_get)]


def main() -> None:
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".bench-") as tmp:
        root = Path(tmp)
        baseline_dir = root / "baseline"
        baseline_dir.mkdir()
        server = ServiceProcess("cache", root / "data").start()
        try:
            with channel(server.address) as ch:
                stub = pb_grpc.CacheServiceStub(ch)
                print("cache service: put/get throughput (median per op) vs the same disk")
                print(f"{'image':>16} {'op':>4} {'baseline':>12} {'service':>12} {'ratio':>7}")
                for label, data, runs in [
                    ("100 KiB JPEG", noise_image(100 * KiB, "JPEG"), 60),
                    ("10 MiB PNG", noise_image(10 * MiB, "PNG"), 10),
                ]:
                    mb = len(data) / MiB
                    for op, base, svc in measure(stub, baseline_dir, label, data, runs):
                        base_rate, svc_rate = mb / base * 1000, mb / svc * 1000
                        rates = {"the same disk": [base_rate], "cache service": [svc_rate]}
                        charts.throughput(f"{label}, {op}", rates, unit="MB/s")
                        print(
                            f"{label:>16} {op:>4} {base_rate:>8.1f} MB/s {svc_rate:>8.1f} MB/s"
                            f" {base / svc:>6.2f}x"
                        )
                print("ratio = service throughput / baseline throughput (1.00x = disk speed)")
        finally:
            server.terminate()
