"""What each pipeline stage does with one upload: read, fetch, thumbnail, match, remote, act (and record).

:class:`StageSteps` is a mixin of :class:`service.pipeline.Pipeline`, which owns the queues, workers,
intake and completion; its worker calls ``_<stage>(work)`` and puts the item on the queue of the stage
it returns.  The steps other runners share are plain functions here: :func:`read_upload` (the ingest
role's filter too), :func:`prepare_media` and :func:`record_matches` (the rescanner's decode and record).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from service import events as ev
from service.config import Config, MediaSection, ThumbnailSection, WikiSection
from service.errors import MalformedEvent, ServiceError, Unscannable
from service.media.download import discard
from service.media.frames import prepare_frames
from service.media.pool import CpuPool
from service.media.video import prepare_video
from service.metrics import Metrics
from service.models import (
    CLEAN,
    CLEAN_EXACT_ONLY,
    KIND_AUDIO,
    KIND_IMAGE,
    KIND_VIDEO,
    MATCH,
    FetchedMedia,
    Match,
    PreparedMedia,
    RawEvent,
    UploadEvent,
)
from service.negative_bank import NegativeBank
from service.stages import ExactBank, Fetcher, Matcher, Planner, Prepare, Work, _call_prepare, _Finished, _merge
from service.store.base import (
    ANY_BANK,
    REMOTE_CLEAN,
    REMOTE_FAILED,
    REMOTE_MATCH,
    REMOTE_UNSCANNABLE,
    MatchStore,
    OutboxItem,
    PipelineStore,
)

log = logging.getLogger("service.pipeline")  # the pipeline's logger, as before the split


class StageSteps:
    """The per-stage steps; relies on the attributes :class:`~service.pipeline.Pipeline` sets."""

    if TYPE_CHECKING:
        cfg: Config
        wikis: dict[str, WikiSection]
        fetcher: Fetcher
        exact: ExactBank
        cpu: CpuPool
        prepare: Prepare
        thumbnail_cfg: ThumbnailSection
        matchers: list[Matcher]
        remote: list[Matcher]
        remote_when_local: bool
        allowlist: NegativeBank | None
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
        try:
            work.prepared = await prepare_media(self.cpu, self.prepare, fetched, work.sha1 or fetched.info.sha1,
                                                self.thumbnail_cfg, self.cfg.media, self.metrics)
        finally:
            work.fetched = None  # drop the bytes (and any temporary file) as early as possible
        if work.prepared.kind == KIND_AUDIO:
            work.outcome = CLEAN_EXACT_ONLY  # unless the exact banks match
        return "match"

    async def _match(self, work: Work) -> str:
        media = work.prepared
        assert media is not None
        for m in self.matchers:  # in turn: local matchers answer at once (a task each would cost more)
            _merge(work, await m.match(media))
        if not self.remote or (work.matches and not self.remote_when_local):
            return "act"
        if media.kind != KIND_IMAGE and media.jpeg is None:  # audio, or a video without a keyframe to send
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
        results = await asyncio.gather(*(remote_match(m, media) for m in self.remote), return_exceptions=True)
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
        outcome = MATCH if work.matches else (work.outcome or CLEAN)
        if work.matches and not (work.recorded and work.counted == len(work.matches)):
            await self._record(work)
        raise _Finished(outcome)

    async def _record(self, work: Work) -> None:
        """Store the matches and enqueue their actions (idempotent: recording twice adds nothing twice)."""
        await record_matches(work.event, work.sha1 or "", work.matches, store=self.store, planners=self.planners,
                             metrics=self.metrics, on_actions=self.on_actions, allowlist=self.allowlist,
                             counted=work.counted, pdq=work.prepared.pdq.hex if work.prepared and work.prepared.pdq
                             else None)
        work.counted = len(work.matches)


async def remote_match(matcher: Matcher, media: PreparedMedia) -> list[Match]:
    """A remote matcher's verdict; for a video, on each keyframe in turn (best first) until one matches, the
    match saying at what time the keyframe is."""
    if not media.keyframes:
        return await matcher.match(media)
    for t, jpeg in media.keyframes:
        hits = await matcher.match(replace(media, jpeg=jpeg))
        if hits:
            return [replace(m, details={**m.details, "media": media.kind, "offsets": [t]}) for m in hits]
    return []


def read_upload(raw: RawEvent, wikis: Collection[str], metrics: Metrics) -> UploadEvent | None:
    """One raw event to the upload to scan; None for a malformed event or one to skip (counted, never raised)."""
    try:
        read = ev.parse(raw, wikis)
    except MalformedEvent as exc:
        problem = getattr(exc, "problem", "malformed")  # events.parse's slug for the metric
        metrics.events_malformed.labels(problem).inc()
        metrics.events_skipped.labels("malformed").inc()
        log.warning("malformed event skipped", extra={"position": raw.label, "problem": str(exc)})
        return None
    if read.time is not None:
        metrics.source_lag.set(max(0.0, time.time() - read.time))
    parsed = read.result
    if isinstance(parsed, ev.Skip):
        metrics.events_skipped.labels(parsed.reason).inc()
        return None
    return parsed


async def prepare_media(cpu: CpuPool, prepare: Prepare, fetched: FetchedMedia, sha1: str | None,
                        cfg: ThumbnailSection, media: MediaSection | None = None,
                        metrics: Metrics | None = None) -> PreparedMedia:
    """Decode and hash fetched media on the CPU pool (the thumbnail stage; the rescanner's decode).

    Images (and animations, documents' pages) go through ``prepare``; a video's temporary file through
    :func:`~service.media.video.prepare_video` (and is deleted afterwards, whatever happens); audio is
    not decoded (exact hashes only)."""
    t0 = time.monotonic()
    try:
        if fetched.kind == KIND_AUDIO:
            prepared = PreparedMedia(sha1=sha1 or fetched.info.sha1, md5=fetched.original_md5, pdq=None, jpeg=None,
                                     width=0, height=0, source="original", kind=KIND_AUDIO)
        elif fetched.kind == KIND_VIDEO:
            video = (media or MediaSection()).video
            prepared = await cpu.run(prepare_video, fetched.path, sha1, fetched.original_md5, video, cfg)
        elif media is None and not fetched.pages:
            prepared = await cpu.run(_call_prepare, prepare, fetched.data, sha1, cfg, fetched.original_md5,
                                     fetched.data_source)
        else:
            image = media is not None and fetched.kind == KIND_IMAGE
            animation = media.animation if media is not None and image else None
            documents = media.documents if media is not None and image else None  # a multi-page TIFF's pages
            prepared = await cpu.run(prepare_frames, prepare, fetched.data, sha1, cfg, fetched.original_md5,
                                     fetched.data_source, animation, fetched.pages, documents)
    finally:
        discard(fetched)
    if metrics is not None:
        metrics.media_kinds.labels(prepared.kind).inc()
        metrics.decode_seconds.labels(prepared.kind).observe(time.monotonic() - t0)
        if prepared.frames_sampled:
            metrics.frames_hashed.labels(prepared.kind).inc(prepared.frames_sampled)
    return prepared


async def record_matches(
    event: UploadEvent,
    sha1: str,
    matches: Sequence[Match],
    *,
    store: MatchStore,
    planners: Sequence[Planner],
    metrics: Metrics,
    on_actions: Callable[[list[OutboxItem]], None],
    allowlist: NegativeBank | None = None,
    counted: int = 0,
    pdq: str | None = None,
) -> list[Match]:
    """Store an upload's matches and enqueue their actions (idempotent: recording twice adds nothing twice);
    returns the matches kept.  Matches of a bank a reviewer dismissed for this content or a near copy of it
    (the negative bank) are counted but never alert again.  ``counted``: how many of ``matches`` are already in
    the metrics; ``pdq``: the content's PDQ (hex) when known."""
    kept = list(matches)
    if allowlist is not None and sha1:
        banks = await allowlist.suppressed_banks(sha1, pdq)
        kept = [m for m in matches if m.bank not in banks and ANY_BANK not in banks]
        for m in matches[counted:]:
            if m.bank in banks or ANY_BANK in banks:
                metrics.allowlisted.labels(m.bank).inc()
    actions = [a for plan in planners for a in plan(event, sha1, kept)] if kept else []
    new_items = await store.record_matches(event, sha1, kept, actions) if kept else []
    for m in matches[counted:]:
        metrics.matches.labels(m.category, m.matcher).inc()
    if new_items:
        on_actions(new_items)
    return kept
