"""What each pipeline stage does with one upload: fetch, thumbnail, match, remote, act (and record).

A mixin of :class:`service.pipeline.Pipeline`, which owns the queues, workers, intake and completion;
its worker calls ``_<stage>(work)`` and puts the item on the queue of the stage it returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.config import ThumbnailSection, WikiSection
from service.errors import ServiceError, Unscannable
from service.media.pool import CpuPool
from service.metrics import Metrics
from service.models import CLEAN, MATCH
from service.stages import ExactBank, Fetcher, Matcher, Planner, Prepare, Work, _call_prepare, _Finished, _merge
from service.store.base import (
    REMOTE_CLEAN,
    REMOTE_FAILED,
    REMOTE_MATCH,
    REMOTE_UNSCANNABLE,
    AllowlistStore,
    OutboxItem,
    PipelineStore,
)

log = logging.getLogger("service.pipeline")  # the pipeline's logger, as before the split


class StageSteps:
    """The per-stage steps; relies on the attributes :class:`~service.pipeline.Pipeline` sets."""

    if TYPE_CHECKING:
        wikis: dict[str, WikiSection]
        fetcher: Fetcher
        exact: ExactBank
        cpu: CpuPool
        prepare: Prepare
        thumbnail_cfg: ThumbnailSection
        matchers: list[Matcher]
        remote: list[Matcher]
        remote_when_local: bool
        allowlist: AllowlistStore | None
        planners: list[Planner]
        store: PipelineStore
        metrics: Metrics
        on_actions: Callable[[list[OutboxItem]], None]

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
        work.prepared = await self.cpu.run(
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
                    reason = result.reason if isinstance(result, ServiceError) else type(result).__name__.lower()
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
