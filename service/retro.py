"""Retroactive matching: hashes a bank gains are matched against the stored hashes of every file already scanned.

Each :class:`~service.matchers.banks.BankDelta` with added hashes becomes a stored
:class:`~service.store.base.RetroDelta` and goes through two steps, its progress stored after each batch
so that a restart resumes it instead of repeating it:

1. **matching** (``banks.retro.batch`` hashes at a time): SHA-1 and MD5 by indexed lookups in the store, PDQ
   through a :class:`~service.retro_search.PdqSearch` of the stored files' PDQ hashes (loaded at start, kept up
   to date as files are scanned), at the bank's ``pdq_threshold``.  In the service the search runs in a process
   of its own within ``banks.retro.cpu_share`` of one core (:class:`~service.retro_search.SearchProcess`);
   when that process dies, a new one is started and loaded, and the batch is repeated;
2. **acting**: each hit file's matches go through the normal act stage
   (:func:`service.pipeline_steps.record_matches` with the service's planners: record, notification,
   takedown policy, review), marked ``found by retroactive match: <bank>, added <time>`` in
   ``Match.details["retroactive"]``.  Outbox keys are per upload version, so a file already notified is
   never notified twice, across restarts too.

**Flood guard**: a delta whose hits cover more than ``banks.flood_guard.max_hits`` files is quarantined
instead: its matches are recorded for review with no action, one alert email goes to Trust & Safety, and
nothing more happens until ``mediamoderation bank quarantine release ID``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from service.config import BanksSection, NotifySection
from service.matchers.banks import BankDelta, BankEntry
from service.metrics import Metrics
from service.models import Match
from service.negative_bank import NegativeBank
from service.pipeline_steps import record_matches
from service.retro_search import VARIANTS, Batch, LocalSearch, PdqSearch, SearchDied
from service.stages import Planner
from service.store.base import (
    RETRO_ACTING,
    RETRO_DONE,
    RETRO_MATCHING,
    RETRO_QUARANTINED,
    FileHashes,
    NewAction,
    OutboxItem,
    RetroDelta,
    RetroStore,
)

log = logging.getLogger(__name__)

Entry = tuple[str, str, str, str]  # hash, category, source, id
Hit = tuple[int, int, int | None]  # file id, entry index, PDQ distance (None: exact)
_KIND_BY_LENGTH = {40: "sha1", 32: "md5", 64: "pdq"}
_HEX = re.compile(r"[0-9a-f]+")
_LOAD_BATCH = 100_000
_ACT_PROGRESS_EVERY = 50  # files acted on between progress writes
VARIANT_BATCH = 5000  # new hashes per step at least, while variants are stored (each step reads them all once)
_MAX_DEATHS = 3  # search process deaths in a row (without a finished batch) before the task fails


def marker(bank: str, added_at: float) -> str:
    """The text every retroactive match carries (record, email, review page)."""
    when = datetime.fromtimestamp(added_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"found by retroactive match: {bank}, added {when}"


def pdq_rows(hexes: Sequence[str]) -> np.ndarray:
    """PDQ hashes (64 hex digits each) as (N, 4) uint64 rows in the banks' word layout."""
    return np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint64).reshape(-1, 4)


