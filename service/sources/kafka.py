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

Per-partition offsets, rebalance handling and its listener are in
:mod:`service.sources.kafka_offsets`, the replay steps in :mod:`service.sources.kafka_replay`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from service.backoff import exponential_backoff
from service.config import KafkaSection, kafka_client_options
from service.errors import PermanentSourceError
from service.metrics import Metrics
from service.models import RawEvent
from service.sources.base import SourceStatus, run_in_thread, until_done_or_stopped

# Offset bookkeeping and replay live in their own modules; re-exported so
# ``from service.sources.kafka import X`` keeps working.
from service.sources.kafka_offsets import KafkaPosition as KafkaPosition
from service.sources.kafka_offsets import KafkaRebalanceMixin
from service.sources.kafka_offsets import _Listener as _Listener
from service.sources.kafka_offsets import _Partition as _Partition
from service.sources.kafka_replay import KafkaReplayMixin
from service.sources.kafka_replay import ReplayPlan as ReplayPlan
from service.sources.kafka_replay import _refine_stop as _refine_stop
from service.sources.kafka_replay import parse_offsets as parse_offsets

log = logging.getLogger(__name__)

_POLL_MS = 200
_BLOCKED_POLL_SECONDS = 0.25  # while the queue is full: how often to poll (paused) to stay in the group


class KafkaSource(KafkaReplayMixin, KafkaRebalanceMixin):
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
        """Per-partition state for ``/healthz/pipeline``: committed offset, log end, lag, in flight, paused."""
        with self._lock:
            parts = {
                f"{t}:{p}": {"committed": s.committed, "end": s.end, "lag": s.lag(), "in_flight": s.in_flight,
                             "paused": s.paused}
                for (t, p), s in sorted(self._parts.items())
            }
        return {"group": self.group_id, "replay": self.replay is not None, "partitions": parts}

    def status(self) -> SourceStatus:
        return SourceStatus(connected=self.connected, last_error=self.last_error, details=self.details())

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
                    raise PermanentSourceError(f"Kafka consumer failed: {self.last_error}") from exc
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
