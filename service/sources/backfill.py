"""Backfill: scan files that were uploaded before the service watched the wiki.

``mediamoderation backfill --wiki WIKI [--start TIME] [--end TIME]`` enumerates the wiki's files with
``list=allimages`` sorted by upload time, in the largest batches the account may ask for
(``ailimit=max``: 500, or 5000 with ``apihighlimits``), one request at a time, with ``maxlag``.
Each file becomes the same recentchange-shaped upload event the stream sources deliver, so it goes
through the normal pipeline (or, with ``--role ingest``, onto the work topic).

* Checkpoint: after every batch a marker event carries the continuation of the next batch; when
  the watermark passes it (every file of the batch finished), it is stored.  An interrupted
  backfill resumes from the last finished batch instead of listing from the start.
* Files whose SHA-1 was already found clean against the current banks are not sent at all.
* Progress: a live line on a terminal, a log line every ``backfill.progress_interval`` seconds
  otherwise; the counts are metrics (``backfill_files_total{state}``, outcomes and matches).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from service.config import Config
from service.errors import WikiApiError
from service.events import sha1_to_base36
from service.mediawiki.client import MediaWikiClient
from service.metrics import Metrics
from service.models import CLEAN, RawEvent
from service.sources.base import SourceBase
from service.sources.mwapi import iso_time, mw_timestamp, polling_client, recentchange_event, source_error
from service.store.base import CheckpointStore, ScanStore

log = logging.getLogger(__name__)


def checkpoint_name(cfg: Config, wiki: str, start: datetime | None, end: datetime | None) -> str:
    """One checkpoint per wiki and range, so different ranges never resume each other."""
    return f"{cfg.backfill.checkpoint_name}:{wiki}:{iso_time(start) if start else ''}:{iso_time(end) if end else ''}"


def marker(batch: int, position: dict[str, Any]) -> RawEvent:
    """Carries a batch's checkpoint through the pipeline (it is skipped there as not an upload)."""
    data = json.dumps({"meta": {"id": f"backfill-batch-{batch}", "domain": "backfill"}, "type": "backfill-batch"})
    return RawEvent(data=data, position=position, label=f"backfill batch {batch}")