class StoredPdqs:
    """The stored file PDQ hashes (quality at least ``quality_min``) in a :class:`PdqSearch`, keyed by file id."""

    def __init__(self, search: PdqSearch | None = None, *, quality_min: int = 0) -> None:
        self.search: PdqSearch = search if search is not None else LocalSearch()
        self.quality_min = quality_min
        self.last_id = 0
        self._generation = self.search.generation

    def __len__(self) -> int:
        return self.search.size

    async def refresh(self, store: RetroStore) -> int:
        """Add files stored since the last call (all of them when the search lost its index); returns how many
        were added.  Each batch read becomes packed arrays at once (no per-hash Python objects kept) and goes
        to the search as it is read; the search takes them all in one index update."""
        if self.search.generation != self._generation:  # a new search process: it starts empty
            self.last_id, self._generation = 0, self.search.generation
        added = 0
        buffered = False  # batches sent with last=False, not yet in the index
        while True:
            rows = await store.file_pdqs(self.last_id, _LOAD_BATCH)
            if not rows:
                break
            last_id = rows[-1][0]
            kept = [(i, pdq, v) for i, pdq, quality, v in rows if quality >= self.quality_min and len(pdq) == 64]
            try:
                packed = pdq_rows([pdq for _, pdq, _ in kept])
            except ValueError:  # a row that is not hex (never written by the service): skip just those
                kept = [(i, pdq, v) for i, pdq, v in kept if _HEX.fullmatch(pdq)]
                packed = pdq_rows([pdq for _, pdq, _ in kept])
            if kept:
                ids = np.fromiter((i for i, _, _ in kept), dtype=np.int64, count=len(kept))
                with_variants = [(i, v) for i, _, v in kept if v is not None and len(v) == VARIANTS * 32]
                var_ids = np.fromiter((i for i, _ in with_variants), dtype=np.int64, count=len(with_variants))
                var_words = np.frombuffer(b"".join(v for _, v in with_variants), dtype=np.uint64).reshape(-1, 4)
                buffered = len(rows) == _LOAD_BATCH  # more may follow: one index update for all of them
                await self.search.add(Batch(ids, packed, var_ids, var_words), last=not buffered)
                added += len(kept)
            self.last_id = last_id
        if buffered:
            await self.search.add(Batch(np.empty(0, np.int64), np.empty((0, 4), np.uint64)))
        return added


