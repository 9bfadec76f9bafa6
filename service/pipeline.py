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

What each stage does with an item is in :mod:`service.pipeline_steps`; the types the stages share
(protocols, :class:`~service.stages.Work`) are in :mod:`service.stages`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from prometheus_client import Counter

from service import links
from service.actions.notify import unscannable_key, unscannable_payload
from service.config import Config, ThumbnailSection
from service.errors import FetchError, FileGone, ServiceError, Unscannable
from service.file_hashes import scanned_file
from service.media.download import discard
from service.media.pool import CpuPool, as_cpu_pool
from service.metrics import Metrics
from service.models import CLEAN, CLEAN_EXACT_ONLY, GONE, MATCH, RawEvent, UploadEvent, error, unscannable
from service.negative_bank import NegativeBank
from service.pipeline_steps import StageSteps, read_upload
from service.runtime.committer import Committer
from service.runtime.supervisor import reap
from service.sources.base import Source

# The stage types live in service.stages; re-exported so ``from service.pipeline import X`` keeps working.
from service.stages import ExactBank as ExactBank
from service.stages import Fetcher as Fetcher
from service.stages import Matcher as Matcher
from service.stages import Planner as Planner
from service.stages import Prepare as Prepare
from service.stages import Work as Work
from service.stages import _call_prepare as _call_prepare
from service.stages import _Finished as _Finished
from service.stages import _merge as _merge
from service.stages import scan_version
from service.store.base import (
    REMOTE_FAILED,
    REMOTE_SEEN,
    FileHashes,
    NewAction,
    OutboxItem,
    PipelineStore,
    RemoteScan,
    ScanRecord,
)

log = logging.getLogger(__name__)

_INTAKE_BATCH = 64  # events admitted together at most (one store round trip)


