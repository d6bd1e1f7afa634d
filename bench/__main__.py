"""`python -m bench [cache|processor|gateway]`: run the benchmarks and print their ratios."""

import sys

from bench import cache_bench, gateway_bench, processor_bench

SUITES = {
    "cache": cache_bench.main,
    "processor": processor_bench.main,
    "gateway": gateway_bench.main,
}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(SUITES):
        SUITES[name]()
        print()
