"""Prometheus metrics, built on an injected registry (one per service instance, so tests never leak)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "mediamoderation"
STAGES = ("fetch", "thumbnail", "match", "act")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Every metric the service exports.  Names follow Prometheus conventions."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = PREFIX
        self.events_received = Counter(f"{p}_events_received", "Events read from the source", ["source"], registry=r)
        self.events_skipped = Counter(
            f"{p}_events_skipped", "Events skipped, by reason", ["reason"], registry=r
        )
        self.events_malformed = Counter(
            f"{p}_events_malformed", "Events that could not be parsed, by problem", ["problem"], registry=r
        )
        self.outcomes = Counter(f"{p}_outcomes", "Uploads that finished the pipeline, by outcome", ["outcome"],
                                registry=r)
        self.stage_latency = Histogram(
            f"{p}_stage_duration_seconds", "Time spent in each stage", ["stage"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_latency = Histogram(
            f"{p}_event_duration_seconds", "Time from reading an event to its outcome", buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(f"{p}_stage_in_flight", "Items being worked on per stage", ["stage"], registry=r)
        self.queue_depth = Gauge(f"{p}_queue_depth", "Items waiting before each stage", ["stage"], registry=r)
        self.bytes_fetched = Counter(f"{p}_fetched_bytes", "Bytes downloaded from the wiki", ["kind"], registry=r)
        self.fetch_requests = Counter(
            f"{p}_fetch_requests", "HTTP requests to wikis, by kind and result", ["kind", "result"], registry=r
        )
        self.matches = Counter(f"{p}_matches", "Matches found, by category and matcher", ["category", "matcher"],
                               registry=r)
        self.notifications = Counter(
            f"{p}_notifications", "Notification attempts, by result (sent, failed, spooled)", ["result"], registry=r
        )
        self.outbox_pending = Gauge(f"{p}_outbox_pending", "Actions written but not yet performed", registry=r)
        self.source_lag = Gauge(f"{p}_source_lag_seconds", "Now minus the time of the newest event read",
                                registry=r)
        self.source_connected = Gauge(f"{p}_source_connected", "1 while the source is connected", registry=r)
        self.source_reconnects = Counter(f"{p}_source_reconnects", "Source reconnects, by cause", ["cause"],
                                         registry=r)
        self.checkpoint_lag = Gauge(
            f"{p}_checkpoint_pending_events", "Events read but not yet below the checkpoint", registry=r
        )
        self.bank_size = Gauge(f"{p}_bank_hashes", "Hashes loaded per bank and kind", ["bank", "kind"], registry=r)
        self.bank_reloads = Counter(f"{p}_bank_reloads", "Bank (re)loads, by result", ["bank", "result"],
                                    registry=r)
        self.errors = Counter(f"{p}_errors", "Errors by stage and reason", ["stage", "reason"], registry=r)
        self.cache_hits = Counter(
            f"{p}_scan_cache_hits", "Uploads whose SHA-1 was already scanned against the current banks", registry=r
        )
        self.outbox_actions = Counter(
            f"{p}_outbox_actions", "Outbox items performed, by kind and result (done, retry, failed)",
            ["kind", "result"], registry=r,
        )
        for stage in STAGES:
            self.in_flight.labels(stage)
            self.queue_depth.labels(stage)
            self.stage_latency.labels(stage)
