"""The runtime every role shares: the checkpoint committer and the HTTP start-up with its checks."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from service.config import HttpSection
from service.errors import ServiceError
from service.metrics import Metrics
from service.runtime.committer import Committer
from service.runtime.http import HttpServer, source_details, source_ready, store_ready
from service.sources.base import SourceStatus
from tests.helpers import until


class CheckpointDown(ServiceError):
    reason = "store"


class Recording:
    """A source that records acknowledgements and checkpoint writes; the first ``failures`` writes fail."""

    name = "recording"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.acked: list[Any] = []
        self.committed: list[Any] = []
        self.written = asyncio.Condition()

    def ack(self, position: Any) -> None:
        self.acked.append(position)

    async def commit(self, position: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise CheckpointDown("checkpoint table locked")
        async with self.written:
            self.committed.append(position)
            self.written.notify_all()

    async def wait_committed(self, position: Any) -> None:
        async with self.written:
            await self.written.wait_for(lambda: position in self.committed)


async def test_committer_moves_only_past_events_that_are_all_finished() -> None:
    source = Recording()
    committer = Committer(source, Metrics(), coalesce=0.01)
    seqs = [committer.track(f"pos-{n}") for n in range(3)]
    committer.done(seqs[1])  # finished out of order: acknowledged at once, not yet committable
    await committer.commit()
    assert source.acked == ["pos-1"] and source.committed == [] and committer.pending == 3
    committer.done(seqs[0])
    await committer.commit()
    assert source.committed == ["pos-1"] and committer.pending == 1
    committer.done(seqs[2])
    await committer.commit()
    assert source.committed == ["pos-1", "pos-2"] and source.acked == ["pos-1", "pos-0", "pos-2"]


async def test_committer_writes_a_failed_checkpoint_again_without_waiting_for_more_events() -> None:
    source = Recording(failures=2)
    metrics = Metrics()
    committer = Committer(source, metrics, coalesce=0.01)
    task = asyncio.create_task(committer.run())
    try:
        committer.done(committer.track("pos-0"))  # the last event for a while: nothing else wakes the committer
        await until(source.wait_committed("pos-0"), 10, what="the checkpoint written after two failures")
        assert source.failures == 0 and source.committed == ["pos-0"]
        assert metrics.registry.get_sample_value("mediamoderation_checkpoint_pending_events") == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class StatusSource:
    name = "stub"

    def __init__(self) -> None:
        self.state = SourceStatus(connected=False, last_error="connection refused")

    def status(self) -> SourceStatus:
        return self.state


class Store:
    def __init__(self) -> None:
        self.up = True

    async def ping(self) -> None:
        if not self.up:
            raise ServiceError("database is down")


async def test_http_server_serves_the_role_checks_mounts_and_source_details() -> None:
    source, store = StatusSource(), Store()
    http = HttpServer(HttpSection(host="127.0.0.1", port=0), Metrics())
    clock = {"last": None}

    def extra(app: web.Application) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="mounted")

        app.router.add_get("/extra", hello)

    await http.start({"store": store_ready(store)},
                     {"pipeline": lambda: None}, details=source_details(source), mount=[extra],  # type: ignore[arg-type]
                     pipeline={"source": source_ready(source, last_event_at=lambda: clock["last"], idle=60)})
    try:
        assert http.port
        base = f"http://127.0.0.1:{http.port}"
        async with aiohttp.ClientSession() as client:
            async with client.get(base + "/healthz/pipeline") as r:
                body = await r.json()
            assert r.status == 503
            assert body["reasons"] == {"source": "source stub not connected: connection refused"}
            async with client.get(base + "/readyz") as r:
                assert r.status == 200  # the source is the pipeline's business, not the HTTP role's
            source.state = SourceStatus(connected=True, details={"lag": {"0": 3}})
            store.up = False
            async with client.get(base + "/readyz") as r:
                body = await r.json()
            assert r.status == 503 and body["reasons"] == {"store": "ServiceError: database is down"}
            async with client.get(base + "/healthz/pipeline") as r:
                body = await r.json()
            assert r.status == 200 and body["details"] == {"source": {"lag": {"0": 3}}}
            store.up = True
            clock["last"] = 0.0  # nothing since 1970: idle far longer than 60 s
            async with client.get(base + "/healthz/pipeline") as r:
                body = await r.json()
            assert r.status == 503 and body["reasons"]["source"].startswith("no event from the source for")
            clock["last"] = None
            async with client.get(base + "/healthz/pipeline") as r:
                assert r.status == 200
            async with client.get(base + "/readyz") as r:
                assert r.status == 200
            async with client.get(base + "/healthz") as r:
                assert r.status == 200
            async with client.get(base + "/extra") as r:
                assert await r.text() == "mounted"
    finally:
        await http.close()
        await http.close()  # closing twice is harmless


async def test_http_server_disabled_does_not_listen() -> None:
    http = HttpServer(HttpSection(enabled=False), Metrics())
    await http.start({})
    assert http.port is None
    await http.close()


async def test_a_restarted_committer_writes_what_its_predecessor_could_not() -> None:
    source = Recording()
    committer = Committer(source, Metrics(), coalesce=0.01)
    real_commit = source.commit

    async def crashes(position: Any) -> None:
        raise RuntimeError("checkpoint bug")  # not a store outage: the committer task dies

    source.commit = crashes  # type: ignore[method-assign]
    first = asyncio.create_task(committer.run())
    committer.done(committer.track("pos-0"))
    with pytest.raises(RuntimeError, match="checkpoint bug"):
        await asyncio.wait_for(first, 10)
    source.commit = real_commit  # type: ignore[method-assign]
    second = asyncio.create_task(committer.run())  # as its supervisor restarts it; no new event comes
    try:
        await until(source.wait_committed("pos-0"), 10, what="the checkpoint written by the restarted committer")
    finally:
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)


async def test_checkpoint_writes_never_overlap() -> None:
    source = Recording()
    committer = Committer(source, Metrics())
    order: list[str] = []
    gate = asyncio.Event()
    real_commit = source.commit

    async def slow_first(position: Any) -> None:
        order.append(f"start {position}")
        if position == "pos-0":
            await gate.wait()
        await real_commit(position)
        order.append(f"end {position}")

    source.commit = slow_first  # type: ignore[method-assign]
    committer.done(committer.track("pos-0"))
    writing = asyncio.create_task(committer.commit())
    await until(lambda: order == ["start pos-0"], 5, interval=0.001, what="the first write under way")
    committer.done(committer.track("pos-1"))
    last = asyncio.create_task(committer.commit())  # the final write at shutdown, say
    await asyncio.sleep(0)
    assert order == ["start pos-0"]  # waits for the first write instead of racing it
    gate.set()
    await asyncio.gather(writing, last)
    assert order == ["start pos-0", "end pos-0", "start pos-1", "end pos-1"] and source.committed == ["pos-0", "pos-1"]
