"""`python -m bench [SUITE...]` (cache, processor, gateway, storage, volume): print their ratios."""

import sys

from bench import cache_bench, gateway_bench, processor_bench, storage_bench, volume_bench

SUITES = {
    "cache": cache_bench.main,
    "processor": processor_bench.main,
    "gateway": gateway_bench.main,
    "storage": storage_bench.main,
    "volume": volume_bench.main,
}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(SUITES):
        SUITES[name]()
        print()
