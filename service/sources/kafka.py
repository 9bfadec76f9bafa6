"""Kafka source: a kafka-python consumer group on the recentchange topics (or the work topic).

One consumer, owned by one thread, feeds the pipeline's bounded queue.  Offsets are committed by
hand, per partition, and only up to the last *contiguous* offset whose event finished the pipeline:
the pipeline acknowledges each event (``ack``), each partition keeps the offsets it handed out in
order, and the committable offset is the first one not yet finished.  A slow upload in one partition
never holds back another partition's commits, and nothing unfinished is ever committed.

* Backpressure: while the pipeline's queue is full the consumer pauses every assigned partition and
  keeps polling (so it stays in the group), then resumes once the records it holds are handed over.
* Rebalance: when partitions are revoked, what is finished is committed at once and the partition's
  unhanded records are dropped; events of it still in the pipeline finish, but their acks are ignored
  (the new owner reads from the committed offset; the store de-duplicates).
* Consumer lag (log end offset - committed offset) per partition as a metric and in ``details()``.
* Replay: :class:`ReplayPlan` assigns partitions by hand, seeks to offsets for a time (or given
  offsets) and ends at ``until`` (or at the log end as it was when the replay started).  A replay
  commits under its own group id, so the live group's position never moves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from kafka import KafkaConsumer, TopicPartition

# kafka-python >= 3 runs rebalance listeners on its IO loop: they must not block it (see _commit_from_listener).
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from service.backoff import exponential_backoff
from service.config import KafkaSection, kafka_client_options
from service.errors import SourceError
from service.metrics import Metrics
from service.models import RawEvent
from service.sources.base import run_in_thread, until_done_or_stopped

log = logging.getLogger(__name__)

_POLL_MS = 200
_BLOCKED_POLL_SECONDS = 0.25  # while the queue is full: how often to poll (paused) to stay in the group


class KafkaPosition(NamedTuple):
    """Where one event came from.  ``epoch`` tells acks of an earlier assignment of the same partition apart."""

    topic: str
    partition: int
    offset: int
    epoch: int


@dataclass(frozen=True)
class ReplayPlan:
    """What to replay: from ``since`` (offsets for times) or from explicit ``offsets``, up to ``until``."""

    since: datetime | None = None
    until: datetime | None = None
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)


def parse_offsets(text: str) -> dict[tuple[str, int], int]:
    """``topic:partition:offset,...`` (topic names may contain dots, not colons)."""
    out: dict[tuple[str, int], int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        pieces = item.rsplit(":", 2)
        if len(pieces) != 3 or not pieces[0] or not pieces[1].isdigit() or not pieces[2].isdigit():
            raise ValueError(f"not topic:partition:offset: {item!r}")
        out[(pieces[0], int(pieces[1]))] = int(pieces[2])
    if not out:
        raise ValueError("no topic:partition:offset given")
    return out


class _Partition:
    """Offsets of one assigned partition handed to the pipeline and not yet committed."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.outstanding: deque[int] = deque()  # handed out, in offset order
        self.done: set[int] = set()
        self.safe: int | None = None  # next offset to read: everything below is finished
        self.committed: int | None = None  # what was last committed
        self.first: int | None = None
        self.end: int | None = None  # log end offset at the last lag measurement
        self.stop_at: int | None = None  # replay: offsets from here on are not read
        self.stop_at_log_end = False  # replay without ``until``: refine stop_at with the first fetch's log end
        self.paused = False

    def handed(self, offset: int) -> None:
        if self.first is None:
            self.first = offset
        self.outstanding.append(offset)

    def ack(self, offset: int) -> None:
        self.done.add(offset)
        while self.outstanding and self.outstanding[0] in self.done:
            finished = self.outstanding.popleft()
            self.done.discard(finished)
            self.safe = finished + 1

    def to_commit(self) -> int | None:
        return self.safe if self.safe is not None and self.safe != self.committed else None

    @property
    def in_flight(self) -> int:
        return len(self.outstanding)

    def lag(self) -> int | None:
        base = self.committed if self.committed is not None else self.first
        if self.end is None or base is None:
            return None
        return max(0, self.end - base)


