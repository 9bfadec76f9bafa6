"""Replay a past window: ``mediamoderation replay --since TIME [--until TIME] [--offsets ...] [--rescan]``.

A replay runs the normal pipeline on a finite source that never touches the live position:

* Kafka: partitions assigned by hand from the offsets for ``--since`` (or ``--offsets``) to the
  offsets for ``--until`` (or the log end), committed under ``<group_id>-replay`` (or ``--name``);
* EventStreams: ``?since=`` with its own checkpoint name, ended at the first event past ``--until``;
* API polling: ``list=logevents`` from ``--since`` to ``--until`` with its own checkpoint name.

What happens to replayed uploads is decided by the store, as for any event: an event already
handled is skipped, a SHA-1 already scanned against the current banks is not fetched again, and an
action (email, takedown) whose idempotency key exists is never performed twice.  ``--rescan``
bypasses the first two (every upload is fetched and matched again); the third still holds, so a
rescan reports only matches that were not reported before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service import events as ev
from service.config import Config
from service.errors import ConfigError, MalformedEvent
from service.metrics import Metrics
from service.models import Match, RawEvent, UploadEvent
from service.net import Proxies
from service.progress import Sample, clock_text, metric_by_label, metric_sum
from service.sources.base import Source, SourceStatus
from service.store.base import CheckpointStore, NewAction, OutboxItem, PipelineStore, RemoteScan, ScanRecord

log = logging.getLogger(__name__)

# EventStreams merges two data centres' topics, so event times are not strictly ordered: keep reading
# this long (in event time) past ``until`` before deciding the window is over.
UNTIL_SLACK_SECONDS = 60.0


@dataclass(frozen=True)
class ReplayRequest:
    since: datetime | None = None
    until: datetime | None = None
    offsets: dict[tuple[str, int], int] | None = None
    rescan: bool = False
    name: str = "replay"


def replay_source(cfg: Config, store: CheckpointStore, metrics: Metrics, req: ReplayRequest) -> Source:
    kind = cfg.source.type
    if req.offsets and kind != "kafka":
        raise ConfigError([("--offsets", f"only the Kafka source has offsets (source.type is {kind})")])
    if req.since is None and not req.offsets:
        raise ConfigError([("--since", "a replay needs --since (or --offsets for Kafka)")])
    if kind == "kafka":
        from service.sources.factory import _drain_time
        from service.sources.kafka import KafkaSource, ReplayPlan

        plan = ReplayPlan(since=req.since, until=req.until, offsets=dict(req.offsets or {}))
        group = f"{cfg.source.kafka.group_id}-{req.name}"
        return KafkaSource(cfg.source.kafka, metrics=metrics, group_id=group, replay=plan,
                           shutdown_grace=_drain_time(cfg), name="kafka-replay")
    if kind == "mwapi":
        from service.sources.mwapi import LogEventsSource

        mw = dataclasses.replace(cfg.source.mwapi, checkpoint_name=f"{cfg.source.mwapi.checkpoint_name}-{req.name}")
        return LogEventsSource(dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, mwapi=mw)),
                               checkpoints=store, metrics=metrics, since=req.since, until=req.until)
    from service.sources.eventstreams import EventStreamsSource

    es = cfg.source.eventstreams
    inner = EventStreamsSource(es, user_agent=cfg.service.user_agent, checkpoints=store, metrics=metrics,
                               since=req.since, checkpoint_name=f"{es.checkpoint_name}-{req.name}",
                               proxies=Proxies.for_config(cfg.network))
    return UntilSource(inner, req.until) if req.until is not None else inner


class UntilSource:
    """Ends an unbounded source at ``until`` (event time): later events are not passed on."""

    def __init__(self, inner: Source, until: datetime, *, slack: float = UNTIL_SLACK_SECONDS) -> None:
        self.inner = inner
        self.name = inner.name
        self.until = until.timestamp()
        self.slack = slack

    @property
    def connected(self) -> bool:
        return self.inner.connected

    async def commit(self, position: Any) -> None:
        await self.inner.commit(position)

    def ack(self, position: Any) -> None:
        self.inner.ack(position)

    def status(self) -> SourceStatus:
        return self.inner.status()

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        middle: asyncio.Queue[RawEvent] = asyncio.Queue(1)
        inner_stop = asyncio.Event()
        task = asyncio.create_task(self.inner.run(middle, inner_stop), name="replay-inner")
        raised = False  # the inner source's own error is on its way up: do not log it twice
        try:
            while not stop.is_set():
                getter = asyncio.ensure_future(middle.get())
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({getter, stopper, task}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if getter not in done:
                    getter.cancel()
                    if task in done:
                        raised = True
                        task.result()
                    return
                raw = getter.result()
                when = self._time(raw)
                if when is not None and when > self.until:
                    if when > self.until + self.slack:
                        log.info("replay reached --until", extra={"until": self.until})
                        return
                    continue
                await out.put(raw)
        finally:
            inner_stop.set()
            if not raised:
                await _reap(task)

    @staticmethod
    def _time(raw: RawEvent) -> float | None:
        try:
            return ev.parse(raw, ()).time
        except MalformedEvent:
            return None


async def _reap(task: asyncio.Task[None]) -> None:
    """Wait up to 10 s for the inner source to stop, then cancel it; what it raises is logged."""
    try:
        await asyncio.wait_for(task, 10)
    except TimeoutError:
        log.error("replay: the inner source did not stop within 10 s; cancelled")
    except Exception:
        log.exception("replay: the inner source failed while stopping")


class RescanAdmission:
    """A pipeline store for ``--rescan``: nothing counts as handled or scanned at intake; the rest is unchanged."""

    def __init__(self, store: PipelineStore) -> None:
        self._store = store

    async def admit(self, event_id: str, sha1: str | None) -> tuple[bool, ScanRecord | None]:
        return False, None

    async def finish(
        self, event: UploadEvent, outcome: str, scan: ScanRecord | None, remote: Sequence[RemoteScan] = (),
        actions: Sequence[NewAction] = (),
    ) -> None:
        await self._store.finish(event, outcome, scan, remote, actions)

    async def record_matches(
        self, event: UploadEvent, sha1: str, matches: Sequence[Match], actions: Sequence[NewAction]
    ) -> list[OutboxItem]:
        return await self._store.record_matches(event, sha1, matches, actions)


class ReplayProgress:
    """How far a replay has read (event time between ``since`` and ``until`` or now) and what became of it."""

    def __init__(self, req: ReplayRequest, metrics: Metrics, *, clock: Callable[[], float] = time.time) -> None:
        self.req = req
        self.registry = metrics.registry
        self.metrics = metrics
        self.clock = clock
        self.started_at = clock()

    def counts(self) -> dict[str, Any]:
        outcomes = metric_by_label(self.registry, "mediamoderation_outcomes_total", "outcome")
        skipped = {k: int(v) for k, v in sorted(metric_by_label(
            self.registry, "mediamoderation_events_skipped_total", "reason").items()) if v}
        unscannable = {k.split(":", 1)[1]: int(v) for k, v in sorted(outcomes.items())
                       if k.startswith("unscannable:") and v}
        return {
            "read": int(metric_sum(self.registry, "mediamoderation_events_received_total")),
            "scanned": int(sum(outcomes.values())), "clean": int(outcomes.get("clean", 0)),
            "matched": int(outcomes.get("match", 0)), "gone": int(outcomes.get("gone", 0)),
            "unscannable": sum(unscannable.values()), "unscannable_by_reason": unscannable,
            "errors": int(outcomes.get("error", 0)),
            "skipped_already_handled": skipped.pop("duplicate", 0), "skipped_other": skipped,
            "rescan": self.req.rescan,
        }

    def sample(self) -> Sample:
        c = self.counts()
        fields = {"read": c["read"], "scanned": c["scanned"], "matched": c["matched"]}
        if self.req.since is None:  # Kafka offsets: no time axis
            return Sample(completed=float(c["read"]), total=None, fields=fields)
        since = self.req.since.timestamp()
        until = self.req.until.timestamp() if self.req.until is not None else self.started_at
        total = max(until - since, 1.0)
        lag = metric_sum(self.registry, "mediamoderation_source_lag_seconds")
        at = self.clock() - lag if c["read"] else since
        return Sample(completed=min(max(at - since, 0.0), total), total=total, fields=fields)

    def rows(self, elapsed: float) -> list[tuple[str, Any]]:
        c = self.counts()
        rows: list[tuple[str, Any]] = [
            ("events read", c["read"]), ("uploads scanned", c["scanned"]), ("  clean", c["clean"]),
            ("  matched", c["matched"]), ("  gone", c["gone"]), ("  unscannable", c["unscannable"])]
        rows += [(f"    {reason}", n) for reason, n in c["unscannable_by_reason"].items()]
        rows += [("  errors", c["errors"]), ("skipped: already handled", c["skipped_already_handled"])]
        rows += [(f"skipped: {reason}", n) for reason, n in c["skipped_other"].items()]
        rows.append(("elapsed", clock_text(elapsed)))
        return rows

    def summary_fields(self, elapsed: float) -> dict[str, Any]:
        return {**self.counts(), "elapsed_seconds": round(elapsed, 1)}
