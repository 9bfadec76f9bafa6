"""API polling (list=logevents) against the real test wiki, and the API client's politeness rules."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from service import events as ev
from service.app import Service
from service.config import WikiSection, config_from_dict
from service.errors import PermanentSourceError
from service.mediawiki.transport import MockTransport, Request, Response, response
from service.metrics import Metrics
from service.models import RawEvent, UploadEvent
from service.sources.mwapi import LogEventsSource, polling_client
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.test_e2e import Running

UA = "mediamoderation-test/0.1 (ts@example.org)"


class MemoryCheckpoints:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def get_checkpoint(self, name: str) -> Any | None:
        return self.values.get(name)

    async def set_checkpoint(self, name: str, value: Any) -> None:
        self.values[name] = value


def config(wiki: MediaWikiServer, tmp_path: Path, **extra: Any) -> Any:
    data: dict[str, Any] = {
        "service": {"user_agent": UA, "shutdown_grace": 5},
        "http": {"enabled": False},
        "source": {"type": "mwapi", "mwapi": {"limit": 2, "poll_interval": 0.2}},
        "wikis": [{"id": wiki.wiki_id, "api_url": wiki.api_url}],
        "actions": {"notify": {"enabled": False}},
        "store": {"path": str(tmp_path / "store.sqlite3")},
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data, base=tmp_path)


async def collect(source: LogEventsSource, prefix: str, n: int, timeout: float = 30) -> list[tuple[RawEvent, Any]]:
    """Events of our uploads (the shared wiki holds other tests' too), with what the pipeline makes of them."""
    queue: asyncio.Queue[RawEvent] = asyncio.Queue(4)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(queue, stop))
    got: list[tuple[RawEvent, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < n:
                raw = await queue.get()
                parsed = ev.classify(ev.decode(raw.data), {w.id for w in source.cfg.wikis}, raw.position)
                if isinstance(parsed, UploadEvent) and parsed.title.startswith(f"File:{prefix}"):
                    got.append((raw, parsed))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    return got


@pytest.mark.wiki
async def test_polls_the_upload_log_with_continuation_and_resumes_from_the_checkpoint(
    tmp_path: Path, mediawiki: MediaWikiServer,
) -> None:
    prefix = f"Poll {uuid.uuid4().hex[:6]}"
    since = datetime.now(UTC) - timedelta(seconds=1)
    datas = [images.jpeg_bytes(images.photo(9100 + i)) for i in range(3)]
    for i, data in enumerate(datas):
        await asyncio.to_thread(mediawiki.upload, f"{prefix} {i}.jpg", data)
    cfg = config(mediawiki, tmp_path)
    checkpoints = MemoryCheckpoints()
    metrics = Metrics()
    source = LogEventsSource(cfg, checkpoints=checkpoints, metrics=metrics, since=since)
    got = await collect(source, prefix, 3)
    titles = [p.title for _, p in got]
    assert titles == [f"File:{prefix} {i}.jpg" for i in range(3)]  # oldest first, each once
    for (raw, parsed), data in zip(got, datas, strict=True):
        assert parsed.sha1 == hashlib.sha1(data).hexdigest()  # base 36 in the log, hex in the record
        assert parsed.log_action == "upload" and parsed.uploader == "Admin"
        assert parsed.page_url.startswith(mediawiki.base_url) and "File:" in parsed.page_url
        assert json.loads(raw.data)["meta"]["id"].startswith("logevents:")
    assert (metrics.registry.get_sample_value("mediamoderation_mwapi_requests_total",
                                              {"list": "logevents", "result": "ok"}) or 0) >= 2  # lelimit=2: paged

    # The pipeline commits the position of the last finished event; a new source resumes after it.
    await source.commit(got[-1][0].position)
    await asyncio.to_thread(mediawiki.upload, f"{prefix} 3.jpg", images.jpeg_bytes(images.photo(9103)))
    resumed = LogEventsSource(cfg, checkpoints=checkpoints, metrics=Metrics())
    again = await collect(resumed, prefix, 1)
    assert [p.title for _, p in again] == [f"File:{prefix} 3.jpg"]


@pytest.mark.wiki
async def test_service_on_api_polling_emails_a_match(
    tmp_path: Path, mediawiki: MediaWikiServer, smtp_server: SmtpServer,
) -> None:
    data = images.jpeg_bytes(images.photo(9200))
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{hashlib.sha1(data).hexdigest()},terrorism,test,x\n")
    cfg = config(mediawiki, tmp_path, source={"type": "mwapi", "mwapi": {
                     "poll_interval": 0.2, "since": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}},
                 banks={"reload_interval": 0, "list": [{"name": "b", "path": str(bank), "category": "terrorism"}]},
                 actions={"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"],
                                     "smtp": {"host": "127.0.0.1", "port": smtp_server.port, "security": "none"}}})
    name = f"Polled {uuid.uuid4().hex[:6]}.jpg"
    service = Service(cfg)
    task = asyncio.create_task(service.run())
    run = Running(service, task)
    try:
        await service.started.wait()
        await asyncio.to_thread(mediawiki.upload, name, data)
        mails = await smtp_server.wait_for_async(1)
        assert name in str(mails[0].message["Subject"])
    finally:
        await run.stop()


