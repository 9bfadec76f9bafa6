"""``--role ingest`` under its supervisor: a dying committer is restarted, a dying publisher stops the role."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.config import Config, config_from_dict
from service.models import RawEvent
from service.runtime.supervisor import RestartPolicy, TaskFailed
from service.sources.base import SourceBase
from service.work import IngestService
from tests.infra.kafka import GROUP_TIMING, TansuBroker
from tests.test_events import REAL


class FeedSource(SourceBase):
    """Events handed over by the test one at a time; ends when the service stops (once ``release`` is set, if
    ``held``: a source slow to stop)."""

    name = "feed"
    connected = True

    def __init__(self, *, held: bool = False) -> None:
        self.held = held
        self.release = asyncio.Event()
        self.feed: asyncio.Queue[str] = asyncio.Queue()
        self.committed: list[Any] = []
        self.changed = asyncio.Condition()
        self.sent = 0

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        while True:
            getter = asyncio.ensure_future(self.feed.get())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                getter.cancel()
                stopper.cancel()
                await asyncio.gather(getter, stopper, return_exceptions=True)
            if stop.is_set():
                if self.held:
                    await self.release.wait()
                return
            data = getter.result()
            await out.put(RawEvent(data=data, position=self.sent, label=f"#{self.sent}"))
            self.sent += 1

    async def commit(self, position: Any) -> None:
        async with self.changed:
            self.committed.append(position)
            self.changed.notify_all()

    async def wait_committed(self, position: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: position in self.committed)


def upload(n: int) -> str:
    obj = copy.deepcopy(REAL)
    obj["meta"]["id"] = f"sup-{n}-{uuid.uuid4().hex[:6]}"
    obj["title"] = f"File:Supervised {n}.jpg"
    return json.dumps(obj)


def make_config(tmp_path: Path, broker: TansuBroker) -> Config:
    return config_from_dict({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 5},
        "http": {"host": "127.0.0.1", "port": 0},
        "source": {"eventstreams": {"url": "http://127.0.0.1:9/v2/stream/mediawiki.recentchange"},
                   "kafka": {"connection": {"bootstrap_servers": [broker.bootstrap], **GROUP_TIMING}}},
        "work": {"topic": f"work-sup-{uuid.uuid4().hex[:8]}", "partitions": 2},
        "wikis": [{"id": "commonswiki", "api_url": "https://commons.wikimedia.org/w/api.php"}],
        "actions": {"notify": {"enabled": False}},
        "store": {"path": str(tmp_path / "store.sqlite3")},
    }, base=tmp_path)


def restarts(service: IngestService, task: str) -> float | None:
    return service.metrics.registry.get_sample_value("mediamoderation_task_restarts_total", {"task": task})


async def test_ingest_restarts_a_dying_committer_and_still_checkpoints(
    tmp_path: Path, broker: TansuBroker, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.runtime.supervisor")
    source = FeedSource()
    service = IngestService(make_config(tmp_path, broker), make_source=lambda c, store, m: source,
                            restart=RestartPolicy(initial_delay=0.01, max_delay=0.05))
    real_commit = service.committer.commit
    calls = 0
    first = asyncio.Event()

    async def fails_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            first.set()
            raise RuntimeError("checkpoint bug")
        await real_commit()

    service.committer.commit = fails_once  # type: ignore[method-assign]
    task = asyncio.create_task(service.run())
    await service.started.wait()
    source.feed.put_nowait(upload(0))
    await asyncio.wait_for(first.wait(), 30)  # its checkpoint write kills the committer
    source.feed.put_nowait(upload(1))
    await asyncio.wait_for(source.wait_committed(1), 30)  # the restarted committer moves the checkpoint
    assert restarts(service, "commit") == 1 and calls == 2
    died = [r for r in caplog.records if r.getMessage().startswith("task commit died")]
    assert len(died) == 1 and died[0].exc_info is not None
    service.stop()
    await asyncio.wait_for(task, 30)
    assert service.supervisor.names == ["commit", "publish", "source"]
    stopped = [r.__dict__["task"] for r in caplog.records if r.getMessage() == "task stopped"]
    assert stopped == ["source", "publish", "commit"]


async def test_a_dying_publisher_stops_the_ingest_role_with_the_cause(tmp_path: Path, broker: TansuBroker) -> None:
    source = FeedSource(held=True)
    service = IngestService(make_config(tmp_path, broker), make_source=lambda c, store, m: source)
    real_key = service._key

    def key_bug(raw: RawEvent) -> bytes | None:
        if raw.position == 1:
            raise KeyError("partition key bug")
        return real_key(raw)

    service._key = key_bug  # type: ignore[method-assign]
    task = asyncio.create_task(service.run())
    await service.started.wait()
    source.feed.put_nowait(upload(0))
    await asyncio.wait_for(service.wait_published(1), 30)
    source.feed.put_nowait(upload(1))
    await asyncio.wait_for(service.stop_event.wait(), 30)  # the publisher died: it is critical
    # While the source is still stopping, /healthz reports the cause.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{service.http_port}/healthz") as r:
            body = await r.json()
            assert r.status == 503
    assert body["problems"] == {"tasks": "task publish failed: KeyError: 'partition key bug'"}
    source.release.set()
    with pytest.raises(TaskFailed) as info:
        await asyncio.wait_for(task, 30)
    assert info.value.task == "publish" and isinstance(info.value.__cause__, KeyError)
    assert 0 in source.committed and 1 not in source.committed  # the failed event stays above the checkpoint
    assert restarts(service, "publish") == 0
