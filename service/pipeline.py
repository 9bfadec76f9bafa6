"""The bounded asyncio pipeline: intake → fetch → thumbnail → match → [remote →] act.

Each stage has its own worker count and a bounded queue in front of it, so a slow stage stops the
source from reading (backpressure) and memory stays flat however far behind the stream we are.
CPU work (decode, resize, PDQ) runs in an executor.  Every event that enters ends with exactly one
recorded outcome, and the source position is committed only past events that are all finished
(see :mod:`service.watermark`).

Local matchers (exact, PDQ) run in the match stage.  Remote matchers (PhotoDNA) run in their own
``remote`` stage, only for items without a local match (or for every item with
``remote_when_local``; local matches are then recorded and acted on *before* the remote call, so
they never wait for it).  Each remote matcher's verdict per SHA-1 is stored with the outcome
(:class:`~service.store.base.RemoteScan`): a remote failure ends the upload as ``error:<reason>``
and leaves a ``failed`` state that the rescanner retries on its schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from service import events as ev
from service.config import Config, ThumbnailSection, WikiSection
from service.errors import FetchError, FileGone, MalformedEvent, ServiceError, Unscannable
from service.metrics import Metrics
from service.models import (
    CLEAN,
    GONE,
    MATCH,
    FetchedMedia,
    Match,
    PreparedMedia,
    RawEvent,
    UploadEvent,
    error,
    unscannable,
)
from service.sources.base import Source
from service.store.base import (
    REMOTE_CLEAN,
    REMOTE_FAILED,
    REMOTE_MATCH,
    REMOTE_SEEN,
    REMOTE_UNSCANNABLE,
    AllowlistStore,
    NewAction,
    OutboxItem,
    PipelineStore,
    RemoteScan,
    ScanRecord,
)
from service.watermark import Watermark

log = logging.getLogger(__name__)


class Fetcher(Protocol):
    async def fetch(self, wiki: WikiSection, title: str, *, expected_sha1: str | None = None) -> FetchedMedia: ...


class Matcher(Protocol):
    name: str

    async def match(self, media: PreparedMedia) -> list[Match]: ...


class ExactBank(Protocol):
    @property
    def version(self) -> str: ...

    def match_sha1(self, sha1: str) -> list[Match]: ...


Prepare = Callable[..., PreparedMedia]
# A planner turns the matches of one upload into the effects to perform (notify, later takedown).
Planner = Callable[[UploadEvent, str, Sequence[Match]], list[NewAction]]


@dataclass(slots=True)
class Work:
    seq: int
    event: UploadEvent
    started: float
    deadline: float
    sha1: str | None = None
    fetched: FetchedMedia | None = None
    prepared: PreparedMedia | None = None
    matches: list[Match] = field(default_factory=list)
    cached: bool = False
    outcome: str | None = None
    recorded: bool = False  # local matches were already recorded (and acted on) before the remote stage
    counted: int = 0  # matches already counted in the metrics
    remote_states: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # matcher -> (state, error)


class _Finished(Exception):
    """Raised inside a stage to end an item early with ``outcome``."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        *,
        source: Source,
        store: PipelineStore,
        fetcher: Fetcher,
        exact: ExactBank,
        matchers: Sequence[Matcher],
        planners: Sequence[Planner],
        cpu: Executor | None,
        prepare: Prepare,
        metrics: Metrics,
        on_actions: Callable[[list[OutboxItem]], None] = lambda items: None,
        thumbnail_cfg: ThumbnailSection | None = None,
        remote_matchers: Sequence[Matcher] = (),
        remote_when_local: bool = False,
        remote_retry_delays: tuple[float, ...] = (60.0,),
        allowlist: AllowlistStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.allowlist = allowlist  # content a reviewer dismissed as a false positive, per bank
        self.source = source
        self.store = store
        self.fetcher = fetcher
        self.exact = exact
        self.matchers = list(matchers)
        self.remote = list(remote_matchers)
        self.remote_when_local = remote_when_local
        self.remote_retry_delays = remote_retry_delays
        self.planners = list(planners)
        self.cpu = cpu
        self.prepare = prepare
        self.metrics = metrics
        self.on_actions = on_actions
        self.thumbnail_cfg = thumbnail_cfg or cfg.thumbnail
        self.wikis = {w.id: w for w in cfg.wikis}
        size = cfg.pipeline.queue_size
        self.ingest: asyncio.Queue[RawEvent] = asyncio.Queue(size)
        self.stages = ("fetch", "thumbnail", "match", *(("remote",) if self.remote else ()), "act")
        self.queues: dict[str, asyncio.Queue[Work]] = {stage: asyncio.Queue(size) for stage in self.stages}
        self.watermark = Watermark()
        self._wm_changed = asyncio.Event()
        self._ack: Callable[[Any], None] | None = getattr(source, "ack", None)
        self._inflight_ids: set[str] = set()
        self.stop_event = asyncio.Event()
        self.finished = 0
        self._idle = asyncio.Condition()
        self.last_event_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run until the source ends (finite sources) or :meth:`stop` is called, then drain."""
        conc = self.cfg.pipeline.concurrency
        workers: list[asyncio.Task[None]] = [asyncio.create_task(self._intake(), name="intake")]
        for stage in self.stages:
            n = getattr(conc, stage)
            workers += [asyncio.create_task(self._worker(stage), name=f"{stage}-{i}") for i in range(n)]
        committer = asyncio.create_task(self._committer(), name="committer")
        source_task = asyncio.create_task(self.source.run(self.ingest, self.stop_event), name="source")
        stop_wait = asyncio.create_task(self.stop_event.wait(), name="stop-wait")
        try:
            # Whichever comes first: the source ends, a worker crashes, or stop is requested.
            done, _ = await asyncio.wait({source_task, stop_wait, *workers}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in workers:
                    task.result()  # a crashed worker is a bug: raise its cause
                    raise RuntimeError(f"pipeline worker {task.get_name()} exited")
            if source_task in done:
                source_task.result()  # a fatal source error propagates
            else:
                self.stop_event.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(source_task), self.cfg.service.shutdown_grace)
            await self._drain(self.cfg.service.shutdown_grace)
        finally:
            stop_wait.cancel()
            self.stop_event.set()
            for task in [source_task, *workers]:
                task.cancel()
            for task in [source_task, *workers]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await asyncio.shield(self._commit())

    def stop(self) -> None:
        self.stop_event.set()

    async def _drain(self, grace: float) -> None:
        async def join_all() -> None:
            await self.ingest.join()
            for q in self.queues.values():
                await q.join()

        try:
            await asyncio.wait_for(join_all(), timeout=grace)
        except TimeoutError:
            log.warning(
                "shutdown grace period over; unfinished events will be read again after restart",
                extra={"pending": self.watermark.pending},
            )

    async def _committer(self) -> None:
        while True:
            await self._wm_changed.wait()
            self._wm_changed.clear()
            await asyncio.shield(self._commit())
            await asyncio.sleep(0.2)  # coalesce bursts of completions into one write

    async def _commit(self) -> None:
        position = self.watermark.take_changed()
        self.metrics.checkpoint_lag.set(self.watermark.pending)
        if position is not None:
            try:
                await self.source.commit(position)
            except ServiceError as exc:
                log.error("checkpoint write failed; will retry", extra={"error": str(exc)})
                self._wm_changed.set()

    async def wait_idle(self, count: int | None = None) -> None:
        """Test helper: wait until ``count`` events finished (or nothing is pending)."""
        async with self._idle:
            await self._idle.wait_for(
                lambda: (self.finished >= count) if count is not None else self.watermark.pending == 0
            )

    # ------------------------------------------------------------------ intake

    async def _intake(self) -> None:
        while True:
            raw = await self.ingest.get()
            try:
                await self._admit(raw)
            finally:
                self.ingest.task_done()

    async def _admit(self, raw: RawEvent) -> None:
        seq = self.watermark.track(raw.position)
        self.last_event_at = time.time()
        try:
            obj = ev.decode(raw.data)
            when = ev.event_time(obj)
            if when is not None:
                self.metrics.source_lag.set(max(0.0, time.time() - when))
            parsed = ev.classify(obj, self.wikis.keys(), raw.position)
        except MalformedEvent as exc:
            problem = getattr(exc, "problem", "malformed")
            self.metrics.events_malformed.labels(problem).inc()
            self.metrics.events_skipped.labels("malformed").inc()
            log.warning("malformed event skipped", extra={"position": raw.label, "problem": str(exc)})
            await self._done(seq)
            return
        if isinstance(parsed, ev.Skip):
            self.metrics.events_skipped.labels(parsed.reason).inc()
            await self._done(seq)
            return
        event = parsed
        if event.event_id in self._inflight_ids:
            self.metrics.events_skipped.labels("duplicate").inc()
            await self._done(seq)
            return
        now = time.monotonic()
        work = Work(seq=seq, event=event, started=now, deadline=now + self.cfg.pipeline.event_deadline,
                    sha1=event.sha1)
        seen, cached = await self._admit_with_retry(event)
        if seen:
            self.metrics.events_skipped.labels("duplicate").inc()
            await self._done(seq)
            return
        self._inflight_ids.add(event.event_id)
        stage = self._route(work, cached)
        await self.queues[stage].put(work)
        self._gauge()

    async def _admit_with_retry(self, event: UploadEvent) -> tuple[bool, ScanRecord | None]:
        """Ask the store about an event; while the store fails, wait and retry (the source is held back)."""
        delay = 0.5
        while True:
            try:
                return await self.store.admit(event.event_id, event.sha1)
            except ServiceError as exc:
                log.error("store unavailable at intake; retrying",
                          extra={"event_id": event.event_id, "error": str(exc), "delay": delay})
                self.metrics.errors.labels("intake", "store").inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _route(self, work: Work, cached: ScanRecord | None) -> str:
        """Exact SHA-1 before any download; a SHA-1 already scanned against these banks is not fetched."""
        sha1 = work.sha1
        if sha1 is None:
            return "fetch"
        hits = self.exact.match_sha1(sha1)
        if hits:
            work.matches = hits
            return "act"
        if cached is not None and cached.bank_version == self.scan_version and cached.outcome in (CLEAN, MATCH):
            self.metrics.cache_hits.inc()
            work.cached = True
            work.matches = list(cached.matches)
            return "act"
        return "fetch"

    @property
    def scan_version(self) -> str:
        """What a stored scan result is valid for: the banks' version plus the remote matchers asked."""
        names = "+".join(m.name for m in self.remote)
        return f"{self.exact.version}+{names}" if names else self.exact.version

    # ------------------------------------------------------------------ stages

    async def _worker(self, stage: str) -> None:
        queue = self.queues[stage]
        step = getattr(self, f"_{stage}")
        in_flight = self.metrics.in_flight.labels(stage)
        latency = self.metrics.stage_latency.labels(stage)
        while True:
            work = await queue.get()
            in_flight.inc()
            t0 = time.monotonic()
            try:
                remaining = work.deadline - t0
                if remaining <= 0:
                    raise _Finished(error("deadline"))
                async with asyncio.timeout(remaining):
                    next_stage = await step(work)
                if next_stage is not None:
                    await self.queues[next_stage].put(work)
            except _Finished as fin:
                await self._finish(work, fin.outcome)
            except TimeoutError:
                self.metrics.errors.labels(stage, "deadline").inc()
                await self._finish(work, error("deadline"))
            except FileGone:
                await self._finish(work, GONE)
            except Unscannable as exc:
                await self._finish(work, unscannable(exc.reason), exc)
            except FetchError as exc:
                self.metrics.errors.labels(stage, exc.reason).inc()
                await self._finish(work, error(exc.reason), exc)
            except ServiceError as exc:
                reason = str(getattr(exc, "reason", "") or type(exc).__name__.lower())
                self.metrics.errors.labels(stage, reason).inc()
                await self._finish(work, error(reason), exc)
            except Exception as exc:  # a bug in one item must not stop the stream; record and go on
                self.metrics.errors.labels(stage, "internal").inc()
                log.exception("unexpected error", extra={"stage": stage, "event_id": work.event.event_id})
                await self._finish(work, error("internal"), exc)
            finally:
                latency.observe(time.monotonic() - t0)
                in_flight.dec()
                queue.task_done()
                self._gauge()

    async def _fetch(self, work: Work) -> str:
        wiki = self.wikis[work.event.wiki]
        work.fetched = await self.fetcher.fetch(wiki, work.event.title, expected_sha1=work.sha1)
        sha1 = work.fetched.info.sha1 or work.sha1
        if sha1 and sha1 != work.sha1:
            # The event had no SHA-1, or the file changed since: check the exact bank for what is there.
            work.sha1 = sha1
            hits = self.exact.match_sha1(sha1)
            if hits:
                work.matches = hits
                work.fetched = None
                return "act"
        return "thumbnail"

    async def _thumbnail(self, work: Work) -> str:
        fetched = work.fetched
        assert fetched is not None
        loop = asyncio.get_running_loop()
        work.prepared = await loop.run_in_executor(
            self.cpu,
            _call_prepare,
            self.prepare,
            fetched.data,
            work.sha1 or fetched.info.sha1,
            self.thumbnail_cfg,
            fetched.original_md5,
            fetched.data_source,
        )
        work.fetched = None  # drop the bytes as early as possible
        return "match"

    async def _match(self, work: Work) -> str:
        media = work.prepared
        assert media is not None
        results = await asyncio.gather(*(m.match(media) for m in self.matchers))
        for hits in results:
            _merge(work, hits)
        if not self.remote or (work.matches and not self.remote_when_local):
            return "act"
        if work.matches:
            await self._record(work)  # local matches are acted on now, never after the remote call
            work.recorded = True
        return "remote"

    async def _remote(self, work: Work) -> str:
        media = work.prepared
        assert media is not None
        for m in self.remote:  # until a verdict arrives (a deadline or a crash leaves "failed")
            work.remote_states[m.name] = (REMOTE_FAILED, "interrupted")
        results = await asyncio.gather(*(m.match(media) for m in self.remote), return_exceptions=True)
        failure: BaseException | None = None
        for matcher, result in zip(self.remote, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
                if isinstance(result, Unscannable):
                    work.remote_states[matcher.name] = (REMOTE_UNSCANNABLE, result.reason)
                else:
                    reason = getattr(result, "reason", "") or type(result).__name__.lower()
                    work.remote_states[matcher.name] = (REMOTE_FAILED, f"{reason}: {result}"[:300])
                continue
            before = len(work.matches)
            _merge(work, result)
            work.remote_states[matcher.name] = (REMOTE_MATCH if len(work.matches) > before else REMOTE_CLEAN, None)
        if failure is not None:
            if not work.recorded:
                raise failure
            log.warning("remote matcher failed after local matches were recorded; retried on its schedule",
                        extra={"event_id": work.event.event_id, "error": str(failure)[:300]})
        return "act"

    async def _act(self, work: Work) -> None:
        outcome = MATCH if work.matches else CLEAN
        if work.matches and not (work.recorded and work.counted == len(work.matches)):
            await self._record(work)
        raise _Finished(outcome)

    async def _record(self, work: Work) -> None:
        """Store the matches and enqueue their actions (idempotent: recording twice adds nothing twice)."""
        sha1 = work.sha1 or ""
        matches = work.matches
        if self.allowlist is not None and sha1:  # dismissed false positives never alert again
            banks = await self.allowlist.allowlisted_banks(sha1)
            matches = [m for m in work.matches if m.bank not in banks]
            for m in work.matches[work.counted:]:
                if m.bank in banks:
                    self.metrics.allowlisted.labels(m.bank).inc()
        actions = [a for plan in self.planners for a in plan(work.event, sha1, matches)] if matches else []
        new_items = await self.store.record_matches(work.event, sha1, matches, actions) if matches else []
        for m in work.matches[work.counted:]:
            self.metrics.matches.labels(m.category, m.matcher).inc()
        work.counted = len(work.matches)
        if new_items:
            self.on_actions(new_items)

    # ------------------------------------------------------------------ completion

    async def _finish(self, work: Work, outcome: str, exc: BaseException | None = None) -> None:
        event = work.event
        if work.recorded and outcome.startswith("error:"):
            # Local matches were recorded and acted on; only the remote part failed (retried on schedule).
            outcome = MATCH
        scan: ScanRecord | None = None
        if work.sha1 and not work.cached and outcome in (CLEAN, MATCH):
            media = work.prepared
            scan = ScanRecord(
                sha1=work.sha1,
                outcome=outcome,
                bank_version=self.scan_version,
                scanned_at=time.time(),
                pdq=media.pdq.hex if media and media.pdq else None,
                pdq_quality=media.pdq.quality if media and media.pdq else None,
                md5=media.md5 if media else None,
                matches=tuple(work.matches),
            )
        try:
            await self.store.finish(event, outcome, scan, self._remote_scans(work, outcome))
        except ServiceError as store_exc:
            # The outcome could not be recorded: do not move the checkpoint past this event.
            log.error("could not record outcome; event stays below the checkpoint",
                      extra={"event_id": event.event_id, "error": str(store_exc)})
            self.metrics.errors.labels("store", "write").inc()
            self._inflight_ids.discard(event.event_id)
            return
        duration = time.monotonic() - work.started
        self.metrics.outcomes.labels(outcome.split(":", 1)[0] if outcome.startswith("error:") else outcome).inc()
        self.metrics.event_latency.observe(duration)
        fields: dict[str, Any] = {
            "event_id": event.event_id,
            "wiki": event.wiki,
            "title": event.title,
            "sha1": work.sha1,
            "log_action": event.log_action,
            "outcome": outcome,
            "duration_ms": round(duration * 1000, 1),
        }
        if work.matches:
            fields["matches"] = [f"{m.matcher}:{m.bank}:{m.category}:{m.distance}" for m in work.matches]
        if exc is not None and not isinstance(exc, _Finished):
            fields["error"] = str(exc)[:300]
        level = logging.WARNING if outcome.startswith("error:") else logging.INFO
        log.log(level, "outcome", extra=fields)
        self._inflight_ids.discard(event.event_id)
        await self._done(work.seq)

    def _remote_scans(self, work: Work, outcome: str) -> list[RemoteScan]:
        if not self.remote or not work.sha1:
            return []
        now = time.time()
        if not work.remote_states:
            if work.cached and outcome == CLEAN:  # remember the latest upload of this content for rescans
                return [RemoteScan(work.sha1, m.name, REMOTE_SEEN, now, upload=work.event) for m in self.remote]
            return []
        return [
            RemoteScan(work.sha1, name, state, now, upload=work.event, error=err,
                       retry_delays=self.remote_retry_delays if state == REMOTE_FAILED else ())
            for name, (state, err) in work.remote_states.items()
        ]

    async def _done(self, seq: int) -> None:
        position = self.watermark.done(seq)
        if self._ack is not None:  # sources that commit per event (Kafka: per partition) hear of each one
            self._ack(position)
        self._wm_changed.set()
        self.finished += 1
        async with self._idle:
            self._idle.notify_all()

    def _gauge(self) -> None:
        for stage, q in self.queues.items():
            self.metrics.queue_depth.labels(stage).set(q.qsize())


def _merge(work: Work, hits: Sequence[Match]) -> None:
    seen = {m.key for m in work.matches}
    for hit in hits:
        if hit.key not in seen:
            seen.add(hit.key)
            work.matches.append(hit)


def _call_prepare(
    prepare: Prepare, data: bytes, sha1: str, cfg: ThumbnailSection, md5: str | None, source: str
) -> PreparedMedia:
    return prepare(data, sha1, cfg, md5=md5, source=source)
