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
* Progress (:class:`BackfillProgress`): a rich bar on a terminal, a log line every
  ``backfill.progress_interval`` seconds otherwise, and a summary at the end whose numbers add up; the
  counts are metrics (``backfill_files_total{state}``, outcomes and matches).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from service.config import Config
from service.errors import WikiApiError
from service.events import sha1_to_base36
from service.mediawiki.client import MediaWikiClient
from service.metrics import Metrics
from service.models import CLEAN, RawEvent
from service.net import Proxies
from service.progress import Sample, clock_text, metric_by_label, metric_sum
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
                                               maxlag=cfg.fetch.maxlag, proxies=Proxies.for_config(cfg.network))
        self.checkpoint = checkpoint_name(cfg, wiki.id, start, end)
        self.listed = 0
        self.listed_before = 0  # listed by earlier runs of this range (a resumed backfill)
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
        self.listed = self.listed_before = int(saved.get("listed") or 0)
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


class BackfillProgress:
    """What a backfill has done, as a progress :class:`Sample` and as a summary whose numbers add up.

    Every file listed in this run is exactly one of: scanned (clean, matched, gone, unscannable by reason,
    error: the pipeline's outcomes), skipped because its SHA-1 was already found clean against the current
    banks, skipped because its upload event was already handled (an earlier run), or unfinished (the run was
    stopped before its outcome).  With ``role="ingest"`` outcomes happen on the workers: files are "queued".
    """

    def __init__(self, source: BackfillSource, metrics: Metrics, *, role: str = "all") -> None:
        self.source = source
        self.registry = metrics.registry
        self.role = role

    def counts(self) -> dict[str, Any]:
        s = self.source
        outcomes = metric_by_label(self.registry, "mediamoderation_outcomes_total", "outcome")
        # An upload whose error a rescan settled is counted twice in outcomes_total, once as superseded.
        for label, n in metric_by_label(self.registry, "mediamoderation_outcomes_superseded_total", "outcome").items():
            outcomes[label] = outcomes.get(label, 0) - n
        unscannable = {k.split(":", 1)[1]: int(v) for k, v in sorted(outcomes.items())
                       if k.startswith("unscannable:") and v}
        scanned = int(sum(outcomes.values()))
        handled = int(metric_sum(self.registry, "mediamoderation_events_skipped_total", reason="duplicate"))
        listed = s.listed - s.listed_before
        out: dict[str, Any] = {"listed": listed}
        if self.role == "ingest":
            queued = int(metric_sum(self.registry, "mediamoderation_backfill_files_total", state="queued"))
            out.update(queued=queued, skipped_already_scanned=s.skipped)
            out["unfinished"] = max(listed - queued - s.skipped, 0)
            return out
        out.update(
            scanned=scanned, clean=int(outcomes.get("clean", 0)), matched=int(outcomes.get("match", 0)),
            gone=int(outcomes.get("gone", 0)), unscannable=sum(unscannable.values()),
            unscannable_by_reason=unscannable, errors=int(outcomes.get("error", 0)),
            skipped_already_scanned=s.skipped, skipped_already_handled=handled,
        )
        out["unfinished"] = max(listed - scanned - s.skipped - handled, 0)
        return out

    def sample(self) -> Sample:
        s = self.source
        c = self.counts()
        done = s.listed_before + c["listed"] - c["unfinished"]
        total: float | None = None
        if s.total_hint:
            total = max(float(s.total_hint), float(s.listed))
        elif s.cursor_time and (s.start or s.end) and s.listed > s.listed_before:
            begin = (s.start or datetime(2001, 1, 1, tzinfo=UTC)).timestamp()
            finish = (s.end or datetime.now(UTC)).timestamp()
            at = datetime.strptime(s.cursor_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
            share = min(max((at - begin) / max(finish - begin, 1.0), 1e-6), 1.0)
            total = max(s.listed_before + (s.listed - s.listed_before) / share, float(s.listed))
        if s.finished:
            total = float(s.listed)
        shown = {"listed": c["listed"], "matched": c.get("matched", 0),
                 "skipped": c["skipped_already_scanned"] + c.get("skipped_already_handled", 0)}
        return Sample(completed=float(done), total=total, fields=shown)

    def rows(self, elapsed: float) -> list[tuple[str, Any]]:
        c = self.counts()
        rows: list[tuple[str, Any]] = [("listed", c["listed"])]
        if self.source.listed_before:
            rows.append(("listed in earlier runs", self.source.listed_before))
        if self.role == "ingest":
            rows += [("queued to the work topic", c["queued"])]
        else:
            rows += [("scanned", c["scanned"]), ("  clean", c["clean"]), ("  matched", c["matched"]),
                     ("  gone", c["gone"]), ("  unscannable", c["unscannable"])]
            rows += [(f"    {reason}", n) for reason, n in c["unscannable_by_reason"].items()]
            rows += [("  errors", c["errors"]), ("skipped: already handled", c["skipped_already_handled"])]
        rows += [("skipped: already scanned clean", c["skipped_already_scanned"]), ("unfinished", c["unfinished"]),
                 ("elapsed", clock_text(elapsed))]
        return rows

    def summary_fields(self, elapsed: float) -> dict[str, Any]:
        return {**self.counts(), "listed_before": self.source.listed_before, "elapsed_seconds": round(elapsed, 1),
                "complete": self.source.finished}