class Pipeline(StageSteps):
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
        cpu: CpuPool | Executor | None,
        prepare: Prepare,
        metrics: Metrics,
        on_actions: Callable[[list[OutboxItem]], None] = lambda items: None,
        thumbnail_cfg: ThumbnailSection | None = None,
        remote_matchers: Sequence[Matcher] = (),
        remote_when_local: bool = False,
        remote_retry_delays: tuple[float, ...] = (60.0,),
        allowlist: NegativeBank | None = None,
        on_scanned: Callable[[FileHashes], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_scanned = on_scanned  # the hashes of each scanned file, for retroactive matching
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
        self.cpu = as_cpu_pool(cpu)  # a process pool that survives its workers, threads, or the loop's default
        self.prepare = prepare
        self.metrics = metrics
        self.on_actions = on_actions
        self.thumbnail_cfg = thumbnail_cfg or cfg.thumbnail
        self.wikis = {w.id: w for w in cfg.wikis}
        size = cfg.pipeline.queue_size
        self.ingest: asyncio.Queue[RawEvent] = asyncio.Queue(size)
        self.stages = ("fetch", "thumbnail", "match", *(("remote",) if self.remote else ()), "act")
        self.queues: dict[str, asyncio.Queue[Work]] = {stage: asyncio.Queue(size) for stage in self.stages}
        self.committer = Committer(source, metrics)  # the checkpoint moves only past finished events
        self._inflight_ids: set[str] = set()
        self._link_log = links.MismatchLogLimit()  # one event_link_mismatch warning per wiki per minute
        self.stop_event = asyncio.Event()
        self.finished = 0
        self._idle = asyncio.Condition()
        self.last_event_at: float | None = None
        for stage, q in self.queues.items():  # read when scraped, not set at every move of every item
            metrics.queue_depth.labels(stage).set_function(q.qsize)
        self._intake_batch = min(_INTAKE_BATCH, size)  # never more events read ahead than the queues allow
        self._outcome_counters: dict[str, Counter] = {}  # labelled children looked up once, not per upload
        # Outcomes being recorded (see _end): at most queue_size at a time.
        self._recording: set[asyncio.Task[None]] = set()
        self._recording_slots = asyncio.Semaphore(size)
        self._recording_crash: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, committer_supervised: bool = False) -> None:
        """Run until the source ends (finite sources) or :meth:`stop` is called, then drain.

        ``committer_supervised``: the caller runs :attr:`committer` as a task of its supervisor; the pipeline
        then only writes the last checkpoint when it ends."""
        conc = self.cfg.pipeline.concurrency
        workers: list[asyncio.Task[None]] = [asyncio.create_task(self._intake(), name="intake")]
        for stage in self.stages:
            n = getattr(conc, stage)
            workers += [asyncio.create_task(self._worker(stage), name=f"{stage}-{i}") for i in range(n)]
        committer = None if committer_supervised else asyncio.create_task(self.committer.run(), name="committer")
        source_task = asyncio.create_task(self.source.run(self.ingest, self.stop_event), name="source")
        stop_wait = asyncio.create_task(self.stop_event.wait(), name="stop-wait")
        crash = self._recording_crash = asyncio.get_running_loop().create_future()
        try:
            # Whichever comes first: the source ends, a worker (or a recording) crashes, or stop is requested.
            done, _ = await asyncio.wait({source_task, stop_wait, crash, *workers}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in workers:
                    task.result()  # a crashed worker is a bug: raise its cause
                    raise RuntimeError(f"pipeline worker {task.get_name()} exited")
                if task is crash:
                    task.result()  # recording an outcome raised: a bug, raise its cause
            if source_task in done:
                source_task.result()  # a fatal source error propagates
            else:
                self.stop_event.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(source_task), self.cfg.service.shutdown_grace)
            await self._drain(self.cfg.service.shutdown_grace)
            if crash.done():
                crash.result()  # an outcome's recording crashed while draining
        finally:
            stop_wait.cancel()
            self.stop_event.set()
            recording = list(self._recording)
            for task in [source_task, *workers, *recording]:
                task.cancel()
            raised = sys.exc_info()[1]  # a crashed worker's or source's error on its way up: not logged twice
            for task in [source_task, *workers, *recording]:
                await reap(task, raised=raised)
            if not crash.done():
                crash.cancel()
            elif not crash.cancelled():
                crash.exception()  # raised above, or behind the error already on its way up
            if committer is not None:
                committer.cancel()
                await reap(committer, raised=raised)
            await asyncio.shield(self.committer.commit())

    def stop(self) -> None:
        self.stop_event.set()

    async def _drain(self, grace: float) -> None:
        async def join_all() -> None:
            await self.ingest.join()
            for q in self.queues.values():
                await q.join()
            while self._recording:  # the outcomes still being written
                await asyncio.wait(set(self._recording))

        try:
            await asyncio.wait_for(join_all(), timeout=grace)
        except TimeoutError:
            log.warning(
                "shutdown grace period over; unfinished events will be read again after restart",
                extra={"pending": self.committer.pending},
            )

    async def wait_idle(self, count: int | None = None) -> None:
        """Test helper: wait until ``count`` events finished (or nothing is pending)."""
        async with self._idle:
            await self._idle.wait_for(
                lambda: (self.finished >= count) if count is not None else self.committer.pending == 0
            )

    # ------------------------------------------------------------------ intake

    async def _intake(self) -> None:
        while True:
            raws = [await self.ingest.get()]
            # What else is already waiting is admitted with it: the store answers them in one round trip.
            while len(raws) < self._intake_batch and not self.ingest.empty():
                raws.append(self.ingest.get_nowait())
            try:
                await self._admit(raws)
            finally:
                for _ in raws:
                    self.ingest.task_done()

    async def _admit(self, raws: list[RawEvent]) -> None:
        """Admit events in their order: parse and filter each, ask the store about all, route each."""
        works: list[Work] = []
        ids: set[str] = set()
        for raw in raws:
            seq = self.committer.track(raw.position)
            self.last_event_at = time.time()
            parsed = read_upload(raw, self.wikis.keys(), self.metrics)
            if parsed is None:  # malformed, or not an upload to scan: counted and skipped
                await self._done(seq)
                continue
            event = links.configured_links(parsed, self.wikis[parsed.wiki], self.metrics, self._link_log)
            if event.event_id in self._inflight_ids or event.event_id in ids:
                self.metrics.events_skipped.labels("duplicate").inc()
                await self._done(seq)
                continue
            ids.add(event.event_id)
            now = time.monotonic()
            works.append(Work(seq=seq, event=event, started=now, deadline=now + self.cfg.pipeline.event_deadline,
                              sha1=event.sha1))
        if not works:
            return
        if len(works) == 1:
            answers = [await self._ask_store(works[0])]
        else:  # concurrent asks, which the store groups (one thread hop, one transaction)
            answers = list(await asyncio.gather(*(self._ask_store(w) for w in works)))
        for work, answer in zip(works, answers, strict=True):
            event = work.event
            try:
                if isinstance(answer, Exception):
                    raise answer
                seen, cached = answer
                if seen:
                    self.metrics.events_skipped.labels("duplicate").inc()
                    await self._done(work.seq)
                    continue
                self._inflight_ids.add(event.event_id)
                stage = self._route(work, cached)
            except Exception as exc:  # a bug or poison in one event ends that event, never the intake
                self.metrics.errors.labels("intake", "internal").inc()
                log.exception("unexpected error at intake", extra={"event_id": event.event_id})
                await self._finish(work, error("internal"), exc)
                continue
            await self.queues[stage].put(work)

    async def _ask_store(self, work: Work) -> tuple[bool, ScanRecord | None] | Exception:
        """The store's answer about ``work``'s event, or the exception (a bug) that asking raised."""
        try:
            return await self._admit_with_retry(work.event)
        except Exception as exc:
            return exc

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
        if cached is not None and cached.bank_version == self.scan_version \
                and cached.outcome in (CLEAN, MATCH, CLEAN_EXACT_ONLY):
            self.metrics.cache_hits.inc()
            work.cached = True
            work.cached_scan = cached
            work.matches = list(cached.matches)
            if cached.outcome == CLEAN_EXACT_ONLY:
                work.outcome = CLEAN_EXACT_ONLY
            return "act"
        return "fetch"

    @property
    def scan_version(self) -> str:
        """What a stored scan result is valid for: the banks' version, the versions of local matchers with
        content of their own (vPDQ banks) and the remote matchers asked."""
        return scan_version(self.exact.version, self.matchers, [m.name for m in self.remote])

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
                await self._end(work, fin.outcome)
            except TimeoutError:
                self.metrics.errors.labels(stage, "deadline").inc()
                await self._end(work, error("deadline"))
            except FileGone:
                await self._end(work, GONE)
            except Unscannable as exc:
                await self._end(work, unscannable(exc.reason), exc)
            except FetchError as exc:
                self.metrics.errors.labels(stage, exc.reason).inc()
                await self._end(work, error(exc.reason), exc)
            except ServiceError as exc:
                reason = exc.reason
                self.metrics.errors.labels(stage, reason).inc()
                await self._end(work, error(reason), exc)
            except Exception as exc:  # a bug in one item must not stop the stream; record and go on
                self.metrics.errors.labels(stage, "internal").inc()
                log.exception("unexpected error", extra={"stage": stage, "event_id": work.event.event_id})
                await self._end(work, error("internal"), exc)
            finally:
                latency.observe(time.monotonic() - t0)
                in_flight.dec()
                queue.task_done()

    # ------------------------------------------------------------------ completion

    async def _end(self, work: Work, outcome: str, exc: BaseException | None = None) -> None:
        """:meth:`_finish` ``work`` without holding the stage worker meanwhile.

        The worker goes on with its next item while the outcome is written, so the writes of items that
        end about together reach the store together (one transaction, :mod:`service.store.grouped`)
        instead of one after another. At most ``pipeline.queue_size`` outcomes are being written at a
        time (a slow store holds the workers back); draining waits for them; a crash stops the pipeline."""
        await self._recording_slots.acquire()
        task = asyncio.create_task(self._finish(work, outcome, exc), name=f"record-{work.event.event_id}")
        self._recording.add(task)
        task.add_done_callback(self._recorded)

    def _recorded(self, task: asyncio.Task[None]) -> None:
        self._recording.discard(task)
        self._recording_slots.release()
        if task.cancelled():
            return
        exc = task.exception()
        crash = self._recording_crash
        if exc is not None and crash is not None and not crash.done():
            crash.set_exception(exc)

    async def _finish(self, work: Work, outcome: str, exc: BaseException | None = None) -> None:
        event = work.event
        discard(work.fetched)  # a video's temporary file, when the upload ended before its decode
        if work.recorded and outcome.startswith("error:"):
            # Local matches were recorded and acted on; only the remote part failed (retried on schedule).
            outcome = MATCH
        scan: ScanRecord | None = None
        if work.sha1 and not work.cached and outcome in (CLEAN, MATCH, CLEAN_EXACT_ONLY):
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
        actions = self._unscannable_actions(event, outcome)
        try:
            try:
                await self.store.finish(event, outcome, scan, self._remote_scans(work, outcome), actions)
            except ServiceError:
                raise
            except Exception:  # this event's data or a bug, not an outage: record that it failed
                self.metrics.errors.labels("store", "internal").inc()
                log.exception("could not record outcome; recording error:internal",
                              extra={"event_id": event.event_id, "outcome": outcome})
                if outcome == error("internal"):
                    raise
                outcome = error("internal")
                await self.store.finish(event, outcome, None, [])
        except ServiceError as store_exc:
            # The outcome could not be recorded: do not move the checkpoint past this event.
            log.error("could not record outcome; event stays below the checkpoint",
                      extra={"event_id": event.event_id, "error": str(store_exc)})
            self.metrics.errors.labels("store", "write").inc()
            self._inflight_ids.discard(event.event_id)
            return
        except Exception:  # not even error:internal can be recorded: move past it rather than stop
            self.metrics.errors.labels("store", "unrecorded").inc()
            log.exception("could not record any outcome; moving past the event", extra={"event_id": event.event_id})
        if outcome.startswith("unscannable:"):
            self.metrics.unscannable.labels(outcome.split(":", 1)[1]).inc()
            if actions:
                self.on_actions([])  # its notification: the dispatcher looks now
        if self.on_scanned is not None and work.sha1 and (outcome in (CLEAN, MATCH) or work.prepared is not None):
            self.on_scanned(scanned_file(event, work.sha1, work.prepared, work.cached_scan))
        duration = time.monotonic() - work.started
        label = outcome.split(":", 1)[0] if outcome.startswith("error:") else outcome
        counter = self._outcome_counters.get(label)
        if counter is None:
            counter = self._outcome_counters[label] = self.metrics.outcomes.labels(label)
        counter.inc()
        self.metrics.event_latency.observe(duration)
        level = logging.WARNING if outcome.startswith("error:") else logging.INFO
        if log.isEnabledFor(level):  # the line's fields are built only when it is written
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
            log.log(level, "outcome", extra=fields)
        self._inflight_ids.discard(event.event_id)
        await self._done(work.seq)

    def _unscannable_actions(self, event: UploadEvent, outcome: str) -> list[NewAction]:
        """Nothing silent: an unscannable upload's notification, enqueued with its review case."""
        notify = self.cfg.actions.notify
        if not outcome.startswith("unscannable:") or not notify.enabled or not notify.unscannable:
            return []
        payload = unscannable_payload(event, outcome.split(":", 1)[1])
        return [NewAction(key=unscannable_key(event), kind="notify", payload=payload)]

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
        self.committer.done(seq)  # sources that commit per event (Kafka: per partition) hear of each one
        self.finished += 1
        async with self._idle:
            self._idle.notify_all()

