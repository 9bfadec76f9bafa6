"""Kafka replay: what to replay (:class:`ReplayPlan`, ``--offsets``) and how a replay assigns, seeks and ends.

A mixin of :class:`service.sources.kafka.KafkaSource`, kept apart so each file has one reason to change.
A replay assigns partitions by hand, seeks to offsets for a time (or given offsets) and ends at ``until``
(or at the log end as it was when the replay started).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer, TopicPartition

from service.config import KafkaSection
from service.errors import PermanentSourceError
from service.metrics import Metrics
from service.sources.kafka_offsets import _Partition

log = logging.getLogger("service.sources.kafka")  # the Kafka source's logger, as before the split


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


def _refine_stop(consumer: KafkaConsumer, tp: TopicPartition, part: _Partition) -> None:
    """A replay to the log end takes the end from the first fetch's high watermark (exact on every broker)."""
    if part.stop_at_log_end:
        high = consumer.highwater(tp)
        if high is not None:
            part.stop_at = max(part.stop_at or 0, high)
            part.stop_at_log_end = False


class KafkaReplayMixin:
    """Replay steps; relies on the attributes :class:`~service.sources.kafka.KafkaSource` sets."""

    if TYPE_CHECKING:
        cfg: KafkaSection
        metrics: Metrics
        group_id: str
        replay: ReplayPlan | None
        _lock: threading.Lock
        _parts: dict[tuple[str, int], _Partition]
        _epoch: int
        _pending: deque[Any]
        _connected: threading.Event
        _consumer: KafkaConsumer | None

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
                    raise PermanentSourceError(f"replay: topic {topic!r} does not exist")
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