class KafkaSource:
    """A :class:`~service.sources.base.Source` that also acknowledges single events (``ack``)."""

    def __init__(
        self,
        cfg: KafkaSection,
        *,
        metrics: Metrics,
        group_id: str | None = None,
        replay: ReplayPlan | None = None,
        shutdown_grace: float = 10.0,
        name: str = "kafka",
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.group_id = group_id or cfg.group_id
        self.replay = replay
        self.shutdown_grace = shutdown_grace
        self.name = name
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._epoch = 0
        self._pending: deque[Any] = deque()  # records polled but not handed to the pipeline yet
        self._rewind: dict[tuple[str, int], int] = {}  # revoked partitions' first unfinished offsets
        self._connected = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self.finished_replay = False

    # ------------------------------------------------------------------ called from the event loop

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def ack(self, position: Any) -> None:
        if not isinstance(position, KafkaPosition):
            return
        with self._lock:
            part = self._parts.get((position.topic, position.partition))
            if part is not None and part.epoch == position.epoch:
                part.ack(position.offset)

    async def commit(self, position: Any) -> None:
        """Nothing to do: commits follow the per-event acks, per partition, from the consumer thread."""

    def details(self) -> dict[str, Any]:
        """Per-partition state for ``/readyz``: committed offset, log end, lag, in flight, paused."""
        with self._lock:
            parts = {
                f"{t}:{p}": {"committed": s.committed, "end": s.end, "lag": s.lag(), "in_flight": s.in_flight,
                             "paused": s.paused}
                for (t, p), s in sorted(self._parts.items())
            }
        return {"group": self.group_id, "replay": self.replay is not None, "partitions": parts}

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        halt = threading.Event()
        finished = run_in_thread(lambda: self._thread_main(loop, out, halt), name=f"{self.name}-consumer")
        try:
            await until_done_or_stopped(finished, stop)
        finally:
            halt.set()
        # On stop the thread waits (up to shutdown_grace) for the events it handed out to finish, commits
        # them and leaves the group; the pipeline keeps working meanwhile.
        await asyncio.shield(finished)

    # ------------------------------------------------------------------ consumer thread

    def _make_consumer(self) -> KafkaConsumer:
        c = self.cfg.connection
        return KafkaConsumer(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.cfg.auto_offset_reset,
            max_poll_records=self.cfg.max_poll_records,
            session_timeout_ms=c.session_timeout_ms,
            heartbeat_interval_ms=c.heartbeat_interval_ms,
            max_poll_interval_ms=c.max_poll_interval_ms,
            **kafka_client_options(c),
        )

    def _connect(self, halt: threading.Event) -> KafkaConsumer | None:
        attempt = 0
        while not halt.is_set():
            try:
                return self._make_consumer()
            except KafkaError as exc:
                self.last_error = f"cannot reach Kafka {list(self.cfg.connection.bootstrap_servers)}: {exc}"
                delay = exponential_backoff(attempt, initial=0.5, maximum=30.0)
                log.warning("kafka: %s; retrying in %.1f s", self.last_error, delay)
                self.metrics.source_reconnects.labels("kafka").inc()
                halt.wait(delay)
                attempt += 1
        return None

    def _thread_main(self, loop: asyncio.AbstractEventLoop, out: asyncio.Queue[RawEvent],
                     halt: threading.Event) -> None:
        consumer = self._connect(halt)
        if consumer is None:
            return
        self._consumer = consumer
        try:
            if self.replay is not None:
                self._start_replay(consumer)
            else:
                consumer.subscribe(list(self.cfg.topics), listener=_Listener(self, consumer))
            self._consume(consumer, loop, out, halt)
            self._wait_for_acks(consumer)
        finally:
            self._connected.clear()
            self.metrics.source_connected.set(0)
            with contextlib.suppress(Exception):
                self._commit(consumer, "close")
            with contextlib.suppress(Exception):
                consumer.close()
            self._consumer = None
            log.info("kafka consumer closed", extra={"group": self.group_id})

    def _consume(self, consumer: KafkaConsumer, loop: asyncio.AbstractEventLoop, out: asyncio.Queue[RawEvent],
                 halt: threading.Event) -> None:
        next_commit = time.monotonic() + self.cfg.commit_interval
        next_lag = time.monotonic()
        failures = 0
        while not halt.is_set():
            if self.replay is not None and self._replay_complete():
                self.finished_replay = True
                log.info("kafka replay reached its end", extra={"group": self.group_id})
                return
            try:
                if self._pending:
                    if not self._hand(consumer, loop, out, halt):
                        return
                else:
                    self._resume(consumer)
                    self._take(consumer.poll(timeout_ms=_POLL_MS))
                    if not self._connected.is_set():
                        self._connected.set()
                        self.metrics.source_connected.set(1)
                    failures = 0
                    self.last_error = None
                now = time.monotonic()
                if now >= next_commit:
                    self._commit(consumer, "interval")
                    next_commit = now + self.cfg.commit_interval
                if now >= next_lag:
                    self._measure_lag(consumer)
                    next_lag = now + self.cfg.lag_interval
            except KafkaError as exc:
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._connected.clear()
                self.metrics.source_connected.set(0)
                if not getattr(exc, "retriable", True) and failures > 5:
                    raise SourceError(f"Kafka consumer failed: {self.last_error}", retriable=False) from exc
                self.metrics.source_reconnects.labels("kafka").inc()
                log.warning("kafka: %s; retrying", self.last_error)
                halt.wait(exponential_backoff(failures, initial=0.5, maximum=30.0))

    def _take(self, batch: dict[TopicPartition, list[Any]]) -> None:
        for records in batch.values():
            self._pending.extend(records)

    def _hand(self, consumer: KafkaConsumer, loop: asyncio.AbstractEventLoop, out: asyncio.Queue[RawEvent],
              halt: threading.Event) -> bool:
        """Hand the oldest held record to the pipeline, pausing and polling while the queue is full."""
        rec = self._pending[0]
        key = (rec.topic, rec.partition)
        with self._lock:
            part = self._parts.get(key)
            if part is not None:
                _refine_stop(consumer, TopicPartition(*key), part)
            past_end = part is not None and part.stop_at is not None and rec.offset >= part.stop_at
            if part is None or past_end:
                self._pending.popleft()  # revoked meanwhile, or past the end of a replay
                if past_end:
                    consumer.pause(TopicPartition(rec.topic, rec.partition))
                return True
            part.handed(rec.offset)
            position = KafkaPosition(rec.topic, rec.partition, rec.offset, part.epoch)
        item = RawEvent(data=rec.value, position=position, label=f"{rec.topic}/{rec.partition}@{rec.offset}")
        self.metrics.events_received.labels(self.name).inc()
        future = asyncio.run_coroutine_threadsafe(out.put(item), loop)
        self._pending.popleft()
        try:
            future.result(timeout=0.05)
            return True
        except concurrent.futures.TimeoutError:
            pass
        self._pause(consumer)
        next_commit = time.monotonic() + self.cfg.commit_interval
        while True:
            try:
                future.result(timeout=_BLOCKED_POLL_SECONDS)
                return True
            except concurrent.futures.TimeoutError:
                if halt.is_set():
                    future.cancel()
                    return False
            # Keep the group membership (and rebalances) going; partitions assigned meanwhile are paused too.
            self._take(consumer.poll(timeout_ms=0))
            self._pause(consumer)
            if time.monotonic() >= next_commit:
                self._commit(consumer, "interval")
                next_commit = time.monotonic() + self.cfg.commit_interval

    def _pause(self, consumer: KafkaConsumer) -> None:
        assigned = consumer.assignment()
        fresh = [tp for tp in assigned if tp not in consumer.paused()]
        if fresh:
            consumer.pause(*fresh)
        with self._lock:
            for tp in assigned:
                part = self._parts.get((tp.topic, tp.partition))
                if part is not None:
                    part.paused = True
        self.metrics.kafka_paused.set(len(assigned))

    def _resume(self, consumer: KafkaConsumer) -> None:
        paused = consumer.paused()
        keep = set()
        with self._lock:
            for tp in paused:
                part = self._parts.get((tp.topic, tp.partition))
                if part is not None and part.stop_at is not None and self._at_stop(consumer, tp, part):
                    keep.add(tp)  # a replayed partition that reached its end stays paused
                elif part is not None:
                    part.paused = False
        resume = [tp for tp in paused if tp not in keep]
        if resume:
            consumer.resume(*resume)
        self.metrics.kafka_paused.set(len(keep))

    # -- commits

    def _commit(self, consumer: KafkaConsumer, reason: str) -> None:
        offsets = self._committable()
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except KafkaError as exc:
            self.metrics.kafka_commits.labels(reason, "failed").inc()
            log.warning("kafka: offset commit failed (%s); retried at the next interval", exc)
            return
        self._committed(offsets)
        self.metrics.kafka_commits.labels(reason, "ok").inc()

    def _committable(self, only: set[tuple[str, int]] | None = None) -> dict[TopicPartition, OffsetAndMetadata]:
        with self._lock:
            out: dict[TopicPartition, OffsetAndMetadata] = {}
            for (topic, partition), part in self._parts.items():
                if only is not None and (topic, partition) not in only:
                    continue
                offset = part.to_commit()
                if offset is not None:
                    out[TopicPartition(topic, partition)] = OffsetAndMetadata(offset, "", -1)
            return out

    def _committed(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        with self._lock:
            for tp, meta in offsets.items():
                part = self._parts.get((tp.topic, tp.partition))
                if part is not None:
                    part.committed = meta.offset
                    if part.end is not None:
                        self.metrics.kafka_lag.labels(tp.topic, str(tp.partition)).set(part.lag() or 0)
        log.debug("kafka: committed %s", {f"{tp.topic}:{tp.partition}": m.offset for tp, m in offsets.items()})

    def _wait_for_acks(self, consumer: KafkaConsumer) -> None:
        """After stop (or the end of a replay): commit events as they finish, up to ``shutdown_grace``."""
        deadline = time.monotonic() + self.shutdown_grace
        while time.monotonic() < deadline:
            with self._lock:
                left = sum(p.in_flight for p in self._parts.values())
            self._commit(consumer, "close")
            if not left:
                return
            with contextlib.suppress(KafkaError):
                consumer.poll(timeout_ms=0)  # stay in the group while the pipeline finishes
            time.sleep(0.05)
        log.warning("kafka: events still in the pipeline at shutdown; they will be read again",
                    extra={"group": self.group_id})

    def _measure_lag(self, consumer: KafkaConsumer) -> None:
        assigned = list(consumer.assignment())
        if not assigned:
            return
        ends = consumer.end_offsets(assigned)
        with self._lock:
            for tp, end in ends.items():
                part = self._parts.get((tp.topic, tp.partition))
                if part is None:
                    continue
                # The high watermark of the last fetch is exact; ListOffsets is too, except on some
                # Kafka-compatible brokers (Tansu answers the last batch's first offset + 1).
                part.end = max(end, consumer.highwater(tp) or 0)
                if part.committed is None and part.first is None:
                    with contextlib.suppress(Exception):
                        part.first = consumer.position(tp, timeout_ms=1000)
                lag = part.lag()
                if lag is not None:
                    self.metrics.kafka_lag.labels(tp.topic, str(tp.partition)).set(lag)

    # -- rebalance (called on kafka-python's IO thread while the consumer thread waits in poll)

    def partitions_assigned(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Track newly assigned partitions; returns where partitions that come back must restart."""
        rewinds = {tp: self._rewind.pop((tp.topic, tp.partition)) for tp in assigned
                   if (tp.topic, tp.partition) in self._rewind}
        self._rewind.clear()
        with self._lock:
            for tp in assigned:
                key = (tp.topic, tp.partition)
                if key not in self._parts:
                    self._epoch += 1
                    self._parts[key] = _Partition(self._epoch)
        self.metrics.kafka_rebalances.labels("assigned").inc(len(assigned))
        self._connected.set()
        self.metrics.source_connected.set(1)
        names = sorted(f"{t.topic}:{t.partition}" for t in assigned)
        log.info("kafka: partitions assigned", extra={"group": self.group_id, "partitions": names})
        return rewinds

    def partitions_revoked(self, revoked: set[TopicPartition], *, lost: bool = False) -> None:
        """Forget revoked partitions: their held records are dropped, later acks ignored."""
        keys = {(tp.topic, tp.partition) for tp in revoked}
        held: dict[tuple[str, int], int] = {}
        for r in self._pending:
            key = (r.topic, r.partition)
            if key in keys:
                held[key] = min(held.get(key, r.offset), r.offset)
        with self._lock:
            unfinished = sum(self._parts[k].in_flight for k in keys if k in self._parts)
            for key in keys:
                part = self._parts.pop(key, None)
                first_unfinished = part.outstanding[0] if part is not None and part.outstanding else None
                rewind = min((o for o in (first_unfinished, held.get(key)) if o is not None), default=None)
                if rewind is not None and not lost:
                    # kafka-python keeps the fetch position of a partition that is assigned to us again;
                    # it must restart at the first event that did not finish.
                    self._rewind[key] = rewind
                with contextlib.suppress(KeyError):
                    self.metrics.kafka_lag.remove(key[0], str(key[1]))
        self._pending = deque(r for r in self._pending if (r.topic, r.partition) not in keys)
        self.metrics.kafka_rebalances.labels("lost" if lost else "revoked").inc(len(revoked))
        log.info("kafka: partitions %s", "lost" if lost else "revoked",
                 extra={"group": self.group_id, "partitions": sorted(f"{t}:{p}" for t, p in keys),
                        "unfinished_dropped": unfinished})

    # -- replay

    def _start_replay(self, consumer: KafkaConsumer) -> None:
        plan = self.replay
        assert plan is not None
        if plan.offsets:
            parts = [TopicPartition(t, p) for (t, p) in plan.offsets]
        else:
            parts = []
            for topic in self.cfg.topics:
                found = consumer.partitions_for_topic(topic)
                if not found:
                    raise SourceError(f"replay: topic {topic!r} does not exist", retriable=False)
                parts += [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        begins = consumer.beginning_offsets(parts)
        def offsets_at(when: datetime) -> dict[TopicPartition, int]:
            """The first offset at or after ``when`` per partition; the log end when there is none."""
            found = consumer.offsets_for_times({tp: int(when.timestamp() * 1000) for tp in parts})
            out = {}
            for tp in parts:
                hit = found.get(tp)
                # Kafka answers None past the end; some compatible brokers answer timestamp -1.
                out[tp] = hit.offset if hit is not None and hit.timestamp >= 0 else ends[tp]
            return out

        if plan.offsets:
            starts = {tp: plan.offsets[(tp.topic, tp.partition)] for tp in parts}
        else:
            assert plan.since is not None
            starts = offsets_at(plan.since)
        stops = offsets_at(plan.until) if plan.until is not None else dict(ends)
        with self._lock:
            for tp in parts:
                self._epoch += 1
                part = _Partition(self._epoch)
                part.stop_at = stops[tp]
                part.stop_at_log_end = plan.until is None
                part.end = ends[tp]
                self._parts[(tp.topic, tp.partition)] = part
        for tp in parts:
            start = max(starts[tp], begins[tp])
            if start < starts[tp] or starts[tp] < begins[tp]:
                log.warning("replay: %s:%d starts at %d, the oldest retained offset", tp.topic, tp.partition, start)
            consumer.seek(tp, start)
        self._connected.set()
        self.metrics.source_connected.set(1)
        log.info("kafka replay", extra={
            "group": self.group_id,
            "ranges": {f"{tp.topic}:{tp.partition}": [max(starts[tp], begins[tp]), stops[tp]] for tp in parts}})

    @staticmethod
    def _at_stop(consumer: KafkaConsumer, tp: TopicPartition, part: _Partition) -> bool:
        try:
            return bool(part.stop_at is not None and consumer.position(tp, timeout_ms=1000) >= part.stop_at)
        except Exception:
            return False

    def _replay_complete(self) -> bool:
        consumer = self._consumer
        if consumer is None or self._pending:
            return False
        with self._lock:
            parts = list(self._parts.items())
        for (topic, partition), part in parts:
            tp = TopicPartition(topic, partition)
            with self._lock:
                _refine_stop(consumer, tp, part)
            if part.stop_at is None or part.stop_at_log_end or not self._at_stop(consumer, tp, part):
                return False
            if tp not in consumer.paused():
                consumer.pause(tp)
        return True


def _refine_stop(consumer: KafkaConsumer, tp: TopicPartition, part: _Partition) -> None:
    """A replay to the log end takes the end from the first fetch's high watermark (exact on every broker)."""
    if part.stop_at_log_end:
        high = consumer.highwater(tp)
        if high is not None:
            part.stop_at = max(part.stop_at or 0, high)
            part.stop_at_log_end = False


class _Listener(AsyncConsumerRebalanceListener):
    """Commits what is finished for revoked partitions before another consumer takes them over."""

    def __init__(self, source: KafkaSource, consumer: KafkaConsumer) -> None:
        self.source = source
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        keys = {(tp.topic, tp.partition) for tp in revoked}
        offsets = self.source._committable(keys)
        if offsets:
            try:
                await _commit_from_listener(self.consumer, offsets)
                self.source._committed(offsets)
                self.source.metrics.kafka_commits.labels("revoke", "ok").inc()
            except Exception as exc:  # the partitions are given up anyway; the new owner re-reads
                self.source.metrics.kafka_commits.labels("revoke", "failed").inc()
                log.warning("kafka: commit on revoke failed: %s", exc)
        self.source.partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp, offset in self.source.partitions_assigned(set(assigned)).items():
            self.consumer.seek(tp, offset)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Membership was lost: another consumer may already own them, so nothing is committed.
        self.source.partitions_revoked(set(lost), lost=True)


async def _commit_from_listener(consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
    """A synchronous commit from inside a rebalance callback (which runs on kafka-python's IO loop).

    ``KafkaConsumer.commit`` would block that loop (kafka-python 3 refuses it), so await the
    coordinator's own coroutine; where it does not exist, fall back to an asynchronous commit.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    commit = getattr(coordinator, "_commit_offsets_sync_async", None)
    if commit is not None:
        await commit(offsets)
    else:  # pragma: no cover - other kafka-python versions
        consumer.commit_async(offsets)
