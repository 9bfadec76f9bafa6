"""Prometheus metrics, built on an injected registry (one per service instance, so tests never leak).

Besides the service's own series, each registry carries the standard ``process_*`` (CPU, memory, open
files), ``python_info`` and ``python_gc_*`` collectors and ``mediamoderation_build_info{version}``.
Counters and histograms export no ``*_created`` series: prometheus_client's switch for that is process-wide
(it is read when a registry is scraped, so it covers injected registries too) and is turned off here, once.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

import service

disable_created_metrics()

PREFIX = "mediamoderation"
STAGES = ("fetch", "thumbnail", "match", "act")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_INDEX_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


def build_version() -> str:
    """The installed distribution's version (the source tree's ``__version__`` when not installed)."""
    try:
        return dist_version("mediamoderation")
    except PackageNotFoundError:
        return service.__version__


class Metrics:
    """Every metric the service exports.  Names follow Prometheus conventions."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = PREFIX
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge(f"{p}_build_info", "Always 1; the version label is the running release",
                                ["version"], registry=r)
        self.build_info.labels(build_version()).set(1)
        self.events_received = Counter(f"{p}_events_received", "Events read from the source", ["source"], registry=r)
        self.events_skipped = Counter(
            f"{p}_events_skipped", "Events skipped, by reason", ["reason"], registry=r
        )
        self.events_malformed = Counter(
            f"{p}_events_malformed", "Events that could not be parsed, by problem", ["problem"], registry=r
        )
        self.event_link_mismatch = Counter(
            f"{p}_event_link_mismatch", "Upload events whose server_url or meta.uri is not their configured wiki "
            "(the event is still scanned; links always come from the configuration)", ["wiki"], registry=r
        )
        self.outcomes = Counter(f"{p}_outcomes", "Uploads that finished the pipeline, by outcome; an upload whose "
                                "error a rescan later settled is counted again with its final outcome", ["outcome"],
                                registry=r)
        self.outcomes_superseded = Counter(
            f"{p}_outcomes_superseded", "Outcomes counted in outcomes_total that a later result replaced (error -> "
            "a rescan's verdict): outcomes_total minus this counts uploads by final outcome", ["outcome"], registry=r,
        )
        self.outcomes_superseded.labels("error")  # the error-rate alert subtracts it: the series must exist
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
        self.ready = Gauge(
            f"{p}_ready", "1 while a check passes, 0 while it fails (store: /readyz; source, banks, photodna: "
            "/healthz/pipeline)", ["check"],
            registry=r,
        )
        self.decode_worker_crashes = Counter(
            f"{p}_decode_worker_crashes", "Decode workers that died (pool: main, or retry: the one-worker pool "
            "an upload whose worker died is retried in alone)", ["pool"], registry=r,
        )
        self.decode_pool_restarts = Counter(
            f"{p}_decode_pool_restarts", "Decode pool restarts after a worker died, by result (ok, failed)",
            ["result"], registry=r,
        )
        self.task_restarts = Counter(
            f"{p}_task_restarts", "Long-lived tasks restarted by the supervisor after they died, by task", ["task"],
            registry=r,
        )
        for stage in STAGES:
            self.in_flight.labels(stage)
            self.queue_depth.labels(stage)
            self.stage_latency.labels(stage)
        self._init_photodna(r, p)
        self._init_takedown_review(r, p)
        self._init_scale(r, p)
        self._init_bank_sync(r, p)
        self._init_retro(r, p)

    def _init_photodna(self, r: CollectorRegistry, p: str) -> None:
        """Remote matching (PhotoDNA) and the rescanner."""
        self.photodna_requests = Counter(
            f"{p}_photodna_requests", "PhotoDNA requests by HTTP status (or timeout / connection) and PhotoDNA "
            "status code (none when the body had no status)", ["http_status", "code"], registry=r,
        )
        self.photodna_latency = Histogram(
            f"{p}_photodna_request_duration_seconds", "Time of one PhotoDNA request, send to answer",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.photodna_wait = Histogram(
            f"{p}_photodna_ratelimit_wait_seconds", "Time a call waited for the client-side rate limiter",
            ["priority"], buckets=(0.001, *_LATENCY_BUCKETS), registry=r,
        )
        self.photodna_budget_used = Gauge(
            f"{p}_photodna_budget_used", "PhotoDNA requests counted against this month's budget", registry=r
        )
        self.photodna_budget_limit = Gauge(f"{p}_photodna_budget_limit", "The monthly request budget", registry=r)
        self.photodna_circuit = Gauge(
            f"{p}_photodna_circuit_state", "Circuit breaker: 0 closed, 1 half-open (one trial), 2 open (paused)",
            registry=r,
        )
        self.photodna_unauthorized = Gauge(
            f"{p}_photodna_unauthorized", "1 while PhotoDNA refuses the key (HTTP 401/403) or no key is available",
            registry=r,
        )
        self.photodna_failures = Counter(
            f"{p}_photodna_failures", "PhotoDNA calls that ended without a verdict, by reason", ["reason"],
            registry=r,
        )
        self.rescans = Counter(
            f"{p}_rescans", "Rescan work by kind (retry: failed scan, rescan: old clean scan) and result",
            ["kind", "result"], registry=r,
        )

    def _init_takedown_review(self, r: CollectorRegistry, p: str) -> None:
        """Takedowns on the wiki and the review queue."""
        self.takedowns = Counter(
            f"{p}_takedowns", "Takedowns by result (deleted, already-gone, dry-run, permission-denied, "
            "auth-failed, failed, verify-failed)", ["result"], registry=r,
        )
        self.takedown_duration = Histogram(
            f"{p}_takedown_duration_seconds", "Time of one takedown: versions, delete, suppress, verify",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.suppressions = Counter(
            f"{p}_suppressions", "Suppressions of deleted versions by result (suppressed, permission-denied)",
            ["result"], registry=r,
        )
        self.wiki_api_requests = Counter(
            f"{p}_wiki_api_requests", "Authenticated wiki API requests by action and result", ["action", "result"],
            registry=r,
        )
        self.review_decisions = Counter(
            f"{p}_review_decisions", "Review decisions by kind (confirm, dismiss, escalate) and the reviewer's role "
            "(reviewer, admin)", ["decision", "role"], registry=r
        )
        self.review_signin_failures = Counter(
            f"{p}_review_signin_failures", "Failed review sign-ins by reason (bad-password, throttled)", ["reason"],
            registry=r,
        )
        self.review_logins = Counter(
            f"{p}_review_logins", "Review logins by result (ok, bad-password, throttled, proxy)", ["result"],
            registry=r,
        )
        self.review_previews = Counter(
            f"{p}_review_previews", "Previews served by mode (blurred, clear) and result", ["mode", "result"],
            registry=r,
        )
        self.review_pending = Gauge(
            f"{p}_review_pending", "Review cases still to do (open or escalated) by category; a case of two "
            "categories counts in both.  Counted from the store every 30 s and after new matches and decisions",
            ["category"], registry=r,
        )
        self.review_open_cases = Gauge(
            f"{p}_review_open_cases", "Review cases waiting for a reviewer (open or escalated), by kind (match, "
            "unscannable) and category (for unscannable cases: the reason)", ["kind", "category"], registry=r,
        )
        self.review_oldest_open = Gauge(
            f"{p}_review_oldest_open_seconds", "Age of the oldest review case nobody has decided yet (0: none)",
            registry=r,
        )
        self.unscannable = Counter(
            f"{p}_unscannable_uploads", "Uploads that could not be scanned (each one becomes a review case), by reason",
            ["reason"], registry=r,
        )
        self.reports_drafted = Counter(
            f"{p}_report_drafts", "CyberTipline report drafts produced (never submitted by the service), by format",
            ["format"], registry=r,
        )
        self.allowlisted = Counter(
            f"{p}_allowlisted_matches", "Matches dropped because a reviewer allowlisted the content for the bank",
            ["bank"], registry=r,
        )

    def _init_scale(self, r: CollectorRegistry, p: str) -> None:
        """Kafka source, work topic, API polling and backfill."""
        self.kafka_lag = Gauge(
            f"{p}_kafka_consumer_lag", "Messages in a partition not yet finished and committed (log end - committed)",
            ["topic", "partition"], registry=r,
        )
        self.kafka_paused = Gauge(f"{p}_kafka_paused_partitions", "Partitions paused because the pipeline is full",
                                  registry=r)
        self.kafka_commits = Counter(f"{p}_kafka_commits", "Offset commits by reason (interval, revoke, close) "
                                     "and result", ["reason", "result"], registry=r)
        self.kafka_rebalances = Counter(f"{p}_kafka_rebalances", "Partitions revoked or assigned", ["change"],
                                        registry=r)
        self.work_published = Counter(f"{p}_work_published", "Scan requests published to the work topic, by result",
                                      ["result"], registry=r)
        self.poll_requests = Counter(f"{p}_mwapi_requests", "Action API listing requests (logevents, allimages) "
                                     "by list and result", ["list", "result"], registry=r)
        self.backfill_files = Counter(
            f"{p}_backfill_files", "Backfill files by state (listed, skipped: already scanned, queued)",
            ["wiki", "state"], registry=r,
        )
        self.backfill_batches = Counter(f"{p}_backfill_batches", "list=allimages batches read", ["wiki"], registry=r)
        self.backfill_done = Gauge(f"{p}_backfill_complete", "1 once the backfill listed its whole range",
                                   ["wiki"], registry=r)
        self.media_kinds = Counter(f"{p}_media_scanned", "Files decoded and matched, by kind (image, video, "
                                   "audio, document)", ["kind"], registry=r)
        self.frames_hashed = Counter(f"{p}_frames_hashed", "Video and animation frames and document pages "
                                     "PDQ-hashed, by kind", ["kind"], registry=r)
        self.decode_seconds = Histogram(f"{p}_decode_seconds", "Time to decode and hash one file in the decode "
                                        "pool, by kind", ["kind"], buckets=_LATENCY_BUCKETS, registry=r)
        self.vpdq_videos = Gauge(f"{p}_vpdq_bank_videos", "Videos loaded per vPDQ bank", ["bank"], registry=r)

    def _init_bank_sync(self, r: CollectorRegistry, p: str) -> None:
        """Bank contents by category, and the syncs of `url` and `exchange` banks."""
        self.bank_category_size = Gauge(
            f"{p}_bank_category_hashes", "Hashes per bank, kind (sha1, md5, pdq) and category", ["bank", "kind",
                                                                                                 "category"],
            registry=r,
        )
        self.bank_sync_success = Gauge(
            f"{p}_bank_sync_last_success_timestamp_seconds", "When a url or exchange bank last synced completely",
            ["bank"], registry=r,
        )
        self.bank_sync_errors = Counter(
            f"{p}_bank_sync_errors", "Failed syncs of a url or exchange bank, by reason (http, auth, data, "
            "network, refused, store)", ["bank", "reason"], registry=r,
        )
        self.bank_sync_lag = Gauge(
            f"{p}_bank_sync_lag_seconds", "Now minus the newest upstream change the bank has (the exchange's "
            "checkpoint time; for url banks the last successful fetch)", ["bank"], registry=r,
        )
        self.bank_sync_changes = Counter(
            f"{p}_bank_sync_changes", "Hashes a sync added or removed", ["bank", "change"], registry=r,
        )
        self.bank_sync_skipped = Counter(
            f"{p}_bank_sync_skipped_signals", "Exchange signals skipped because the service cannot match their "
            "type (e.g. TMK, PhotoDNA), by type", ["bank", "signal_type"], registry=r,
        )
        self.bank_sync_degraded = Gauge(
            f"{p}_bank_sync_degraded", "1 while the bank's last sync failed (matching goes on with its content)",
            ["bank"], registry=r,
        )
        self.index_query = Histogram(
            f"{p}_index_query_seconds", "Time of one upload's bank lookup, every bank at once, by kind (pdq: "
            "the image's variants and views; sha1, md5)", ["kind"], buckets=_INDEX_BUCKETS, registry=r,
        )
        self._bank_category_keys: dict[str, set[tuple[str, str]]] = {}

    def set_bank_categories(self, bank: str, sizes: dict[tuple[str, str], int]) -> None:
        """Set ``bank_category_hashes`` for one bank; categories no longer present drop to 0."""
        for key in self._bank_category_keys.get(bank, set()) - set(sizes):
            self.bank_category_size.labels(bank, *key).set(0)
        for (kind, category), n in sizes.items():
            self.bank_category_size.labels(bank, kind, category).set(n)
        self._bank_category_keys[bank] = set(sizes)

    def _init_retro(self, r: CollectorRegistry, p: str) -> None:
        """Retroactive matching of stored file hashes against hashes a bank gains, and the flood guard."""
        self.file_hashes_stored = Counter(
            f"{p}_file_hashes_stored", "Scanned files whose hashes were written to the store, by result (ok, error)",
            ["result"], registry=r,
        )
        self.file_hashes_indexed = Gauge(
            f"{p}_file_hashes_indexed", "Stored file PDQ hashes in the retroactive matcher's index", registry=r,
        )
        self.retro_matches = Counter(
            f"{p}_retro_matches", "Matches found by retroactive matching, by bank and matcher (sha1, md5, pdq)",
            ["bank", "matcher"], registry=r,
        )
        self.retro_hashes = Counter(
            f"{p}_retro_hashes_matched", "New bank hashes matched against the stored file hashes, by bank",
            ["bank"], registry=r,
        )
        self.retro_quarantined = Counter(
            f"{p}_retro_quarantined_deltas", "Bank deltas the flood guard quarantined, by bank", ["bank"], registry=r,
        )
        self.retro_queue = Gauge(
            f"{p}_retro_queue_hashes", "New bank hashes waiting to be matched against the stored file hashes",
            registry=r,
        )
        self.retro_lag = Gauge(
            f"{p}_retro_lag_seconds", "Age of the oldest bank delta not yet fully matched and acted on (0: none)",
            registry=r,
        )
        self.retro_search_restarts = Counter(
            f"{p}_retro_search_restarts", "Times the retroactive search process died and was started again",
            registry=r,
        )
