"""Service-level behaviour: readiness reasons, notifications surviving an SMTP outage and a restart, `scan`."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.app import Service
from service.cli import main
from service.config import ThumbnailSection
from service.errors import PermanentSourceError
from service.media.thumbnail import prepare
from service.metrics import build_version
from service.models import RawEvent
from service.runtime.supervisor import RestartPolicy, TaskFailed
from service.sources.base import SourceBase
from service.store.base import OutboxItem
from tests.helpers import until
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, make_config, start, upload_and_publish

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.wiki
async def test_ready_but_pipeline_unhealthy_with_reason_while_the_source_is_unreachable(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    unused_port: Callable[[], int],
) -> None:
    """/readyz is about serving HTTP (review UI, metrics): a stream outage must not take the pod out of its
    Service.  /healthz/pipeline and the mediamoderation_ready gauge say why nothing is scanned."""
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    port = unused_port()
    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank, source={"eventstreams": {
        "url": f"http://127.0.0.1:{port}/v2/stream/mediawiki.recentchange",
        "reconnect": {"initial_delay": 0.05, "max_delay": 0.1}}})
    run = await start(cfg)
    try:
        async with aiohttp.ClientSession() as http:
            await until(lambda: run.service.source.status().last_error, 10, what="the first connection attempt")
            async with http.get(run.base + "/readyz") as r:
                ready = await r.json()
                assert r.status == 200, ready
            assert ready == {"ready": True, "reasons": {}}
            async with http.get(run.base + "/healthz/pipeline") as r:
                body = await r.json()
                assert r.status == 503
            assert body["healthy"] is False and set(body["reasons"]) == {"source"}
            reason = body["reasons"]["source"]
            assert reason.startswith("source eventstreams not connected: "), reason
            assert f"connection to 127.0.0.1:{port} refused" in reason, reason
            assert "HTTPConnectionPool" not in reason and "Max retries" not in reason, reason
            async with http.get(run.base + "/healthz") as r:
                assert r.status == 200  # alive
            async with http.get(run.base + "/metrics") as r:
                text = await r.text()
            assert 'mediamoderation_ready{check="source"} 0.0' in text  # what the NotReady alert watches
            assert 'mediamoderation_ready{check="store"} 1.0' in text
            assert 'mediamoderation_ready{check="banks"} 1.0' in text
            # Standard collectors and the build info; no *_created series.
            assert "\nprocess_resident_memory_bytes " in text and "\nprocess_open_fds " in text
            assert "\npython_info{" in text and "\npython_gc_collections_total{" in text
            assert f'mediamoderation_build_info{{version="{build_version()}"}} 1.0' in text
            assert "_created" not in text
    finally:
        await run.stop()


@pytest.mark.wiki
async def test_notification_survives_smtp_outage_and_restart(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
) -> None:
    known = images.photo(7301)
    media = prepare(images.jpeg_bytes(known), "0" * 40, ThumbnailSection())
    assert media.pdq is not None
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{media.pdq.hex},,test,k-7301\n")
    smtp_server.stop()  # Trust & Safety's mail server is down
    await upload_and_publish(mediawiki, sse_server, f"Outage {uuid.uuid4().hex[:8]}.jpg",
                             images.variants(known)["recompressed"])
    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank)
    run = await start(cfg)
    await run.finished(1)
    pending = await run.service.stores.outbox.list_actions("pending")
    assert len(pending) == 1 and pending[0].kind == "notify"
    await run.stop()  # restart while the notification is still unsent

    smtp_server.start()
    run2: Running = await start(cfg)
    try:
        mails = await smtp_server.wait_for_async(1, 30)
        assert len(mails) == 1
        async def sent() -> OutboxItem | None:  # the dispatcher marks it done right after the SMTP reply
            got = await run2.service.stores.outbox.get_action(pending[0].id)
            return got if got is not None and got.state == "done" else None

        item = await until(sent, 10, what="the notification marked done")
        assert item is not None and item.attempts == 2 and item.result == "sent"
        assert len(smtp_server.messages) == 1
    finally:
        await run2.stop()


def test_scan_command_prints_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    known = images.photo(9001)  # banks/example.csv holds this generated image's hashes
    (tmp_path / "variant.jpg").write_bytes(images.variants(known)["resized"])
    (tmp_path / "other.jpg").write_bytes(images.jpeg_bytes(images.photo(4242)))
    (tmp_path / "broken.jpg").write_bytes(images.truncated_jpeg())
    code = main(["scan", "-c", str(REPO / "config.yaml"), str(tmp_path / "variant.jpg"),
                 str(tmp_path / "other.jpg")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["outcome"] for line in lines] == ["match", "clean"]
    assert lines[0]["matches"][0]["bank"] == "example" and lines[0]["matches"][0]["matcher"] == "pdq"
    assert len(lines[1]["sha1"]) == 40 and len(lines[1]["pdq"]) == 64
    assert code == 1  # a match
    code = main(["scan", "-c", str(REPO / "config.yaml"), str(tmp_path / "broken.jpg")])
    assert json.loads(capsys.readouterr().out)["outcome"].startswith("unscannable:")
    assert code == 3


# ---------------------------------------------------------------------------------------------- supervision


class HeldSource(SourceBase):
    """A source that stays connected, sends nothing, and (like a slow upstream) ends only when released."""

    name = "held"
    connected = True

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        await self.release.wait()

    async def commit(self, position: Any) -> None:
        pass


async def start_service(service: Service) -> Running:
    task = asyncio.create_task(service.run())
    started = asyncio.ensure_future(service.started.wait())
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()
    return Running(service, task)


def restarts(service: Service, task: str) -> float | None:
    return service.metrics.registry.get_sample_value("mediamoderation_task_restarts_total", {"task": task})


@pytest.mark.wiki
async def test_a_dying_email_dispatcher_is_logged_counted_restarted_and_mail_still_goes_out(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.runtime.supervisor")
    known = images.photo(7321)
    media = prepare(images.jpeg_bytes(known), "0" * 40, ThumbnailSection())
    assert media.pdq is not None
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{media.pdq.hex},,test,k-7321\n")
    service = Service(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank,
                                  banks={"reload_interval": 3600}))
    real_run = service.dispatcher.run
    calls = 0
    restarted = asyncio.Event()

    async def dies_once(stop: asyncio.Event) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("dispatcher bug")
        restarted.set()
        await real_run(stop)

    service.dispatcher.run = dies_once  # type: ignore[method-assign]
    run = await start_service(service)
    try:
        await asyncio.wait_for(restarted.wait(), 30)
        # A match found after the death is still emailed, by the restarted dispatcher.
        await upload_and_publish(mediawiki, sse_server, f"After death {uuid.uuid4().hex[:8]}.jpg",
                                 images.variants(known)["recompressed"])
        await run.finished(1)
        mails = await smtp_server.wait_for_async(1, 30)
        assert len(mails) == 1 and "child-protection" in str(mails[0].message["Subject"])
        assert restarts(service, "outbox") == 1
        async with aiohttp.ClientSession() as http, http.get(run.base + "/metrics") as r:
            assert 'mediamoderation_task_restarts_total{task="outbox"} 1.0' in await r.text()
        died = [r for r in caplog.records if r.getMessage().startswith("task outbox died")]
        assert len(died) == 1 and died[0].exc_info is not None  # with its traceback
        assert str(died[0].exc_info[1]) == "dispatcher bug"
        names = service.supervisor.names
    finally:
        await run.stop()
    assert names == ["outbox", "takedown-outbox", "bank-watch", "maintenance", "review-backlog", "case-stats",
                     "file-hashes", "retro", "stop-forward", "commit", "pipeline"]
    stopped = [r.__dict__["task"] for r in caplog.records if r.getMessage() == "task stopped"]
    assert stopped == list(reversed(names))  # shutdown in reverse start order


class OneEventSource(HeldSource):
    """Sends one event (one that is skipped), then waits to be released; its first checkpoint write crashes
    (a bug, not a store outage: the committer task dies), the others are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.committed: list[Any] = []
        self.written = asyncio.Condition()

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        await out.put(RawEvent(data=b"{}", position="after-1", label="#1"))
        await self.release.wait()

    async def commit(self, position: Any) -> None:
        self.writes += 1
        if self.writes == 1:
            raise RuntimeError("checkpoint bug")
        async with self.written:
            self.committed.append(position)
            self.written.notify_all()


