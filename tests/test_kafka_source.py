"""The Kafka source against a real Kafka-protocol broker (Tansu): commits, rebalance, backpressure, lag, replay."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from service.config import KafkaConnectionSection, KafkaSection, Secret, kafka_client_options
from service.metrics import Metrics
from service.models import RawEvent
from service.sources.kafka import KafkaPosition, KafkaSource, ReplayPlan, parse_offsets
from tests.helpers import until
from tests.infra.kafka import GROUP_TIMING, TansuBroker


def section(broker: TansuBroker, topics: list[str], **extra: Any) -> KafkaSection:
    conn = KafkaConnectionSection(bootstrap_servers=(broker.bootstrap,), **GROUP_TIMING)
    conn = dataclasses.replace(conn, **extra.pop("connection", {}))
    return KafkaSection(connection=conn, topics=tuple(topics), group_id=f"g-{uuid.uuid4().hex[:8]}",
                        auto_offset_reset="earliest", **extra)


def events(n: int, tag: str = "e") -> list[dict[str, Any]]:
    return [{"meta": {"id": f"{tag}-{i}"}, "n": i} for i in range(n)]


class Running:
    """A source running in the test's loop, feeding a queue the test reads from."""

    def __init__(self, source: KafkaSource, queue_size: int = 100) -> None:
        self.source = source
        self.queue: asyncio.Queue[RawEvent] = asyncio.Queue(queue_size)
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(source.run(self.queue, self.stop_event))

    async def get(self, n: int, timeout: float = 30) -> list[RawEvent]:
        got: list[RawEvent] = []
        async with asyncio.timeout(timeout):
            while len(got) < n:
                getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    self.task.result()
                    raise AssertionError(f"source ended after {len(got)} of {n} events")
                got.append(getter.result())
        return got

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 30)


async def next_millisecond() -> datetime:
    """A time strictly after everything produced so far and before anything produced next."""
    start = time.time()  # waits out the clock itself: timestamps are what the caller compares
    while time.time() < start + 0.002:
        await asyncio.sleep(0.001)
    mark = datetime.fromtimestamp(time.time(), tz=UTC)
    while time.time() < mark.timestamp() + 0.002:
        await asyncio.sleep(0.001)
    return mark


async def test_commits_each_partition_only_up_to_its_last_contiguous_finished_offset(broker: TansuBroker) -> None:
    topic = f"t-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, 2)
    broker.produce(topic, events(5, "a"), partition=0)
    broker.produce(topic, events(5, "b"), partition=1)
    cfg = section(broker, [topic], commit_interval=0.1)
    run = Running(KafkaSource(cfg, metrics=Metrics()))
    got = await run.get(10)
    by_part = {(r.position.partition, r.position.offset): r for r in got}
    assert sorted(by_part) == [(p, o) for p in (0, 1) for o in range(5)]
    assert all(isinstance(r.position, KafkaPosition) for r in got)

    for offset in (0, 1, 3):  # 2 is still in the pipeline: partition 0 commits up to 2, not past it
        run.source.ack(by_part[(0, offset)].position)
    for offset in range(5):
        run.source.ack(by_part[(1, offset)].position)
    await until(lambda: broker.committed(cfg.group_id, topic, 2) == {0: 2, 1: 5}, 20, in_thread=True,
                what="commits 2 and 5")
    run.source.ack(by_part[(0, 2)].position)
    await until(lambda: broker.committed(cfg.group_id, topic, 2)[0] == 4, 20, in_thread=True, what="partition 0 at 4")
    run.source.ack(by_part[(0, 4)].position)
    await until(lambda: broker.committed(cfg.group_id, topic, 2)[0] == 5, 20, in_thread=True, what="partition 0 at 5")
    await run.stop()


async def test_stop_waits_for_handed_out_events_and_commits_them(broker: TansuBroker) -> None:
    topic = f"t-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, 1)
    broker.produce(topic, events(3))
    cfg = section(broker, [topic], commit_interval=60)
    run = Running(KafkaSource(cfg, metrics=Metrics(), shutdown_grace=20))
    got = await run.get(3)
    run.stop_event.set()
    # The behaviour under test is a wait that must NOT end: for this long the pipeline is still finishing
    # these when the stop comes, and the source keeps waiting (there is no event to await for "not yet").
    await asyncio.sleep(0.3)
    assert not run.task.done()
    for r in got:
        run.source.ack(r.position)
    await asyncio.wait_for(run.task, 20)
    assert broker.committed(cfg.group_id, topic, 1) == {0: 3}


