"""``--role ingest`` on the stream: uploads go to the work topic keyed by SHA-1; the checkpoint follows the broker."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from service import events as ev
from service.config import config_from_dict
from service.sources.factory import live_source
from service.work import IngestService
from tests.infra.kafka import GROUP_TIMING, TansuBroker
from tests.infra.sse_server import EventStreamsServer
from tests.test_events import REAL


def upload(n: int, sha1_b36: str) -> dict[str, Any]:
    obj = copy.deepcopy(REAL)
    obj["meta"]["id"] = f"id-{n}"
    obj["title"] = f"File:W{n}.jpg"
    obj["log_params"]["img_sha1"] = sha1_b36
    return obj


def read_topic(broker: TansuBroker, topic: str, partitions: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        for _ in range(20):
            for records in consumer.poll(timeout_ms=200).values():
                out += records
        return out
    finally:
        consumer.close()


async def test_ingest_publishes_uploads_keyed_by_sha1_and_checkpoints_behind_the_broker(
    tmp_path: Path, broker: TansuBroker, sse_server: EventStreamsServer,
) -> None:
    run_id = uuid.uuid4().hex[:8]
    same = "n7p91uyt4hcqqq8s0snqrsfdfc75xfx"
    other = "1p91uyt4hcqqq8s0snqrsfdfc75xfx"
    sse_server.publish(upload(0, same), ts_ms=1_700_000_000_000)
    canary = upload(1, other)
    canary["meta"]["domain"] = "canary"
    sse_server.publish(canary, ts_ms=1_700_000_000_001)
    sse_server.publish(upload(2, other), ts_ms=1_700_000_000_002)
    sse_server.publish(upload(3, same), ts_ms=1_700_000_000_003)  # same content: same key, same partition
    cfg = config_from_dict({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 5},
        "http": {"host": "127.0.0.1", "port": 0},
        "source": {"eventstreams": {"url": sse_server.stream_url(), "since": "2000-01-01T00:00:00Z"},
                   "kafka": {"connection": {"bootstrap_servers": [broker.bootstrap], **GROUP_TIMING}}},
        "work": {"topic": f"work-{run_id}", "partitions": 4},
        "wikis": [{"id": "commonswiki", "api_url": "https://commons.wikimedia.org/w/api.php"}],
        "actions": {"notify": {"enabled": False}},
        "store": {"path": str(tmp_path / "store.sqlite3")},
    }, base=tmp_path)
    service = IngestService(cfg, make_source=lambda c, stores, m: live_source(c, stores.checkpoints, m))
    task = asyncio.create_task(service.run())
    await service.started.wait()
    await asyncio.wait_for(service.wait_published(3), 20)
    service.stop()
    await asyncio.wait_for(task, 20)

    records = read_topic(broker, cfg.work.topic, 4)
    assert sorted(json.loads(r.value)["meta"]["id"] for r in records) == ["id-0", "id-2", "id-3"]  # no canary
    by_id = {json.loads(r.value)["meta"]["id"]: r for r in records}
    assert by_id["id-0"].key == ev.sha1_from_base36(same).encode()
    assert by_id["id-0"].partition == by_id["id-3"].partition
    from service.store import sqlite_stores

    stores = sqlite_stores(cfg.store.path)
    await stores.open()
    try:  # every event (the skipped canary too) is below the stored checkpoint
        assert json.loads(await stores.checkpoints.get_checkpoint("eventstreams")) == sse_server.connections[-1].ids[-1]
    finally:
        await stores.close()