class BackfillSource(SourceBase):
    """A finite source: every file of ``wiki`` between ``start`` and ``end``, oldest first."""

    name = "backfill"

    def __init__(
        self,
        cfg: Config,
        wiki_id: str,
        *,
        checkpoints: CheckpointStore,
        scans: ScanStore,
        metrics: Metrics,
        start: datetime | None = None,
        end: datetime | None = None,
        scan_version: Callable[[], str | None] = lambda: None,
        client: MediaWikiClient | None = None,
    ) -> None:
        wiki = cfg.wiki(wiki_id)
        if wiki is None:
            raise ValueError(f"--wiki {wiki_id!r} is not one of the configured wikis "
                             f"({', '.join(w.id for w in cfg.wikis)})")
        self.cfg = cfg
        self.wiki = wiki
        self.checkpoints = checkpoints
        self.scans = scans
        self.metrics = metrics
        self.start = start
        self.end = end
        self.scan_version = scan_version
        self.client = client or polling_client(wiki, user_agent=cfg.service.user_agent, metrics=metrics,
                                               maxlag=cfg.fetch.maxlag)
        self.checkpoint = checkpoint_name(cfg, wiki.id, start, end)
        self.listed = 0
        self.skipped = 0
        self.batches = 0
        self.resumed_from: str | None = None
        self.cursor_time: str | None = None  # upload time of the newest file listed
        self.total_hint: int | None = None
        self.finished = False
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    async def commit(self, position: Any) -> None:
        await self.checkpoints.set_checkpoint(self.checkpoint, position)

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        saved = await self.checkpoints.get_checkpoint(self.checkpoint)
        saved = saved if isinstance(saved, dict) else {}
        if saved.get("done"):
            log.info("backfill already complete for this range", extra={"checkpoint": self.checkpoint,
                                                                        "listed": saved.get("listed")})
            self.finished = True
            self.metrics.backfill_done.labels(self.wiki.id).set(1)
            return
        token: str | None = saved.get("aicontinue")
        self.listed = int(saved.get("listed") or 0)
        self.resumed_from = token
        if token:
            log.info("backfill resuming", extra={"checkpoint": self.checkpoint, "aicontinue": token,
                                                 "listed_before": self.listed})
        try:
            await self._list(token, out, stop)
        except WikiApiError as exc:
            raise source_error(exc) from exc
        finally:
            self._connected = False
            await self.client.aclose()

    async def _list(self, token: str | None, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        site = await self.client.siteinfo()
        if self.start is None and self.end is None:
            self.total_hint = int((site.get("statistics") or {}).get("images") or 0) or None
        self._connected = True
        params = {"list": "allimages", "aisort": "timestamp", "aidir": "newer",
                  "ailimit": str(self.cfg.backfill.batch_size or "max"),
                  "aiprop": "timestamp|user|url|sha1|size|mime|mediatype"}
        if self.start is not None:
            params["aistart"] = iso_time(self.start)
        if self.end is not None:
            params["aiend"] = iso_time(self.end)
        pages = self.client.pages(params, what="allimages", start={"aicontinue": token} if token else None)
        async with contextlib.aclosing(pages):
            async for page in pages:
                if stop.is_set():
                    return
                files = (page.data.get("query") or {}).get("allimages") or []
                following = (page.next or {}).get("aicontinue")
                self.batches += 1
                self.metrics.backfill_batches.labels(self.wiki.id).inc()
                batch_position = {"aicontinue": token, "listed": self.listed}
                await self._send_batch(files, site, batch_position, out, stop)
                if stop.is_set():
                    return
                done = following is None
                await out.put(marker(self.batches, {"aicontinue": following, "listed": self.listed, "done": done}))
                if done:
                    self.finished = True
                    self.metrics.backfill_done.labels(self.wiki.id).set(1)
                    log.info("backfill listed its whole range", extra={"listed": self.listed, "skipped": self.skipped})
                    return
                token = following

    async def _send_batch(self, files: list[dict[str, Any]], site: dict[str, Any], position: dict[str, Any],
                          out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        version = self.scan_version()
        for f in files:
            if stop.is_set():
                return
            try:
                sha1 = str(f["sha1"]).lower()
                title = str(f["title"])
                stamp = str(f["timestamp"])
            except (KeyError, TypeError):
                log.warning("backfill: skipping an unreadable file entry", extra={"entry": str(f)[:300]})
                continue
            self.listed += 1
            self.cursor_time = stamp
            self.metrics.backfill_files.labels(self.wiki.id, "listed").inc()
            if version is not None and len(sha1) == 40:
                scan = await self.scans.get_scan(sha1)
                # Only clean results are skipped: a known match under a new title is still reported.
                if scan is not None and scan.bank_version == version and scan.outcome == CLEAN:
                    self.skipped += 1
                    self.metrics.backfill_files.labels(self.wiki.id, "skipped").inc()
                    continue
            # A stable id, so a file listed again (a resumed batch) is recognised as handled.
            event_id = f"backfill:{self.wiki.id}:{sha1}:{hashlib.sha1(title.encode()).hexdigest()[:16]}"
            event = recentchange_event(
                self.wiki, site, event_id=event_id, title=title, timestamp=stamp,
                user=f.get("user"), action="upload", sha1_b36=sha1_to_base36(sha1) if len(sha1) == 40 else None,
                img_timestamp=mw_timestamp(stamp), page_url=f.get("descriptionurl"),
            )
            self.metrics.events_received.labels(self.name).inc()
            self.metrics.backfill_files.labels(self.wiki.id, "queued").inc()
            await out.put(RawEvent(data=json.dumps(event), position=position, label=f"backfill {title}"))


class Progress:
    """Files listed, scanned and matched, the rate and an ETA: a live line on a terminal, else log lines."""

    def __init__(self, source: BackfillSource, metrics: Metrics, *, interval: float, stream: TextIO | None = None,
                 scanned: Callable[[], float] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.metrics = metrics
        self.interval = interval
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._scanned = scanned or self._outcomes
        self._clock = clock
        self.started = clock()
        self.listed_at_start: int | None = None

    def _sum(self, name: str) -> float:
        total = 0.0
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    total += sample.value
        return total

    def _outcomes(self) -> float:
        return self._sum("mediamoderation_outcomes_total") + self.source.skipped

    def snapshot(self) -> dict[str, Any]:
        s = self.source
        if self.listed_at_start is None:
            self.listed_at_start = s.listed
        elapsed = max(self._clock() - self.started, 1e-6)
        scanned = int(self._scanned())
        rate = scanned / elapsed
        remaining: float | None = None
        if s.total_hint:
            remaining = max(s.total_hint - s.listed, 0) + max(s.listed - scanned - self.listed_at_start, 0)
        elif s.cursor_time and (s.start or s.end):
            begin = (s.start or datetime(2001, 1, 1, tzinfo=UTC)).timestamp()
            finish = (s.end or datetime.now(UTC)).timestamp()
            at = datetime.strptime(s.cursor_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
            done_share = min(max((at - begin) / max(finish - begin, 1.0), 1e-6), 1.0)
            listed_now = s.listed - self.listed_at_start
            remaining = listed_now / done_share - scanned if listed_now else None
        eta = remaining / rate if remaining is not None and rate > 0 else None
        return {"wiki": s.wiki.id, "listed": s.listed, "skipped": s.skipped, "scanned": scanned,
                "matched": int(self._sum("mediamoderation_matches_total")), "rate": round(rate, 1),
                "eta_seconds": round(eta) if eta is not None else None, "batches": s.batches}

    def line(self) -> str:
        snap = self.snapshot()
        eta = snap["eta_seconds"]
        eta_text = "--:--:--" if eta is None else f"{eta // 3600:02d}:{eta % 3600 // 60:02d}:{eta % 60:02d}"
        return (f"backfill {snap['wiki']}: listed {snap['listed']}  scanned {snap['scanned']}  "
                f"matched {snap['matched']}  skipped {snap['skipped']}  {snap['rate']:.1f} files/s  ETA {eta_text}")

    async def run(self, stop: asyncio.Event) -> None:
        period = 0.5 if self.tty else self.interval
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=period)
                self.emit()
        finally:
            self.emit(final=True)

    def emit(self, *, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line() + ("\n" if final else ""))
            self.stream.flush()
        else:
            log.info("backfill progress", extra=self.snapshot())