async def test_rebalance_commits_finished_work_and_hands_unfinished_events_to_the_new_owner(
    broker: TansuBroker,
) -> None:
    topic = f"t-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, 2)
    broker.produce(topic, events(5, "a"), partition=0)
    broker.produce(topic, events(5, "b"), partition=1)
    cfg = section(broker, [topic], commit_interval=600)  # only the rebalance commits
    metrics_a = Metrics()
    a = Running(KafkaSource(cfg, metrics=metrics_a, name="a"))
    got = await a.get(10)
    first = {(r.position.partition, r.position.offset): r for r in got}
    for offset in range(3):
        a.source.ack(first[(0, offset)].position)  # 3 and 4 of partition 0 are unfinished
    for offset in range(5):
        a.source.ack(first[(1, offset)].position)

    b = Running(KafkaSource(cfg, metrics=Metrics(), name="b"))
    await until(lambda: broker.committed(cfg.group_id, topic, 2) == {0: 3, 1: 5}, 20, in_thread=True,
                what="commit on revoke")
    assert metrics_a.registry.get_sample_value("mediamoderation_kafka_commits_total",
                                               {"reason": "revoke", "result": "ok"}) >= 1
    # After the rebalance each member owns one partition; the unfinished offsets 3 and 4 of partition 0
    # are delivered again to whoever owns it now, and nothing else is.
    await until(lambda: len(a.source.details()["partitions"]) == 1 and len(b.source.details()["partitions"]) == 1,
                what="one partition each")
    owner = a if "0" in next(iter(a.source.details()["partitions"])).split(":")[1] else b
    again = await owner.get(2)
    assert sorted((r.position.partition, r.position.offset) for r in again) == [(0, 3), (0, 4)]
    other = b if owner is a else a
    assert other.queue.empty()
    # A late ack from before the rebalance is ignored; the re-delivered events commit normally.
    a.source.ack(first[(0, 4)].position)
    for r in again:
        owner.source.ack(r.position)
    await owner.stop()
    await other.stop()
    assert broker.committed(cfg.group_id, topic, 2) == {0: 5, 1: 5}


async def test_pauses_partitions_while_the_pipeline_is_full_and_stays_in_the_group(broker: TansuBroker) -> None:
    topic = f"t-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, 2)
    broker.produce(topic, events(10, "a"), partition=0)
    broker.produce(topic, events(10, "b"), partition=1)
    # A member that stopped polling for 3 s would be thrown out of the group.
    cfg = section(broker, [topic], commit_interval=0.2, max_poll_records=5,
                  connection={"max_poll_interval_ms": 3000})
    metrics = Metrics()
    run = Running(KafkaSource(cfg, metrics=metrics), queue_size=1)
    paused = await until(lambda: metrics.registry.get_sample_value("mediamoderation_kafka_paused_partitions"),
                         what="paused partitions")
    assert paused == 2
    got: list[RawEvent] = []
    deadline = time.monotonic() + 4.5  # a slow pipeline: longer than max_poll_interval_ms in total
    while len(got) < 20:
        got += await run.get(1)
        run.source.ack(got[-1].position)
        if time.monotonic() < deadline:
            await asyncio.sleep(0.25)  # the behaviour under test: a slow pipeline, not a wait for a condition
    assert sorted((r.position.partition, r.position.offset) for r in got) == [
        (p, o) for p in (0, 1) for o in range(10)]
    assert not metrics.registry.get_sample_value("mediamoderation_kafka_rebalances_total", {"change": "revoked"})
    assert not metrics.registry.get_sample_value("mediamoderation_kafka_rebalances_total", {"change": "lost"})
    await until(lambda: broker.committed(cfg.group_id, topic, 2) == {0: 10, 1: 10}, 20, in_thread=True,
                what="all committed")
    assert metrics.registry.get_sample_value("mediamoderation_kafka_paused_partitions") == 0
    await run.stop()


