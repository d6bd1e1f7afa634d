"""The cache's Prometheus series, beside the gRPC and process ones every service has."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cache.storage import StorageUnavailable
from cache.variants import VariantCache
from cache.variants.local import TieredVariantCache
from common.metrics import LATENCY_BUCKETS, ServiceMetrics


class CacheMetrics(ServiceMetrics):
    """What the cache counts: each store operation's latency (its _count is how many),
    engines found down, variant lookups, and the embedded tiers' bytes and evictions."""

    def __init__(self) -> None:
        super().__init__()
        self.backend_seconds = Histogram(
            "imagesvc_cache_backend_seconds",
            "Store operations and their latency, by store (blobs, metadata, variants) "
            "and operation.",
            ["store", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.backend_unavailable = Counter(
            "imagesvc_cache_backend_unavailable_total",
            "Store operations that found their engine down, by store and operation.",
            ["store", "operation"],
            registry=self.registry,
        )
        lookups = Counter(
            "imagesvc_cache_variant_lookups_total",
            "GetVariant lookups of an existing image, by result.",
            ["result"],
            registry=self.registry,
        )
        self.variant_hits = lookups.labels("hit")
        self.variant_misses = lookups.labels("miss")

    def watch_tiers(self, variants: VariantCache) -> None:
        """Export the embedded variant cache's tiers (Redis keeps its own figures)."""
        if isinstance(variants, TieredVariantCache):
            self.registry.register(TierCollector(variants))


class TierCollector(Collector):
    """The memory and disk tiers' bytes, budgets and evictions, read at scrape time:
    the tiers keep plain numbers, so a lookup or a put changes nothing here."""

    def __init__(self, variants: TieredVariantCache) -> None:
        self.variants = variants

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "imagesvc_cache_variant_tier_bytes", "Bytes held by a variant tier.", labels=["tier"]
        )
        budget = GaugeMetricFamily(
            "imagesvc_cache_variant_tier_budget_bytes",
            "A variant tier's byte budget (IMAGESVC_VARIANT_MEMORY_BYTES, _DISK_BYTES).",
            labels=["tier"],
        )
        evictions = CounterMetricFamily(
            "imagesvc_cache_variant_evictions",
            "Variants a tier dropped to stay within its budget.",
            labels=["tier"],
        )
        tiers: list[tuple[str, Any]] = [("memory", self.variants.memory)]
        if self.variants.disk is not None:
            tiers.append(("disk", self.variants.disk))
        for name, tier in tiers:
            used.add_metric([name], tier.used)
            budget.add_metric([name], tier.budget)
            evictions.add_metric([name], tier.evictions)
        yield from (used, budget, evictions)


class Timed:
    """A store whose coroutine methods are timed into backend_seconds under its name;
    everything else passes through. One class for every store and engine, so a new
    backend is measured without a line of its own."""

    def __init__(self, inner: object, store: str, metrics: CacheMetrics) -> None:
        self._inner = inner
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        latency = self._metrics.backend_seconds.labels(self._store, name)
        down = self._metrics.backend_unavailable.labels(self._store, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            except StorageUnavailable:
                down.inc()
                raise
            finally:
                latency.observe(time.perf_counter() - start)

        # Kept on the instance: __getattr__ runs only for names not found there, so the
        # labels are resolved once per method.
        setattr(self, name, timed)
        return timed
