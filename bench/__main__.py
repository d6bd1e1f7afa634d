"""`python -m bench [--charts DIR] [SUITE...]`: run the suites (all, in SUITES order) and
print their ratios; with --charts, also draw each suite's samples as PNG into DIR."""

import argparse
from pathlib import Path

from bench import (
    cache_bench,
    charts,
    gateway_bench,
    path_bench,
    processor_bench,
    scale_bench,
    storage_bench,
    volume_bench,
)

SUITES = {
    "cache": cache_bench.main,
    "processor": processor_bench.main,
    "gateway": gateway_bench.main,
    "path": path_bench.main,
    "storage": storage_bench.main,
    "volume": volume_bench.main,
    "scale": scale_bench.main,
}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=", ".join(SUITES))
    parser.add_argument("--charts", type=Path, metavar="DIR", help="write PNG charts here")
    args = parser.parse_args()
    if unknown := [name for name in args.suites if name not in SUITES]:
        parser.error(f"no suite {', '.join(unknown)} (there are {', '.join(SUITES)})")
    for name in args.suites or list(SUITES):
        with charts.suite(name) as results:
            SUITES[name]()
        # What else ran meanwhile: on a shared machine, a figure from a busy minute is
        # worth less than one from a quiet one.
        print("load average over the last 1 and 5 minutes: {:.1f}, {:.1f}".format(*results.load))
        if args.charts is not None:
            for path in charts.write(results, args.charts):
                print(f"chart: {path}")
        print()
