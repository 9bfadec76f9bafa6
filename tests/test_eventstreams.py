"""The EventStreams source against an SSE server that speaks the protocol exactly."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from service.config import EventStreamsSection, ReconnectSection
from service.errors import SourceError
from service.metrics import Metrics
from service.models import RawEvent
from service.sources.eventstreams import EventStreamsSource, resume_id
from tests.helpers import until
from tests.infra.sse_server import EventStreamsServer
from tests.test_events import REAL

UA = "mediamoderation-test/0.1 (ts@example.org)"
loop_time = time.monotonic  # the clock the test server stamps its writes with


class MemoryCheckpoints:
    def __init__(self, value: Any = None) -> None:
        self.values: dict[str, Any] = {} if value is None else {"eventstreams": value}

    async def get_checkpoint(self, name: str) -> Any | None:
        return self.values.get(name)

    async def set_checkpoint(self, name: str, value: Any) -> None:
        self.values[name] = value


def event(n: int) -> dict[str, Any]:
    obj = copy.deepcopy(REAL)
    obj["meta"]["id"] = f"id-{n}"
    obj["title"] = f"File:E{n}.jpg"
    return obj


def source_for(server: EventStreamsServer, checkpoints: MemoryCheckpoints | None = None, *,
               url: str | None = None, since: datetime | None = None, cfg_since: str | None = None,
               metrics: Metrics | None = None) -> EventStreamsSource:
    cfg = EventStreamsSection(url=url or server.stream_url(), since=cfg_since, read_timeout=5,
                              reconnect=ReconnectSection(initial_delay=0.05, max_delay=0.2))
    return EventStreamsSource(cfg, user_agent=UA, checkpoints=checkpoints or MemoryCheckpoints(),
                              metrics=metrics or Metrics(), since=since)


async def collect(source: EventStreamsSource, count: int, timeout: float = 15,
                  unique: bool = False) -> list[RawEvent]:
    """Read until ``count`` events (or ``count`` distinct meta.ids: a resume may repeat the last ms)."""
    queue: asyncio.Queue[RawEvent] = asyncio.Queue(4)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(queue, stop))
    got: list[RawEvent] = []
    try:
        async with asyncio.timeout(timeout):
            while len({e.data for e in got} if unique else got) < count:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    task.result()
                    raise AssertionError("source ended early")
                got.append(getter.result())
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    return got


def ids(events: list[RawEvent]) -> list[str]:
    return [json.loads(e.data)["meta"]["id"] for e in events]


async def test_reads_history_with_since_and_sends_user_agent(sse_server: EventStreamsServer) -> None:
    for n in range(3):
        sse_server.publish(event(n), ts_ms=1_700_000_000_000 + n)
    since = datetime.fromtimestamp(1_700_000_000, tz=UTC)
    got = await collect(source_for(sse_server, since=since), 3)
    assert ids(got) == ["id-0", "id-1", "id-2"]
    conn = sse_server.connections[0]
    assert conn.user_agent == UA
    assert conn.last_event_id is None
    assert "since" in conn.query
    assert json.loads(got[-1].position)[0]["timestamp"] == 1_700_000_000_002 + 1


async def test_reconnects_with_last_event_id_after_cut_off(sse_server: EventStreamsServer) -> None:
    sse_server.disconnect_after = 2
    for n in range(5):
        sse_server.publish(event(n), ts_ms=1_700_000_000_000 + n * 10)
    metrics = Metrics()
    got = await collect(source_for(sse_server, since=datetime.fromtimestamp(1_600_000_000, tz=UTC),
                                   metrics=metrics), 5, unique=True)
    assert list(dict.fromkeys(ids(got))) == [f"id-{n}" for n in range(5)]  # nothing lost, in order
    second = sse_server.connections[1]
    assert second.last_event_id == resume_id(got[1].position)
    assert "since" not in second.query  # Last-Event-ID wins, since is not resent
    assert metrics.registry.get_sample_value("mediamoderation_source_reconnects_total",
                                             {"cause": "network"}) >= 1


async def test_resumes_from_stored_checkpoint(sse_server: EventStreamsServer) -> None:
    for n in range(4):
        sse_server.publish(event(n), ts_ms=1_700_000_000_000 + n * 10)
    first = await collect(source_for(sse_server, since=datetime.fromtimestamp(1_600_000_000, tz=UTC)), 2)
    checkpoints = MemoryCheckpoints(first[1].position)
    got = await collect(source_for(sse_server, checkpoints), 3)
    assert ids(got) == ["id-1", "id-2", "id-3"]  # the last millisecond is read again, then de-duplicated
    assert sse_server.connections[-1].last_event_id == resume_id(first[1].position)


async def test_since_on_command_line_overrides_checkpoint(sse_server: EventStreamsServer) -> None:
    for n in range(3):
        sse_server.publish(event(n), ts_ms=1_700_000_000_000 + n * 10)
    stale = json.dumps([{"topic": "eqiad.mediawiki.recentchange", "partition": 0, "timestamp": 1_700_000_000_015}])
    got = await collect(source_for(sse_server, MemoryCheckpoints(stale),
                                   since=datetime.fromtimestamp(1_600_000_000, tz=UTC)), 3)
    assert ids(got) == ["id-0", "id-1", "id-2"]
    assert sse_server.connections[0].last_event_id is None


async def test_backs_off_on_429_and_503(sse_server: EventStreamsServer) -> None:
    sse_server.reject_next(2, status=429, retry_after=0)
    sse_server.reject_next(1, status=503)
    sse_server.publish(event(0), ts_ms=1_700_000_000_000)
    metrics = Metrics()
    got = await collect(source_for(sse_server, since=datetime.fromtimestamp(1_600_000_000, tz=UTC),
                                   metrics=metrics), 1)
    assert ids(got) == ["id-0"]
    assert [c.status for c in sse_server.connections[:4]] == [429, 429, 503, 200]
    assert metrics.registry.get_sample_value("mediamoderation_source_reconnects_total",
                                             {"cause": "http-429"}) == 2


async def test_bad_stream_name_is_fatal_with_clear_error(sse_server: EventStreamsServer) -> None:
    source = source_for(sse_server, url=sse_server.stream_url("no.such.stream"))
    with pytest.raises(SourceError, match="HTTP 400") as info:
        await collect(source, 1, timeout=5)
    assert not info.value.retriable


async def test_unreachable_server_keeps_retrying_without_crashing(unused_port: Any) -> None:
    port = unused_port()
    cfg = EventStreamsSection(url=f"http://127.0.0.1:{port}/v2/stream/mediawiki.recentchange",
                              reconnect=ReconnectSection(initial_delay=0.01, max_delay=0.02))
    metrics = Metrics()
    source = EventStreamsSource(cfg, user_agent=UA, checkpoints=MemoryCheckpoints(), metrics=metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(asyncio.Queue(1), stop))

    def reconnects() -> float:  # the reader thread bumps the counter; nothing to await on
        return metrics.registry.get_sample_value("mediamoderation_source_reconnects_total", {"cause": "network"}) or 0

    await until(lambda: reconnects() >= 3, 10, interval=0.01, what="three reconnects")
    assert not source.connected and source.last_error
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_large_events_survive_chunked_transfer(sse_server: EventStreamsServer) -> None:
    big = event(0)
    big["comment"] = "ü" * 40_000  # spans many transfer chunks and read calls
    sse_server.publish(big, ts_ms=1_700_000_000_000)
    sse_server.publish(event(1), ts_ms=1_700_000_000_001)
    got = await collect(source_for(sse_server, since=datetime.fromtimestamp(1_600_000_000, tz=UTC)), 2)
    assert json.loads(got[0].data)["comment"] == big["comment"]
    assert ids(got) == ["id-0", "id-1"]


async def test_events_sharing_a_millisecond_are_not_lost_on_resume(sse_server: EventStreamsServer) -> None:
    sse_server.disconnect_after = 3
    for n in range(4):  # 0 and 1 share a millisecond, so do 2 and 3; the cut comes after 2
        sse_server.publish(event(n), ts_ms=1_700_000_000_000 + (n // 2) * 5)
    got = await collect(source_for(sse_server, since=datetime.fromtimestamp(1_600_000_000, tz=UTC)), 4,
                        unique=True)
    assert set(ids(got)) == {f"id-{n}" for n in range(4)}


def test_resume_id_rewinds_timestamps_and_starts_unread_partitions() -> None:
    stored = json.dumps([{"topic": "eqiad.x", "partition": 0, "timestamp": 1000},
                         {"topic": "codfw.x", "partition": 0, "offset": -1}])
    assert json.loads(resume_id(stored)) == [{"topic": "eqiad.x", "partition": 0, "timestamp": 999},
                                             {"topic": "codfw.x", "partition": 0, "timestamp": 999}]
    exact = json.dumps([{"topic": "t", "partition": 0, "offset": 41}])
    assert json.loads(resume_id(exact)) == [{"topic": "t", "partition": 0, "offset": 41}]
    assert resume_id("not json") == "not json"


async def test_giant_trickled_event_is_skipped_without_delaying_the_next(sse_server: EventStreamsServer) -> None:
    """A 3 MB event sent in 1 KB transfer chunks held the next event up for 41 s with sseclient (it
    rescanned its whole buffer per chunk): now it is discarded as it arrives and handed on as a
    ``too-large`` malformed event whose position is its own id, so the checkpoint passes it."""
    giant = event(0)
    giant["comment"] = "x" * 3_000_000
    sse_server.publish(giant, ts_ms=1_700_000_000_000, trickle=1024)
    sse_server.publish(event(1), ts_ms=1_700_000_000_001)
    metrics = Metrics()
    queue: asyncio.Queue[RawEvent] = asyncio.Queue(4)
    stop = asyncio.Event()
    task = asyncio.create_task(source_for(sse_server, since=datetime.fromtimestamp(1_600_000_000, tz=UTC),
                                          metrics=metrics).run(queue, stop))
    try:
        skipped = await asyncio.wait_for(queue.get(), 60)
        following = await asyncio.wait_for(queue.get(), 60)
        arrived = loop_time()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    conn = sse_server.connections[0]
    assert skipped.problem == "too-large" and skipped.data == b""
    assert json.loads(skipped.position) == conn.ids[0]
    assert ids([following]) == ["id-1"] and json.loads(following.position) == conn.ids[1]
    delay = arrived - conn.write_started[0]
    assert delay < 5, f"the next event came {delay:.1f} s after the giant one started"
    assert metrics.registry.get_sample_value("mediamoderation_events_received_total",
                                             {"source": "eventstreams"}) == 2


async def test_many_events_in_one_read_and_one_event_in_many_reads(sse_server: EventStreamsServer) -> None:
    """Several events in one transfer chunk and events split across chunks both come through."""
    for n in range(3):
        sse_server.publish(event(n), ts_ms=1_700_000_000_000 + n, trickle=7 if n == 1 else None)
    got = await collect(source_for(sse_server, since=datetime.fromtimestamp(1_600_000_000, tz=UTC)), 3)
    assert ids(got) == ["id-0", "id-1", "id-2"]


async def test_a_redirect_is_never_followed(unused_port: Any) -> None:
    """A stream URL that redirects (to another port here) is a clear fatal error, never followed."""
    from aiohttp import web

    hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        return web.Response(text="data: {}\n\n", content_type="text/event-stream")

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://127.0.0.1:{other}/stream")

    other = unused_port()
    port = unused_port()
    runners = []
    for p, handler in ((port, redirect), (other, elsewhere)):
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", p).start()
        runners.append(runner)
    try:
        cfg = EventStreamsSection(url=f"http://127.0.0.1:{port}/v2/stream/mediawiki.recentchange",
                                  reconnect=ReconnectSection(initial_delay=0.01, max_delay=0.02))
        source = EventStreamsSource(cfg, user_agent=UA, checkpoints=MemoryCheckpoints(), metrics=Metrics())
        with pytest.raises(SourceError, match=r"redirect to .* not followed") as info:
            await asyncio.wait_for(source.run(asyncio.Queue(1), asyncio.Event()), 10)
        assert not info.value.retriable
        assert hits == []
    finally:
        for runner in runners:
            await runner.cleanup()