async def test_lag_per_partition_as_metric_and_details(broker: TansuBroker) -> None:
    topic = f"t-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, 1)
    broker.produce(topic, events(10))
    cfg = section(broker, [topic], commit_interval=0.1, lag_interval=0.1)
    metrics = Metrics()
    run = Running(KafkaSource(cfg, metrics=metrics))
    got = await run.get(10)
    for r in got[:6]:
        run.source.ack(r.position)

    def lag() -> float | None:
        return metrics.registry.get_sample_value("mediamoderation_kafka_consumer_lag",
                                                 {"topic": topic, "partition": "0"})

    await until(lambda: lag() == 4, 20, in_thread=True, what="lag 4")
    details = run.source.details()["partitions"][f"{topic}:0"]
    assert details["lag"] == 4 and details["committed"] == 6 and details["in_flight"] == 4
    for r in got[6:]:
        run.source.ack(r.position)
    await until(lambda: lag() == 0, 20, in_thread=True, what="lag 0")
    await run.stop()


async def test_replay_by_time_reads_only_the_window_under_its_own_group(broker: TansuBroker) -> None:
    topic = f"t-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, 2)
    marks: list[datetime] = []
    for i in range(3):  # three windows of log-append time, with a clock tick between them
        for p in (0, 1):
            broker.produce(topic, events(3, f"w{i}p{p}"), partition=p)
        marks.append(await next_millisecond())
    cfg = section(broker, [topic])
    live_group = cfg.group_id
    plan = ReplayPlan(since=marks[0], until=marks[1])
    source = KafkaSource(cfg, metrics=Metrics(), group_id=f"{live_group}-replay", replay=plan)
    run = Running(source)
    got = await run.get(6)
    assert sorted(json.loads(r.data)["meta"]["id"] for r in got) == sorted(
        f"w1p{p}-{i}" for p in (0, 1) for i in range(3))
    for r in got:
        source.ack(r.position)
    await asyncio.wait_for(run.task, 30)  # a replay ends by itself at ``until``
    assert source.finished_replay and run.queue.empty()
    assert broker.committed(live_group, topic, 2) == {0: None, 1: None}  # the live position never moved
    assert broker.committed(f"{live_group}-replay", topic, 2) == {0: 6, 1: 6}


async def test_replay_from_explicit_offsets_to_the_end(broker: TansuBroker) -> None:
    topic = f"t.{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, 2)
    broker.produce(topic, events(5, "a"), partition=0)
    broker.produce(topic, events(5, "b"), partition=1)
    offsets = parse_offsets(f"{topic}:0:3")
    cfg = section(broker, [topic])
    source = KafkaSource(cfg, metrics=Metrics(), group_id="replay-x", replay=ReplayPlan(offsets=offsets))
    run = Running(source)
    got = await run.get(2)
    assert [(r.position.partition, r.position.offset) for r in got] == [(0, 3), (0, 4)]
    for r in got:
        source.ack(r.position)
    await asyncio.wait_for(run.task, 30)
    assert run.queue.empty()


def test_parse_offsets_rejects_bad_input() -> None:
    assert parse_offsets("eqiad.mediawiki.recentchange:0:42, codfw.mediawiki.recentchange:0:7") == {
        ("eqiad.mediawiki.recentchange", 0): 42, ("codfw.mediawiki.recentchange", 0): 7}
    for bad in ("", "topic:0", "topic:x:1", ":0:1"):
        with pytest.raises(ValueError):
            parse_offsets(bad)


def test_sasl_and_tls_options_reach_kafka_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PW", "s3cret")
    conn = KafkaConnectionSection(bootstrap_servers=("kafka1:9093",), security_protocol="SASL_SSL",
                                  sasl_mechanism="SCRAM-SHA-512", sasl_username="mm",
                                  sasl_password=Secret(env="KAFKA_PW"), ssl_cafile="/etc/ca.pem")
    opts = kafka_client_options(conn)
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "mm" and opts["sasl_plain_password"] == "s3cret"
    assert opts["ssl_cafile"] == "/etc/ca.pem" and opts["ssl_check_hostname"] is True
    plain = kafka_client_options(KafkaConnectionSection(bootstrap_servers=("k:9092",)))
    assert "sasl_mechanism" not in plain and "ssl_cafile" not in plain
