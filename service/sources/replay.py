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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service import events as ev
from service.config import Config
from service.errors import ConfigError, MalformedEvent
from service.metrics import Metrics
from service.models import Match, RawEvent, UploadEvent
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
                               since=req.since, checkpoint_name=f"{es.checkpoint_name}-{req.name}")
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
        self, event: UploadEvent, outcome: str, scan: ScanRecord | None, remote: Sequence[RemoteScan] = ()
    ) -> None:
        await self._store.finish(event, outcome, scan, remote)

    async def record_matches(
        self, event: UploadEvent, sha1: str, matches: Sequence[Match], actions: Sequence[NewAction]
    ) -> list[OutboxItem]:
        return await self._store.record_matches(event, sha1, matches, actions)
