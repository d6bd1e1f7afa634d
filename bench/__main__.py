"""`python -m bench`: run every benchmark and print its ratios."""

from bench import cache_bench

if __name__ == "__main__":
    cache_bench.main()
