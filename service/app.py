"""Wiring and lifecycle: build every component from the Config, run them, stop them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry

from service.actions.base import Action, OutboxDispatcher
from service.actions.digest import DigestNotifier, GroupedNotifier
from service.actions.notify import EmailNotifier
from service.actions.plan import build_planners
from service.actions.summary import CaseWatch, SummaryNotifier
from service.actions.takedown import Takedowns
from service.config import Config, warnings_for
from service.errors import ServiceError
from service.exchanges.sync import BankSyncer
from service.fetch import WikiClient
from service.file_hashes import FileHashWriter
from service.matchers.banks import BankSet
from service.matchers.exact import ExactMatcher
from service.matchers.frames import FrameMatcher
from service.matchers.pdq import PdqMatcher
from service.matchers.photodna import PhotoDnaMatcher, build_matcher
from service.matchers.vpdq import VpdqMatcher
from service.media.pool import CpuPool, ProcessPool, ping, thread_pool
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.negative_bank import NegativeBank
from service.net import Proxies
from service.pipeline import Matcher, Pipeline, Planner
from service.rescan import Rescanner
from service.retro import RetroMatcher, StoredPdqs
from service.retro_search import LocalSearch, PdqSearch, SearchProcess
from service.runtime.backlog import ReviewBacklog
from service.runtime.http import HttpServer, source_details, source_ready, store_ready
from service.runtime.supervisor import RESTART, RestartPolicy, Supervisor, TaskFailed
from service.sources.base import Source
from service.sources.factory import live_source
from service.store import Stores, make_stores
from service.web.review.app import ReviewUI
from service.web.review.reports import WorkflowRoutes

log = logging.getLogger(__name__)

# The pipeline is never restarted: if it dies the service stops with the cause (and Kubernetes restarts
# the pod, which resumes from the checkpoint).  It returns by itself when a finite source ends.
PIPELINE = RestartPolicy(critical=True, may_return=True)


class Service:
    """One running instance.  ``run()`` returns after a clean stop (or when a finite source ends)."""

    def __init__(
        self,
        cfg: Config,
        *,
        source: Source | None = None,
        since: datetime | None = None,
        registry: CollectorRegistry | None = None,
        make_source: Callable[[Config, Stores, Metrics], Source] | None = None,
        stores: Stores | None = None,
        restart: RestartPolicy = RESTART,
        retro_matching: bool = True,
    ) -> None:
        """``retro_matching``: run the retroactive matcher (side jobs such as a backfill or a replay only keep
        the hashes of the files they scan; the running service matches bank changes)."""
        self.cfg = cfg
        self.metrics = Metrics(registry)
        # PostgreSQL when store.url is set, else SQLite; ``make_source`` builds a worker's or a replay's source.
        self.stores = stores if stores is not None else make_stores(cfg.store)
        # content dismissed as a false positive (and its near copies) never alerts again
        self.negative_bank = NegativeBank(self.stores.review, cfg.review.allowlist_pdq_distance)
        self.banks = BankSet(cfg.banks, self.metrics, views=cfg.thumbnail.views)
        self.exact = ExactMatcher(self.banks)
        proxies = Proxies.for_config(cfg.network)  # every outgoing HTTP request; see service.net
        # `url` and `exchange` banks: loaded from the store at start, then synced (each bank its own task).
        self.bank_sync = BankSyncer(cfg.banks, self.banks, self.stores.banksync, self.metrics,
                                    user_agent=cfg.service.user_agent, proxies=proxies)
        self.matchers: list[Matcher] = [self.exact, PdqMatcher(self.banks), FrameMatcher(self.banks)]
        self.vpdq: VpdqMatcher | None = None
        if cfg.media.video.vpdq_banks:
            self.vpdq = VpdqMatcher(cfg.media.video, self.metrics)
            self.matchers.append(self.vpdq)
        self.photodna: PhotoDnaMatcher | None = None
        self.rescanner: Rescanner | None = None
        if cfg.photodna.enabled:
            self.photodna = build_matcher(cfg.photodna, user_agent=cfg.service.user_agent, store=self.stores.budget,
                                          metrics=self.metrics, on_recover=self._photodna_recovered,
                                          proxies=proxies)
        self.wiki_client = WikiClient(cfg.fetch, cfg.wikis, cfg.service.user_agent, self.metrics, proxies=proxies,
                                      media=cfg.media)
        self.source: Source = source or (
            make_source(cfg, self.stores, self.metrics) if make_source is not None
            else live_source(cfg, self.stores.checkpoints, self.metrics, since)
        )
        notify = cfg.actions.notify
        self.actions: dict[str, Action] = {}
        if notify.enabled:
            email = EmailNotifier(notify, self.metrics, wikis=cfg.wikis)
            self.actions = {"notify": GroupedNotifier(email, self.stores.workflow, notify, self.metrics),
                            "reminder": email,
                            "digest": DigestNotifier(email, self.stores.workflow, notify),
                            "summary": SummaryNotifier(email, self.stores.workflow, notify)}
        self.case_watch = CaseWatch(self.stores.workflow, self.stores.outbox, notify, self.metrics)
        self.planners: list[Planner] = build_planners(cfg)
        self.dispatcher = OutboxDispatcher(self.stores.outbox, self.actions, notify.retry, self.metrics)
        # Takedowns have their own dispatcher: an email and a takedown of one match never wait for each other.
        self.takedowns = Takedowns(cfg, self.stores.outbox, self.metrics, kick_notify=self.dispatcher.kick,
                                   audit=self.stores.review, preserve=self.stores.workflow)
        self.review = (ReviewUI(cfg, store=self.stores.review, reviewers=self.stores.reviewers,
                                fetcher=self.wiki_client, metrics=self.metrics,
                                kick=self._kick_actions) if cfg.review.enabled else None)
        self.backlog = ReviewBacklog(self.stores.review, self.metrics)  # mediamoderation_review_pending
        if self.review is not None:  # report drafts, unscannable cases and the case page's workflow sections
            WorkflowRoutes(cfg, review=self.stores.review, scans=self.stores.scans, workflow=self.stores.workflow,
                           metrics=self.metrics).register(self.review)
        # Retroactive matching: every scanned file's hashes are kept; hashes a bank gains are matched against them.
        retro_cfg = cfg.banks.retro
        self.file_hashes = (FileHashWriter(self.stores.retro, self.metrics, interval=retro_cfg.flush_interval)
                            if retro_cfg.enabled else None)
        self.retro: RetroMatcher | None = None
        if retro_cfg.enabled and retro_matching:
            # The PDQ search in a process of its own (no GIL shared with the event loop), like the decode pool;
            # in a thread when the service runs its CPU work in threads (pipeline.cpu_pool: thread).
            search: PdqSearch = (SearchProcess(retro_cfg.cpu_share) if cfg.pipeline.cpu_pool == "process"
                                 else LocalSearch(retro_cfg.cpu_share))
            self.retro = RetroMatcher(cfg.banks, store=self.stores.retro, planners=self.planners, metrics=self.metrics,
                                      notify=notify, on_actions=lambda items: self._kick_actions(),
                                      allowlist=self.negative_bank,
                                      index=StoredPdqs(search, quality_min=cfg.banks.pdq_quality_min))
            self.banks.subscribe(self.retro.on_delta)
        self.pipeline: Pipeline | None = None
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.http = HttpServer(cfg.http, self.metrics)
        self._cpu: CpuPool | None = None
        self.crashed: str | None = None
        # Owns every long-lived task; ``restart`` is the policy of those that may be restarted.
        self.restart = restart
        self.supervisor = Supervisor(self.metrics, self.stop_event, on_failure=self._task_failed,
                                     stop_timeout=max(10.0, cfg.service.shutdown_grace))

    # ------------------------------------------------------------------ health

    @property
    def http_port(self) -> int | None:
        return self.http.port

    def _last_event_at(self) -> float | None:
        return self.pipeline.last_event_at if self.pipeline else None

    async def _ready_banks(self) -> str | None:
        loaded = set(self.banks.names)
        missing = [b.name for b in self.cfg.banks.list if b.name not in loaded]
        return f"banks not loaded: {', '.join(missing)}" if missing else None

    async def _ready_photodna(self) -> str | None:
        return self.photodna.ready_reason() if self.photodna is not None else None

    def _photodna_recovered(self) -> None:
        if self.rescanner is not None:
            self.rescanner.recovered()

    def _live_pipeline(self) -> str | None:
        return self.crashed or (self._cpu.failure if self._cpu is not None else None)

    # ------------------------------------------------------------------ lifecycle

    def _make_cpu_pool(self) -> CpuPool:
        n = self.cfg.cpu_workers
        if self.cfg.pipeline.cpu_pool == "thread":
            return thread_pool(n)
        # Restarted when a worker dies; each worker under the pipeline.decode_memory_limit ceiling.
        return ProcessPool(n, memory_limit=self.cfg.pipeline.decode_memory_limit or None, metrics=self.metrics)

    async def _start_decoders(self, cpu: CpuPool) -> None:
        """Start the decode workers now, not on the first upload: their forkserver loads the decoders and the
        compiled kernels (about 1 s; some 10 s on a first start, while numba fills its cache).  A pool that
        cannot start is reported by the liveness check (``/healthz``), as one that breaks later is."""
        if self.cfg.pipeline.cpu_pool != "process":
            return
        try:
            await cpu.run(ping)
        except Exception as exc:  # the pool records why; /healthz fails and Kubernetes restarts the pod
            log.error("the decode pool did not start", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _start_http(self) -> None:
        source = source_ready(self.source, last_event_at=self._last_event_at, idle=self.cfg.http.ready_source_idle)
        await self.http.start(
            {"store": store_ready(self.stores)},  # /readyz: the review UI and metrics can be served
            {"pipeline": self._live_pipeline, "tasks": self.supervisor.problem},
            details=self._details,
            mount=[self.review.mount] if self.review is not None else [],
            # /healthz/pipeline: uploads are being scanned
            pipeline={"source": source, "banks": self._ready_banks,
                      **({"photodna": self._ready_photodna} if self.photodna is not None else {})},
        )

    def _details(self) -> dict[str, object]:
        """``/healthz/pipeline`` details: the source's, and each synced bank's state (a failing sync is shown as
        degraded; it never makes the pipeline unready: matching goes on with the bank's stored content)."""
        out = dict(source_details(self.source)())
        if self.bank_sync.managed:
            out["bank_sync"] = self.bank_sync.details()
        return out

    async def run(self) -> None:
        for warning in warnings_for(self.cfg):
            log.warning(warning)
        try:
            await self.stores.open()
            await self.bank_sync.load()  # synced banks' stored content, matchable before the first upload
            await self._start_http()
            await self.wiki_client.start()
            if self.photodna is not None:
                await self.photodna.client.start()  # its key probe runs under the supervisor, below
            self._cpu = self._make_cpu_pool()
            await self._start_decoders(self._cpu)
            self.pipeline = Pipeline(
                self.cfg,
                source=self.source,
                store=self.stores.pipeline,
                fetcher=self.wiki_client,
                exact=self.banks,
                matchers=self.matchers,
                planners=self.planners,
                cpu=self._cpu,
                prepare=prepare,
                metrics=self.metrics,
                on_actions=lambda items: self._kick_actions(),
                remote_matchers=[self.photodna] if self.photodna is not None else [],
                remote_when_local=self.cfg.photodna.call_when_local_match,
                remote_retry_delays=self.cfg.photodna.rescan.retry_delays,
                allowlist=self.negative_bank,
                on_scanned=self.file_hashes.add if self.file_hashes is not None else None,
            )
            pipeline = self.pipeline
            sup, policy = self.supervisor, self.restart
            sup.start("outbox", lambda: self.dispatcher.run(self.stop_event), restart=policy)
            sup.start("takedown-outbox", lambda: self.takedowns.run(self.stop_event), restart=policy)
            if self.cfg.banks.reload_interval > 0:
                sup.start("bank-watch", lambda: self.banks.watch(self.cfg.banks.reload_interval, self.stop_event),
                          restart=policy)
                if self.vpdq is not None:
                    vpdq = self.vpdq
                    sup.start("vpdq-bank-watch",
                              lambda: vpdq.watch(self.cfg.banks.reload_interval, self.stop_event), restart=policy)
            sup.start("maintenance", self._maintenance, restart=policy)
            sup.start("review-backlog", lambda: self.backlog.run(self.stop_event), restart=policy)
            for name in self.bank_sync.managed:
                sup.start(f"bank-sync:{name}", self._bank_sync_task(name), restart=policy)
            sup.start("case-stats", lambda: self.case_watch.run(self.stop_event), restart=policy)
            if self.file_hashes is not None:
                writer = self.file_hashes
                sup.start("file-hashes", lambda: writer.run(self.stop_event), restart=policy)
            if self.retro is not None:
                retro = self.retro
                sup.start("retro", lambda: retro.run(self.stop_event), restart=policy)
            if self.photodna is not None:
                probe = self.photodna.probe  # while the key is refused: one probe per auth_retry_interval
                sup.start("photodna-probe", lambda: probe.run(self.stop_event), restart=policy)
                rescanner = self.rescanner = self._make_rescanner(self.photodna, pipeline)
                sup.start("rescan", lambda: rescanner.run(self.stop_event), restart=policy)
            sup.start("stop-forward", lambda: self._forward_stop(pipeline), restart=policy)
            sup.start("commit", pipeline.committer.run, restart=policy)  # the checkpoint, past finished events
            running = sup.start("pipeline", lambda: pipeline.run(committer_supervised=True), restart=PIPELINE)
            self.started.set()
            log.info("service started", extra={"source": self.source.name, "wikis": [w.id for w in self.cfg.wikis]})
            await running.wait()  # the source ended, the service was asked to stop, or a task failure stops it
            await self._drain_actions()
        finally:
            self.stop_event.set()
            await self._close()
        if self.supervisor.failure is not None:
            raise self.supervisor.failure

    def _bank_sync_task(self, name: str) -> Callable[[], Coroutine[Any, Any, None]]:
        return lambda: self.bank_sync.run_bank(name, self.stop_event)

    def _task_failed(self, failure: TaskFailed) -> None:
        """A task failure stops the service; /healthz reports it (``tasks``) until the process exits."""
        if failure.task == "pipeline":
            self.crashed = str(failure)

    async def _drain_actions(self) -> None:
        """Give freshly written notifications and takedowns a chance to go out before exiting."""
        drain = min(10.0, self.cfg.service.shutdown_grace)
        results = await asyncio.gather(self.dispatcher.drain(timeout=drain), self.takedowns.drain(timeout=drain),
                                       return_exceptions=True)
        for name, result in zip(("outbox", "takedown-outbox"), results, strict=True):
            if isinstance(result, Exception):
                log.error("draining the %s before exit failed; its items stay pending in the store", name,
                          exc_info=result)

    def _make_rescanner(self, photodna: PhotoDnaMatcher, pipeline: Pipeline) -> Rescanner:
        return Rescanner(
            self.cfg.photodna.rescan,
            matcher=photodna,
            budget=photodna.client.budget,
            store=self.stores.rescan,
            fetcher=self.wiki_client,
            wikis={w.id: w for w in self.cfg.wikis},
            prepare=prepare,
            cpu=self._cpu,
            thumbnail_cfg=self.cfg.thumbnail,
            planners=self.planners,
            metrics=self.metrics,
            scan_version=lambda: pipeline.scan_version,
            on_actions=lambda items: self._kick_actions(),
            allowlist=self.negative_bank,
            on_scanned=self.file_hashes.add if self.file_hashes is not None else None,
            media=self.cfg.media,
        )

    def _kick_actions(self) -> None:
        """New outbox items were written (a match, a decision): both dispatchers look for due items now, and
        the review backlog is counted again."""
        self.dispatcher.kick()
        self.takedowns.kick()
        self.backlog.kick()

    async def _forward_stop(self, pipeline: Pipeline) -> None:
        await self.stop_event.wait()
        pipeline.stop()

    async def _maintenance(self) -> None:
        retention = self.cfg.pipeline.dedupe_retention_days * 86400
        while not self.stop_event.is_set():
            try:
                removed = await self.stores.ledger.prune_events(time.time() - retention)
                if removed:
                    log.info("pruned handled-event records", extra={"removed": removed})
                self.metrics.outbox_pending.set(await self.stores.outbox.pending_count())
            except ServiceError as exc:  # the store is down: try again next round
                log.error("maintenance round failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=3600)

    def stop(self) -> None:
        if not self.stop_event.is_set():
            log.info("stopping: finishing in-flight events", extra={"grace": self.cfg.service.shutdown_grace})
        self.stop_event.set()

    async def _close(self) -> None:
        await self.supervisor.close()  # every long-lived task, in reverse start order
        await self.wiki_client.aclose()
        await self.takedowns.aclose()
        if self.photodna is not None:
            try:
                await self.photodna.aclose()  # gives the unspent budget lease back
            except Exception:
                log.exception("closing the PhotoDNA client failed")
        if self._cpu is not None:
            self._cpu.shutdown()
        await self.http.close()
        await self.stores.close()
        log.info("service stopped")
