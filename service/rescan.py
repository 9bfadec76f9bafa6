"""The rescanner: asks a remote matcher (PhotoDNA) again about content it could not or did not flag.

Each round (every ``rescan.interval`` seconds, or at once when PhotoDNA accepts the key again):

1. **Retries.**  Failed scans (``error:photodna…`` outcomes: retries exhausted, circuit open, key
   refused, budget used up, deadline) whose next attempt is due, the longest-waiting first.  The store
   spaces attempts by ``rescan.retry_delays`` (the last delay repeats: nothing is ever given up).
2. **Rescans.**  Content PhotoDNA found clean more than ``rescan.age_days`` ago, oldest verdict first,
   at most as many as the *spare* budget allows (:meth:`MonthlyBudget.spare`: what is left this month
   after ``budget_reserve`` and the live traffic projected to the month's end), so that hashes added to
   the industry lists later still catch old uploads.

Each item is fetched again from the latest upload seen with that content (wiki and title), decoded
like the pipeline does, and sent with background priority (live uploads always go first through the
shared rate limiter).  A match is recorded and notified like any match: the outbox key is per
wiki/title/SHA-1, so an upload that was already reported is not emailed twice, and an old clean upload
that matches now is emailed once.  A title that no longer shows this content (deleted, overwritten)
ends the item as ``gone``.

An upload that ended as ``error:photodna…`` (key refused, retries exhausted, ...) keeps that outcome only
until its content gets a verdict: then every such upload of it takes the final outcome (``clean``,
``match``, ``unscannable:…``, ``gone``) in the events ledger, whose ``history`` keeps the error.
``mediamoderation_outcomes_total`` counts the final outcome once more and
``mediamoderation_outcomes_superseded_total{outcome="error"}`` the error it replaced, so that
``outcomes_total - outcomes_superseded_total`` counts uploads by final outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor

from service.config import MediaSection, RescanSection, ThumbnailSection, WikiSection
from service.errors import FileGone, ServiceError, Unscannable
from service.file_hashes import scanned_file
from service.matchers.base import RemoteMatcher
from service.media.pool import CpuPool, as_cpu_pool
from service.metrics import Metrics
from service.models import CLEAN, GONE, MATCH, Match, UploadEvent, unscannable
from service.models import error as error_outcome
from service.negative_bank import NegativeBank
from service.pipeline_steps import prepare_media, record_matches
from service.ratelimit import MonthlyBudget
from service.stages import Fetcher, Planner, Prepare
from service.store.base import (
    REMOTE_CLEAN,
    REMOTE_FAILED,
    REMOTE_GONE,
    REMOTE_MATCH,
    REMOTE_UNSCANNABLE,
    FileHashes,
    OutboxItem,
    RemoteScan,
    RemoteScanRow,
    RescanStore,
    ScanRecord,
)

log = logging.getLogger(__name__)


class Rescanner:
    def __init__(
        self,
        cfg: RescanSection,
        *,
        matcher: RemoteMatcher,
        budget: MonthlyBudget,
        store: RescanStore,
        fetcher: Fetcher,
        wikis: Mapping[str, WikiSection],
        prepare: Prepare,
        cpu: CpuPool | Executor | None,
        thumbnail_cfg: ThumbnailSection,
        planners: Sequence[Planner],
        metrics: Metrics,
        scan_version: Callable[[], str],
        on_actions: Callable[[list[OutboxItem]], None] = lambda items: None,
        clock: Callable[[], float] = time.time,
        allowlist: NegativeBank | None = None,
        on_scanned: Callable[[FileHashes], None] | None = None,
        media: MediaSection | None = None,
    ) -> None:
        self.cfg = cfg
        # Frame sampling, budgets: a video, animation or document is decoded as the live pipeline decodes it.
        self.media = media or MediaSection()
        self.on_scanned = on_scanned  # the hashes of each file decoded again, for retroactive matching
        self.matcher = matcher
        self.budget = budget
        self.store = store
        self.fetcher = fetcher
        self.wikis = dict(wikis)
        self.prepare = prepare
        self.cpu = as_cpu_pool(cpu)
        self.thumbnail_cfg = thumbnail_cfg
        self.planners = list(planners)
        self.metrics = metrics
        self.scan_version = scan_version
        self.on_actions = on_actions
        self.clock = clock
        self.allowlist = allowlist  # matches a reviewer dismissed as false positives never alert again
        self._wake = asyncio.Event()
        self._recovered = False
        self.rounds = 0
        self._round_done = asyncio.Condition()

    def recovered(self) -> None:
        """The remote service accepts us again: every failed scan is due now."""
        self._recovered = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except ServiceError as exc:  # the store is down: try again next round
                log.error("rescan round failed", extra={"error": str(exc)})
            except Exception:  # a bug must not end rescans for good: log it, try again next round
                log.exception("rescan round crashed")
            async with self._round_done:
                self._round_done.notify_all()
            await self._pause(stop)
            self._wake.clear()

    async def _pause(self, stop: asyncio.Event) -> None:
        """Until the next round: ``interval`` seconds, a :meth:`wake`, or ``stop``."""
        waiter = asyncio.ensure_future(self._wake.wait())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, timeout=self.cfg.interval, return_when=asyncio.FIRST_COMPLETED)
        finally:  # both helpers are reaped here, whichever way the wait ended
            waiter.cancel()
            stopper.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)

    async def wait_rounds(self, count: int) -> None:
        """Wait until ``count`` rounds have run (for tests and tools)."""
        async with self._round_done:
            await self._round_done.wait_for(lambda: self.rounds >= count)

    async def run_once(self) -> dict[str, int]:
        """One round; returns how many items ended in each result."""
        try:
            return await self._round()
        finally:
            self.rounds += 1

    async def _round(self) -> dict[str, int]:
        name = self.matcher.name
        now = self.clock()
        if self._recovered:
            self._recovered = False
            n = await self.store.retry_remote_failures_now(name, now)
            if n:
                log.info("remote matcher works again: retrying failed scans now", extra={"count": n})
        results: dict[str, int] = {}
        if not self.matcher.can_send():
            return results
        limit = self.cfg.batch if self.matcher.authorized else 1  # while refused: one probe only
        retries = await self.store.due_remote_retries(name, now, limit)
        await self._process(retries, "retry", results)
        room = limit - len(retries)
        if self.cfg.enabled and room > 0 and self.matcher.can_send():
            spare = self.budget.spare(self.cfg.budget_reserve)
            if spare > 0:
                clean_before = now - self.cfg.age_days * 86400
                stale = await self.store.stale_remote_scans(name, clean_before, min(room, spare))
                await self._process(stale, "rescan", results)
        return results

    async def _process(self, rows: Sequence[RemoteScanRow], kind: str, results: dict[str, int]) -> None:
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(row: RemoteScanRow) -> None:
            async with sem:
                try:
                    result = await self._scan(row)
                except Exception:  # one item's bug must not stop the others
                    log.exception("rescan of one item crashed", extra={"sha1": row.sha1})
                    result = "internal"
            if result is None:
                return
            results[result] = results.get(result, 0) + 1
            self.metrics.rescans.labels(kind, result).inc()

        async with asyncio.TaskGroup() as tg:
            for row in rows:
                tg.create_task(one(row))

    async def _scan(self, row: RemoteScanRow) -> str | None:
        """Fetch, decode and ask again; record the new state and return it.  None: skipped, untouched,
        because the matcher would not send now (key refused, circuit open, budget used up)."""
        name = self.matcher.name
        upload = row.upload
        wiki = self.wikis.get(upload.wiki) if upload is not None else None
        state, error, matches = REMOTE_FAILED, None, []
        if not self.matcher.can_send():
            return None
        try:
            if upload is None or wiki is None:
                raise FileGone(f"no configured wiki upload to fetch {row.sha1} from")
            fetched = await self.fetcher.fetch(wiki, upload.title, expected_sha1=row.sha1)
            if fetched.info.sha1 and fetched.info.sha1.lower() != row.sha1:
                raise FileGone(f"{upload.wiki} {upload.title!r} now shows {fetched.info.sha1}, not {row.sha1}")
            media = await prepare_media(self.cpu, self.prepare, fetched, row.sha1, self.thumbnail_cfg, self.media,
                                        self.metrics)
            if self.on_scanned is not None and upload is not None:
                self.on_scanned(scanned_file(upload, row.sha1, media))
            if not self.matcher.can_send():
                return None
            matches = await self.matcher.match(media, background=True)
            state = REMOTE_MATCH if matches else REMOTE_CLEAN
        except FileGone as exc:
            state, error = REMOTE_GONE, str(exc)[:300]
        except Unscannable as exc:
            state, error = REMOTE_UNSCANNABLE, exc.reason
        except ServiceError as exc:
            reason = exc.reason
            state, error = REMOTE_FAILED, f"{reason}: {exc}"[:300]
        if matches and upload is not None:
            await self._record(upload, row.sha1, matches)
        if state != REMOTE_FAILED:  # before the state: if that write fails, the item is retried and settles then
            await self._settle(row, _FINAL_OUTCOME[state](error))
        delays = self.cfg.retry_delays if state == REMOTE_FAILED else ()
        await self.store.put_remote_scans([RemoteScan(row.sha1, name, state, self.clock(), error=error,
                                                      retry_delays=delays)])
        level = logging.WARNING if state in (REMOTE_MATCH, REMOTE_FAILED) else logging.INFO
        log.log(level, "rescan", extra={"sha1": row.sha1, "state": state, "error": error,
                                        "title": upload.title if upload else None})
        return state

    async def _settle(self, row: RemoteScanRow, outcome: str) -> None:
        """Uploads of this content that ended in this matcher's error take the final ``outcome``; the metrics
        count it, and the error it replaces as superseded (see :class:`~service.metrics.Metrics`)."""
        event_id = row.upload.event_id if row.upload is not None else None
        replaced = await self.store.supersede_outcomes(row.sha1, event_id, error_outcome(self.matcher.name),
                                                         outcome)
        for old in replaced:
            self.metrics.outcomes.labels(outcome_label(outcome)).inc()
            self.metrics.outcomes_superseded.labels(outcome_label(old)).inc()
        if replaced:
            log.info("uploads that failed get their final outcome", extra={
                "sha1": row.sha1, "outcome": outcome, "replaced": replaced})

    async def _record(self, upload: UploadEvent, sha1: str, found: list[Match]) -> None:
        """Record and act on the matches as the pipeline does, then put them in the scan cache."""
        matches = await record_matches(upload, sha1, found, store=self.store, planners=self.planners,
                                       metrics=self.metrics, on_actions=self.on_actions, allowlist=self.allowlist)
        if not matches:
            return
        # Later uploads of this content are reported from the scan cache.
        old = await self.store.get_scan(sha1)
        keys = {m.key for m in old.matches} if old else set()
        merged = (*(old.matches if old else ()), *(m for m in matches if m.key not in keys))
        await self.store.put_scan(ScanRecord(
            sha1=sha1, outcome=MATCH, bank_version=old.bank_version if old else self.scan_version(),
            scanned_at=self.clock(), pdq=old.pdq if old else None, pdq_quality=old.pdq_quality if old else None,
            md5=old.md5 if old else None, matches=merged,
        ))


def outcome_label(outcome: str) -> str:
    """The ``outcome`` label of ``mediamoderation_outcomes_total`` (errors by kind only, as the pipeline counts)."""
    return outcome.split(":", 1)[0] if outcome.startswith("error:") else outcome


# An upload's final outcome once the remote matcher gave this verdict on its content (``error`` is the
# reason an unscannable item carries).
_FINAL_OUTCOME: dict[str, Callable[[str | None], str]] = {
    REMOTE_CLEAN: lambda err: CLEAN,
    REMOTE_MATCH: lambda err: MATCH,
    REMOTE_UNSCANNABLE: lambda err: unscannable(err or "unknown"),
    REMOTE_GONE: lambda err: GONE,
}

