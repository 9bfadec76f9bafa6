"""Kafka offset bookkeeping: where an event came from, each partition's handed-out and finished
offsets, what happens to them on a rebalance, and the rebalance listener that commits what is
finished before a partition is given up.

Used by :class:`service.sources.kafka.KafkaSource`; ``from service.sources.kafka import X`` still works.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from kafka import KafkaConsumer, TopicPartition

# kafka-python >= 3 runs rebalance listeners on its IO loop: they must not block it (see _commit_from_listener).
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from service.metrics import Metrics

log = logging.getLogger("service.sources.kafka")  # the Kafka source's logger, as before the split


class KafkaPosition(NamedTuple):
    """Where one event came from.  ``epoch`` tells acks of an earlier assignment of the same partition apart."""

    topic: str
    partition: int
    offset: int
    epoch: int


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


class KafkaRebalanceMixin:
    """Partition assignment bookkeeping; relies on the attributes :class:`~service.sources.kafka.KafkaSource` sets."""

    if TYPE_CHECKING:
        metrics: Metrics
        group_id: str
        _lock: threading.Lock
        _parts: dict[tuple[str, int], _Partition]
        _epoch: int
        _pending: deque[Any]
        _rewind: dict[tuple[str, int], int]
        _connected: threading.Event

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


class _RebalanceOwner(Protocol):
    """What the listener needs of :class:`~service.sources.kafka.KafkaSource`."""

    metrics: Metrics

    def _committable(self, only: set[tuple[str, int]] | None = None) -> dict[TopicPartition, OffsetAndMetadata]: ...

    def _committed(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None: ...

    def partitions_assigned(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]: ...

    def partitions_revoked(self, revoked: set[TopicPartition], *, lost: bool = False) -> None: ...


class _Listener(AsyncConsumerRebalanceListener):
    """Commits what is finished for revoked partitions before another consumer takes them over."""

    def __init__(self, source: _RebalanceOwner, consumer: KafkaConsumer) -> None:
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