@pytest.fixture
async def lagged_api() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """An api.php that is lagged once, then answers; it records concurrency and parameters."""
    state: dict[str, Any] = {"calls": 0, "active": 0, "max_active": 0, "params": []}

    async def api(request: web.Request) -> web.Response:
        state["calls"] += 1
        state["active"] += 1
        state["max_active"] = max(state["max_active"], state["active"])
        state["params"].append(dict(request.query))
        try:
            await asyncio.sleep(0.05)  # a slow answer, so that overlapping requests would show in max_active
            if state["calls"] == 1:
                return web.json_response({"error": {"code": "maxlag", "info": "Waiting for db: 7 seconds lagged"}},
                                         headers={"Retry-After": "7"})
            return web.json_response({"query": {"logevents": []}})
        finally:
            state["active"] -= 1

    app = web.Application()
    app.router.add_get("/api.php", api)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/api.php", state
    await runner.cleanup()


async def test_maxlag_is_waited_for_and_requests_to_one_wiki_are_serial(
    lagged_api: tuple[str, dict[str, Any]],
) -> None:
    url, state = lagged_api
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    client = polling_client(WikiSection(id="w", api_url=url), user_agent=UA, metrics=Metrics(), sleep=sleep)
    try:
        await asyncio.gather(*(client.query({"list": "logevents"}, what="logevents") for _ in range(3)))
    finally:
        await client.aclose()
    assert slept == [7.0]  # Retry-After honoured (never less than 5 s)
    assert state["max_active"] == 1 and state["calls"] == 4
    assert all(p["maxlag"] == "5" for p in state["params"])


def mock_config() -> Any:
    return config_from_dict({
        "service": {"user_agent": UA},
        "source": {"type": "mwapi"},
        "wikis": [{"id": "w", "api_url": "https://wiki.example/w/api.php"}],
        "actions": {"notify": {"enabled": False}},
    })


def mock_source(handler: Any) -> tuple[LogEventsSource, MockTransport, Metrics]:
    cfg = mock_config()
    metrics = Metrics()

    async def no_wait(_: float) -> None:
        return None

    source = LogEventsSource(cfg, checkpoints=MemoryCheckpoints(), metrics=metrics, sleep=no_wait)
    transport = MockTransport(handler)
    source.clients["w"] = polling_client(cfg.wikis[0], user_agent=UA, metrics=metrics, transport=transport,
                                         sleep=no_wait)
    return source, transport, metrics


async def test_a_refused_listing_stops_the_source_with_a_permanent_error() -> None:
    source, transport, metrics = mock_source(
        lambda r: response(json={"error": {"code": "badvalue", "info": "Unrecognized value for letype"}}))
    with pytest.raises(PermanentSourceError, match="badvalue"):
        await source.run(asyncio.Queue(4), asyncio.Event())
    assert len(transport.requests) == 1  # not retried
    assert metrics.registry.get_sample_value("mediamoderation_mwapi_requests_total",
                                             {"list": "siteinfo", "result": "error"}) == 1


async def test_a_wiki_that_keeps_failing_is_reported_in_status_and_polled_again() -> None:
    stop = asyncio.Event()

    def down(request: Request) -> Response:
        if len(transport.requests) == 7:  # the first try and six retries: the source gives up this round
            stop.set()
        return response(503)

    source, transport, metrics = mock_source(down)
    await asyncio.wait_for(source.run(asyncio.Queue(4), stop), 10)
    status = source.status()
    assert not status.connected and status.last_error is not None and "HTTP 503" in status.last_error
    assert metrics.registry.get_sample_value("mediamoderation_source_reconnects_total", {"cause": "mwapi"}) == 1
    assert metrics.registry.get_sample_value("mediamoderation_mwapi_requests_total",
                                             {"list": "siteinfo", "result": "retry"}) == 6