@pytest.mark.wiki
async def test_the_pipeline_committer_runs_under_the_supervisor_and_a_restarted_one_still_writes(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
) -> None:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    source = OneEventSource()
    service = Service(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank), source=source,
                      restart=RestartPolicy(initial_delay=0.01, max_delay=0.05))
    run = await start_service(service)
    try:
        # The only event is finished once; the first write kills the committer, its restart writes it.
        async with source.written:
            await asyncio.wait_for(source.written.wait_for(lambda: "after-1" in source.committed), 30)
        assert source.committed == ["after-1"] and source.writes == 2
        assert restarts(service, "commit") == 1 and service.supervisor.failure is None
        assert "commit" in service.supervisor.names
    finally:
        source.release.set()
        await run.stop()


@pytest.mark.wiki
async def test_a_task_that_keeps_failing_stops_the_service_with_the_cause(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
) -> None:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    source = HeldSource()
    service = Service(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank), source=source,
                      restart=RestartPolicy(initial_delay=0.01, max_delay=0.05, max_restarts=2))
    runs = 0

    async def always_fails(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        raise OSError(f"takedown dispatcher broken (run {runs})")

    service.takedowns.run = always_fails  # type: ignore[method-assign]
    run = await start_service(service)
    await asyncio.wait_for(service.stop_event.wait(), 30)  # the supervisor stops the service
    # While the pipeline still drains (the source is slow to stop), /healthz reports the cause.
    async with aiohttp.ClientSession() as http, http.get(run.base + "/healthz") as r:
        body = await r.json()
        assert r.status == 503
    assert body["problems"] == {"tasks": "task takedown-outbox failed 3 times within 600 s: "
                                         "OSError: takedown dispatcher broken (run 3)"}
    source.release.set()
    with pytest.raises(TaskFailed) as info:
        await asyncio.wait_for(run.task, 30)
    assert info.value.task == "takedown-outbox" and isinstance(info.value.__cause__, OSError)
    assert runs == 3 and restarts(service, "takedown-outbox") == 2


@pytest.mark.wiki
async def test_a_task_returning_while_the_service_runs_is_restarted(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
) -> None:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    source = HeldSource()
    service = Service(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank), source=source)
    real = service._maintenance
    calls = 0
    restarted = asyncio.Event()

    async def returns_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            return  # e.g. a loop whose condition was wrong
        restarted.set()
        await real()

    service._maintenance = returns_once  # type: ignore[method-assign]
    run = await start_service(service)
    try:
        await asyncio.wait_for(restarted.wait(), 30)
        assert restarts(service, "maintenance") == 1 and service.supervisor.failure is None
    finally:
        source.release.set()
        await run.stop()


@pytest.mark.wiki
async def test_a_pipeline_crash_stops_the_service_through_the_supervisor(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
) -> None:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")

    class BrokenSource(HeldSource):
        async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
            raise PermanentSourceError("stream gone for good")

    service = Service(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank), source=BrokenSource())
    with pytest.raises(TaskFailed, match="task pipeline failed: PermanentSourceError: stream gone for good") as info:
        await asyncio.wait_for(service.run(), 60)
    assert isinstance(info.value.__cause__, PermanentSourceError)
    assert service.crashed == str(info.value)  # what /healthz reported until the end
    assert restarts(service, "pipeline") == 0  # never restarted
