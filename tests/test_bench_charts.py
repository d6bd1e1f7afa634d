"""The benchmark's chart writer, fed synthetic samples: no benchmark runs here."""

from __future__ import annotations

import random
from pathlib import Path

from bench import charts
from bench.timing import interleaved_ms

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 1000


def test_a_suite_with_latencies_and_throughput_gets_one_png_of_each(tmp_path: Path) -> None:
    rng = random.Random(0)
    with charts.suite("synthetic") as results:
        charts.latencies(
            "cold",
            {
                "Pillow": [rng.gauss(20, 1) for _ in range(120)],
                "service": [rng.gauss(22, 2) for _ in range(120)],
            },
        )
        # Spread over orders of magnitude: drawn on a log scale.
        charts.latencies("hit", {"dict": [0.002, 0.003, 0.002], "socket": [0.3, 0.4, 0.35]})
        charts.percentiles("wrk", {"bare": {50: 0.6, 99: 2.0}, "gateway": {50: 1.4, 99: 5.0}})
        charts.throughput("pool", {"pool": [80.0, 82.0, 79.0], "service": [78.0, 81.0, 80.0]})
        charts.throughput("wrk", {"bare": [24000.0], "gateway": [10000.0]})
    written = charts.write(results, tmp_path / "charts")
    assert written == [
        tmp_path / "charts" / "synthetic-latency.png",
        tmp_path / "charts" / "synthetic-throughput.png",
    ]
    assert all(is_png(path) for path in written)
    assert results.ended is not None
    assert list(results.latencies["cold"]) == ["Pillow", "service"]  # the baseline first


def test_the_timing_helpers_record_each_ops_samples_in_ms(tmp_path: Path) -> None:
    with charts.suite("helpers") as results:
        interleaved_ms(
            lambda i: None,
            lambda i: sum(range(1000)),
            runs=6,
            rounds=2,
            record=charts.recorder("noop against a sum", "noop", "sum"),
        )
    curves = results.latencies["noop against a sum"]
    assert [len(curve.ms) for curve in curves.values()] == [6, 6]
    assert all(0 < ms < 1000 for curve in curves.values() for ms in curve.ms)
    (path,) = charts.write(results, tmp_path)  # latencies only: no throughput chart
    assert path.name == "helpers-latency.png" and is_png(path)


def test_many_charts_fill_two_columns(tmp_path: Path) -> None:
    with charts.suite("many") as results:
        for n in range(7):
            charts.latencies(f"op {n}", {"base": [1.0, 2.0], "engine": [2.0, 3.0 + n]})
    (path,) = charts.write(results, tmp_path)
    assert is_png(path)