class RetroMatcher:
    """Runs the deltas (see the module docstring); ``on_delta`` is the :meth:`BankSet.subscribe` listener."""

    def __init__(
        self,
        cfg: BanksSection,
        *,
        store: RetroStore,
        planners: Sequence[Planner],
        metrics: Metrics,
        notify: NotifySection | None = None,
        on_actions: Callable[[list[OutboxItem]], None] = lambda items: None,
        allowlist: NegativeBank | None = None,
        index: StoredPdqs | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.planners = list(planners)
        self.metrics = metrics
        self.notify = notify
        self.on_actions = on_actions
        self.allowlist = allowlist
        self.pdqs = index if index is not None else StoredPdqs(LocalSearch(cfg.retro.cpu_share),
                                                               quality_min=cfg.pdq_quality_min)
        self.clock = clock
        self.cpu_share = cfg.retro.cpu_share
        self.max_hits = cfg.flood_guard.max_hits
        self._incoming: collections.deque[BankDelta] = collections.deque()  # appended from the reload thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self.loaded = False

    # ------------------------------------------------------------------ intake

    def on_delta(self, delta: BankDelta) -> None:
        """A bank changed (called in the thread that reloaded it): queue the delta and wake the task."""
        if not delta.added:
            return
        self._incoming.append(delta)
        self.metrics.retro_queue.inc(len(delta.added))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def save_incoming(self) -> list[int]:
        """Store the queued deltas (from then on a restart resumes them); their ids."""
        ids = []
        while self._incoming:
            delta = self._incoming[0]
            entries = await asyncio.to_thread(entries_of, delta.added)
            ids.append(await self.store.add_retro_delta(delta.bank, delta.at, entries))
            self._incoming.popleft()
            log.info("bank gained hashes: matching them against stored file hashes",
                     extra={"bank": delta.bank, "added": len(entries), "delta": ids[-1]})
        return ids

    # ------------------------------------------------------------------ the task

    async def load(self) -> None:
        t0 = time.monotonic()
        n = await self.pdqs.refresh(self.store)
        self.metrics.file_hashes_indexed.set(len(self.pdqs))
        self.loaded = True
        log.info("stored file PDQ hashes indexed for retroactive matching",
                 extra={"files": n, "seconds": round(time.monotonic() - t0, 2)})

    async def run(self, stop: asyncio.Event) -> None:
        """Resume unfinished deltas, then handle new ones as banks change, until ``stop``."""
        self._loop = asyncio.get_running_loop()
        try:
            await self._run(stop)
        finally:
            self.close()

    def close(self) -> None:
        """End the search (its process, if it has one; a later search starts a new one)."""
        self.pdqs.search.close()

    async def _run(self, stop: asyncio.Event) -> None:
        if not self.loaded:
            await self.load()
        while not stop.is_set():
            await self.step(stop)
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waiters, timeout=self.cfg.retro.refresh_interval,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
            self._wake.clear()

    async def step(self, stop: asyncio.Event | None = None) -> None:
        """One round: store new deltas, run every unfinished delta (the index first takes in the files
        scanned since the last round: only when there is something to match, as adding to it costs)."""
        await self.save_incoming()
        for status in await self.store.retro_delta_status((RETRO_MATCHING, RETRO_ACTING)):
            if stop is not None and stop.is_set():
                break
            if status.state == RETRO_MATCHING:
                await self._refresh()
            delta = await self.store.get_retro_delta(status.id)
            if delta is not None and delta.state in (RETRO_MATCHING, RETRO_ACTING):
                await self.process(delta, stop)
        await self._gauges()

    async def _gauges(self) -> None:
        open_ = await self.store.retro_delta_status((RETRO_MATCHING, RETRO_ACTING))
        waiting = sum(d.size - d.progress for d in open_ if d.state == RETRO_MATCHING)
        self.metrics.retro_queue.set(waiting + sum(len(d.added) for d in self._incoming))
        self.metrics.retro_lag.set(max(0.0, self.clock() - min(d.created_at for d in open_)) if open_ else 0.0)

    # ------------------------------------------------------------------ one delta

    async def process(self, delta: RetroDelta, stop: asyncio.Event | None = None,
                      on_progress: Callable[[RetroDelta], None] | None = None) -> RetroDelta:
        """Take one delta as far as it goes (done, quarantined, or ``stop``); returns its last state."""
        if delta.state == RETRO_MATCHING:
            delta = await self._match(delta, stop, on_progress)
            if delta.state == RETRO_MATCHING:
                return delta  # stopped
            if delta.state == RETRO_QUARANTINED:
                return delta
        if delta.state == RETRO_ACTING:
            delta = await self._act(delta, stop, on_progress)
        return delta

    async def _match(self, delta: RetroDelta, stop: asyncio.Event | None,
                     on_progress: Callable[[RetroDelta], None] | None) -> RetroDelta:
        threshold = self.threshold(delta.bank)
        hits = list(delta.hits)
        done = delta.progress
        # Each step streams every stored variant hash past the step's new hashes: larger steps then.
        batch = max(self.cfg.retro.batch, VARIANT_BATCH) if self.pdqs.search.variants else self.cfg.retro.batch
        deaths = 0  # of the search process in a row
        while done < len(delta.entries):
            if stop is not None and stop.is_set():
                return delta
            chunk = delta.entries[done:done + batch]
            try:
                found = await self.match_entries(chunk, done, threshold)
            except SearchDied as exc:
                deaths += 1
                self.metrics.retro_search_restarts.inc()
                log.error("retroactive search process died; starting a new one and loading the stored hashes again",
                          extra={"error": str(exc), "delta": delta.id, "in_a_row": deaths})
                if deaths >= _MAX_DEATHS:
                    raise
                await self._refresh()  # the new process starts empty
                continue
            deaths = 0
            hits += found
            done += len(chunk)
            await self.store.update_retro_delta(delta.id, state=RETRO_MATCHING, progress=done, hits=hits)
            delta = _replace(delta, progress=done, hits=tuple(hits))
            self.metrics.retro_hashes.labels(delta.bank).inc(len(chunk))
            self.metrics.retro_queue.dec(len(chunk))
            if on_progress is not None:
                on_progress(delta)
        files = {h[0] for h in hits}
        if self.max_hits and len(files) > self.max_hits:
            return await self._quarantine(delta, files)
        await self.store.update_retro_delta(delta.id, state=RETRO_ACTING, progress=0)
        return _replace(delta, state=RETRO_ACTING, progress=0)

    async def match_entries(self, entries: Sequence[Entry], first: int, threshold: int) -> list[Hit]:
        """Hits of ``entries`` (numbered from ``first``) among the stored files.  The PDQ search keeps to
        ``banks.retro.cpu_share`` of a core by itself (service.retro_search); raises ``SearchDied``."""
        by_kind: dict[str, dict[str, list[int]]] = {"sha1": {}, "md5": {}}
        pdq_idx: list[int] = []
        pdq_hex: list[str] = []
        for n, (value, *_rest) in enumerate(entries, first):
            kind = _KIND_BY_LENGTH.get(len(value)) if _HEX.fullmatch(value) else None
            if kind == "pdq":
                pdq_idx.append(n)
                pdq_hex.append(value)
            elif kind is not None:
                by_kind[kind].setdefault(value, []).append(n)
        hits: list[Hit] = []
        for kind, wanted in by_kind.items():
            if wanted:
                for f in await self.store.files_by_hash(kind, list(wanted)):
                    have = f.sha1 if kind == "sha1" else f.md5
                    hits += [(f.id, n, None) for n in wanted.get(have or "", ())]
        if pdq_hex and len(self.pdqs):
            found = await self.pdqs.search.query(pdq_rows(pdq_hex), threshold)
            hits += [(file_id, pdq_idx[row], dist) for file_id, row, dist in found]
        return hits

    async def _refresh(self) -> None:
        await self.pdqs.refresh(self.store)
        self.metrics.file_hashes_indexed.set(len(self.pdqs))

    def threshold(self, bank: str) -> int:
        return next((b.pdq_threshold for b in self.cfg.list if b.name == bank), 31)

    # ------------------------------------------------------------------ acting and the flood guard

    async def _files_with_matches(self, delta: RetroDelta) -> list[tuple[FileHashes, list[Match]]]:
        per_file: dict[int, list[Hit]] = {}
        for h in delta.hits:
            per_file.setdefault(h[0], []).append(h)
        files = {f.id: f for f in await self.store.files_by_id(list(per_file))}
        note = marker(delta.bank, delta.added_at)
        out = []
        for file_id in sorted(per_file):
            f = files.get(file_id)
            if f is not None:
                hits = per_file[file_id]
                out.append((f, [self._make_match(delta, delta.entries[n], dist, note, f) for _, n, dist in hits]))
        return out

    def _make_match(self, delta: RetroDelta, entry: Entry, dist: int | None, note: str, f: FileHashes) -> Match:
        value, category, source, entry_id = entry
        kind = _KIND_BY_LENGTH[len(value)]
        details: dict[str, Any] = {"retroactive": note, "delta": delta.id}
        if kind == "pdq":
            details.update(threshold=self.threshold(delta.bank), quality=f.pdq_quality)
        return Match(matcher=kind, bank=delta.bank, category=category, hash_id=entry_id or value, hash_value=value,
                     distance=dist, source=source or None, details=details)

    async def _act(self, delta: RetroDelta, stop: asyncio.Event | None,
                   on_progress: Callable[[RetroDelta], None] | None) -> RetroDelta:
        files = await self._files_with_matches(delta)
        done = delta.progress
        while done < len(files):
            if stop is not None and stop.is_set():
                await self.store.update_retro_delta(delta.id, state=RETRO_ACTING, progress=done)
                return _replace(delta, progress=done)
            f, matches = files[done]
            kept = await record_matches(f.event, f.sha1, matches, store=self.store, planners=self.planners,
                                        metrics=self.metrics, on_actions=self.on_actions, allowlist=self.allowlist,
                                        pdq=f.pdq)
            for m in kept:
                self.metrics.retro_matches.labels(m.bank, m.matcher).inc()
            if kept:
                log.warning("retroactive match", extra={
                    "wiki": f.event.wiki, "title": f.event.title, "sha1": f.sha1, "bank": delta.bank,
                    "delta": delta.id, "matches": [f"{m.matcher}:{m.hash_id}:{m.distance}" for m in kept]})
            done += 1
            if done % _ACT_PROGRESS_EVERY == 0:
                await self.store.update_retro_delta(delta.id, state=RETRO_ACTING, progress=done)
                if on_progress is not None:
                    on_progress(_replace(delta, progress=done))
        await self.store.update_retro_delta(delta.id, state=RETRO_DONE, progress=done)
        log.info("retroactive matching of a bank delta done",
                 extra={"bank": delta.bank, "delta": delta.id, "hashes": len(delta.entries), "files": len(files)})
        return _replace(delta, state=RETRO_DONE, progress=done)

    async def _quarantine(self, delta: RetroDelta, files: set[int]) -> RetroDelta:
        """Record every hit for review (no notification, no takedown), send one alert, hold the delta."""
        for f, matches in await self._files_with_matches(delta):
            await record_matches(f.event, f.sha1, matches, store=self.store, planners=[], metrics=self.metrics,
                                 on_actions=self.on_actions, allowlist=self.allowlist, pdq=f.pdq)
        text = (f"Flood guard: bank {delta.bank} gained {len(delta.entries)} hashes that match {len(files)} "
                f"already-scanned files (limit banks.flood_guard.max_hits = {self.max_hits}). The change is "
                f"quarantined as delta {delta.id}: no takedown, no per-file email; the matches are in the review "
                f"queue. Release it with `mediamoderation bank quarantine release {delta.id}` once the list is "
                "checked.")
        if self.notify is not None and self.notify.enabled:
            payload = {
                "alert": text, "subject_prefix": "FLOOD GUARD", "wiki": "-", "title": f"bank {delta.bank}",
                "summary": text, "matches": [], "categories": sorted({e[1] for e in delta.entries}),
                "done": ["matches recorded for review only", "no automatic takedown, no per-file notification"],
                "event_id": f"retro-delta-{delta.id}", "sha1": None,
            }
            items = await self.store.add_actions([NewAction(key=f"flood:{delta.bank}:{delta.id}", kind="notify",
                                                            payload=payload)])
            if items:
                self.on_actions(items)
        note = f"{len(files)} files hit (limit {self.max_hits})"
        await self.store.update_retro_delta(delta.id, state=RETRO_QUARANTINED, progress=len(delta.entries), note=note)
        self.metrics.retro_quarantined.labels(delta.bank).inc()
        log.error("flood guard: bank delta quarantined", extra={
            "bank": delta.bank, "delta": delta.id, "hashes": len(delta.entries), "files": len(files),
            "limit": self.max_hits})
        return _replace(delta, state=RETRO_QUARANTINED, note=note)

    async def release(self, delta_id: int, by: str) -> RetroDelta:
        """A quarantined delta is acted on like any other (notifications, takedown policy)."""
        delta = await self.store.get_retro_delta(delta_id)
        if delta is None or delta.state != RETRO_QUARANTINED:
            raise LookupError(f"no quarantined delta {delta_id}")
        note = f"{delta.note}; released by {by}"
        await self.store.update_retro_delta(delta_id, state=RETRO_ACTING, progress=0, note=note)
        return _replace(delta, state=RETRO_ACTING, progress=0, note=note)


def entries_of(added: Sequence[BankEntry]) -> list[Entry]:
    return [(e.hash, e.category, e.source, e.id) for e in added]


def _replace(delta: RetroDelta, **changes: Any) -> RetroDelta:
    return dataclasses.replace(delta, **changes)
