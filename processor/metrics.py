"""The processor's Prometheus series, beside the gRPC and process ones every service has."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from common.metrics import LATENCY_BUCKETS, ServiceMetrics


class ProcessorMetrics(ServiceMetrics):
    """What the processor counts; the gauges are read from the workers at scrape time
    (see Workers.watch), so a render changes no gauge itself."""

    def __init__(self) -> None:
        super().__init__()
        self.render_seconds = Histogram(
            "imagesvc_processor_render_seconds",
            "A render's time on its thread (decode, operations, encode), by output format.",
            ["format"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.operation_seconds = Histogram(
            "imagesvc_processor_operation_seconds",
            "One operation's time within a render, every frame of it, by operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queued = Gauge(
            "imagesvc_processor_queue_depth",
            "Renders admitted and waiting for a thread.",
            registry=self.registry,
        )
        self.running = Gauge(
            "imagesvc_processor_renders_in_flight",
            "Renders running on a thread now.",
            registry=self.registry,
        )
        self.abandoned = Gauge(
            "imagesvc_processor_abandoned_renders",
            "Renders that outlived a caller's deadline and have not ended yet.",
            registry=self.registry,
        )
        self.deadline_exceeded = Counter(
            "imagesvc_processor_deadline_exceeded_total",
            "Callers answered DEADLINE_EXCEEDED while their render went on.",
            registry=self.registry,
        )
        refused = Counter(
            "imagesvc_processor_refused_total",
            "Renders refused with RESOURCE_EXHAUSTED: at capacity, or too many abandoned.",
            ["reason"],
            registry=self.registry,
        )
        self.refused_capacity = refused.labels("capacity")
        self.refused_abandoned = refused.labels("abandoned")
        self.flight_joins = Counter(
            "imagesvc_processor_flight_joins_total",
            "Callers that joined a render of the same variant already running here.",
            registry=self.registry,
        )
        hot = Counter(
            "imagesvc_processor_hot_cache_total",
            "Lookups in the processor's memory of recent variants, by result.",
            ["result"],
            registry=self.registry,
        )
        self.hot_hits = hot.labels("hit")
        self.hot_misses = hot.labels("miss")
        self._formats: dict[str, Histogram] = {}
        self._operations: dict[str, Histogram] = {}

    def rendered(self, media_type: str, seconds: float, steps: dict[str, float]) -> None:
        """Record a finished render: its time by format, and each operation's."""
        by_format = self._formats.get(media_type)
        if by_format is None:
            label = media_type.rpartition("/")[2]
            by_format = self._formats[media_type] = self.render_seconds.labels(label)
        by_format.observe(seconds)
        for name, spent in steps.items():
            by_operation = self._operations.get(name)
            if by_operation is None:
                by_operation = self._operations[name] = self.operation_seconds.labels(name)
            by_operation.observe(spent)
