"""`python -m bench [SUITE...]`: run the suites (all, in SUITES order) and print their ratios."""

import os
import sys

from bench import (
    cache_bench,
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
    for name in sys.argv[1:] or list(SUITES):
        SUITES[name]()
        # What else ran meanwhile: on a shared machine, a figure from a busy minute is
        # worth less than one from a quiet one.
        print("load average over the last 1 and 5 minutes: {:.1f}, {:.1f}".format(*os.getloadavg()))
        print()
