"""End to end with real parts: MediaWiki (uploads, imageinfo, thumbnails), an EventStreams server,
an SMTP server, the service's own HTTP endpoints, and a restart that resumes from the checkpoint."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.app import Service
from service.config import Config, ThumbnailSection, config_from_dict
from service.media.thumbnail import prepare
from tests.helpers import until
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer

pytestmark = pytest.mark.wiki


def make_config(tmp_path: Path, wiki: MediaWikiServer, sse: EventStreamsServer, smtp: SmtpServer,
                bank: Path, **extra: Any) -> Config:
    data = base_config_data(tmp_path, wiki, smtp, bank)
    data["source"] = {"eventstreams": {"url": sse.stream_url(), "since": "2000-01-01T00:00:00Z",
                                       "reconnect": {"initial_delay": 0.05, "max_delay": 0.5}}}
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data, base=tmp_path)


def base_config_data(tmp_path: Path, wiki: MediaWikiServer, smtp: SmtpServer, bank: Path) -> dict[str, Any]:
    """Everything but the source: the real test wiki, the SMTP server, one bank, a SQLite store."""
    return {
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 10},
        "http": {"host": "127.0.0.1", "port": 0},
        "wikis": [{"id": wiki.wiki_id, "api_url": wiki.api_url}],
        "pipeline": {"cpu_pool": "thread", "event_deadline": 60},
        "fetch": {"retry_delay": 0.1},
        "banks": {"reload_interval": 0, "list": [
            {"name": "cp-test", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {
            "sender": "mediamoderation@example.org", "recipients": ["ts@example.org"],
            "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none"},
            "retry": {"initial_delay": 0.1, "max_delay": 0.5}}},
        "store": {"path": str(tmp_path / "store.sqlite3")},
    }


class Running:
    def __init__(self, service: Service, task: asyncio.Task[None]) -> None:
        self.service = service
        self.task = task

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    async def finished(self, count: int, timeout: float = 90) -> None:
        """Wait until ``count`` events finished; a crash of the service fails at once with its cause."""

        async def idle() -> None:
            await self.service.started.wait()
            assert self.service.pipeline is not None
            await self.service.pipeline.wait_idle(count)

        waiter = asyncio.ensure_future(idle())
        done, _ = await asyncio.wait({waiter, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            waiter.cancel()
            self.task.result()
            raise AssertionError("service stopped before finishing")
        if waiter not in done:
            waiter.cancel()
            raise AssertionError(f"only {self.service.pipeline and self.service.pipeline.finished} of {count} "
                                 "events finished in time")

    async def stop(self) -> None:
        self.service.stop()
        await asyncio.wait_for(self.task, 30)


async def start(cfg: Config) -> Running:
    service = Service(cfg)
    task = asyncio.create_task(service.run())
    done, _ = await asyncio.wait({task, asyncio.ensure_future(service.started.wait())},
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    return Running(service, task)


def metric(text: str, name: str, **labels: str) -> float:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want or (labels and key.startswith(name + "{") and
                           all(f'{k}="{v}"' in key for k, v in labels.items()) and
                           key.count("=") == len(labels)):
            return float(value)
    return 0.0


@pytest.fixture
async def running_list() -> AsyncIterator[list[Running]]:
    runs: list[Running] = []
    yield runs
    for r in runs:
        if not r.task.done():
            await r.stop()


async def upload_and_publish(wiki: MediaWikiServer, sse: EventStreamsServer, name: str, data: bytes) -> dict:
    await asyncio.to_thread(wiki.upload, name, data)
    event = await asyncio.to_thread(wiki.recentchange_event, name)
    sse.publish(event)
    return event


async def test_stream_to_email_with_restart(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running],
) -> None:
    run_id = uuid.uuid4().hex[:8]
    known = images.photo(7001)
    exact_bytes = images.jpeg_bytes(images.photo(7002))
    known_media = prepare(images.jpeg_bytes(known), "0" * 40, ThumbnailSection())
    assert known_media.pdq is not None and known_media.pdq.quality >= 50
    bank = tmp_path / "bank.csv"
    bank.write_text(
        "hash,category,source,id\n"
        f"{known_media.pdq.hex},,test-source,known-7001\n"
        f"{hashlib.sha1(exact_bytes).hexdigest()},terrorism,test-source,exact-7002\n"
    )
    variants = images.variants(known)
    uploads = {
        f"E2E {run_id} known resized.jpg": variants["resized"],
        f"E2E {run_id} known recompressed.jpg": variants["recompressed"],
        f"E2E {run_id} known mirrored.jpg": variants["mirrored"],
        f"E2E {run_id} exact.jpg": exact_bytes,
        f"E2E {run_id} unknown.jpg": images.jpeg_bytes(images.photo(7003)),
        f"E2E {run_id} unknown panorama.jpg": images.panorama(7004),
        f"E2E {run_id} tiny.png": images.tiny_image(7005),
    }
    events = [await upload_and_publish(mediawiki, sse_server, n, d) for n, d in uploads.items()]
    # Noise the service must skip without stopping: malformed, canary, duplicate, another wiki.
    sse_server.publish_raw('{"meta": {"id": "broken"')
    canary = copy.deepcopy(events[0])
    canary["meta"] = {**canary["meta"], "domain": "canary", "id": str(uuid.uuid4())}
    sse_server.publish(canary)
    sse_server.publish(copy.deepcopy(events[-1]))  # same meta.id again
    other = copy.deepcopy(events[0])
    other["wiki"] = "otherwiki"
    other["meta"] = {**other["meta"], "id": str(uuid.uuid4())}
    sse_server.publish(other)
    total = len(events) + 4

    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank)
    run = await start(cfg)
    running_list.append(run)
    await run.finished(total)
    mails = await smtp_server.wait_for_async(4)

    subjects = sorted(str(m.message["Subject"]) for m in mails)
    assert len(mails) == 4, subjects
    assert sum("child-protection" in s for s in subjects) == 3
    assert sum("terrorism" in s for s in subjects) == 1
    for mail in mails:
        body = mail.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        assert mediawiki.base_url in body  # a link to the file page ...
        assert "thumb.php" not in body and "/images/" not in body  # ... never to the media
        assert not list(mail.message.iter_attachments())

    stores = run.service.stores
    outcomes = {e["title"]: await stores.ledger.event_outcome(e["meta"]["id"]) for e in events}
    assert outcomes[f"File:E2E {run_id} unknown.jpg"] == "clean"
    assert outcomes[f"File:E2E {run_id} unknown panorama.jpg"] == "clean"
    assert outcomes[f"File:E2E {run_id} tiny.png"] == "clean"
    assert outcomes[f"File:E2E {run_id} exact.jpg"] == "match"

    async with aiohttp.ClientSession() as http:
        async with http.get(run.base + "/metrics") as r:
            text = await r.text()
        async with http.get(run.base + "/readyz") as r:
            assert r.status == 200, await r.text()
        async with http.get(run.base + "/healthz") as r:
            assert r.status == 200
    assert metric(text, "mediamoderation_matches_total", category="child-protection", matcher="pdq") == 3
    assert metric(text, "mediamoderation_matches_total", category="terrorism", matcher="sha1") == 1
    assert metric(text, "mediamoderation_notifications_total", result="sent") == 4
    assert metric(text, "mediamoderation_events_skipped_total", reason="malformed") == 1
    assert metric(text, "mediamoderation_events_skipped_total", reason="canary") == 1
    assert metric(text, "mediamoderation_events_skipped_total", reason="duplicate") == 1
    assert metric(text, "mediamoderation_events_skipped_total", reason="wiki-not-configured") == 1
    assert metric(text, "mediamoderation_outcomes_total", outcome="clean") == 3
    # The exact SHA-1 match was never downloaded: only the 6 other uploads were fetched (images
    # narrower than 330 px come back as their original: the wiki never upscales).
    fetched = sum(metric(text, "mediamoderation_fetch_requests_total", kind=k, result="ok")
                  for k in ("thumbnail", "original"))
    assert fetched == 6

    await run.stop()
    checkpoint = await _read_checkpoint(cfg)
    # Everything was finished, so the checkpoint is the position of the very last event read.
    assert json.loads(checkpoint) == sse_server.connections[-1].ids[-1]

    # Restart: resumes from the checkpoint, sends nothing twice, handles the new upload.
    connections_before = len(sse_server.connections)
    new = await upload_and_publish(mediawiki, sse_server, f"E2E {run_id} known after restart.jpg",
                                   variants["rotated"])
    run2 = await start(cfg)
    running_list.append(run2)
    await run2.finished(1)
    mails = await smtp_server.wait_for_async(5)
    assert len(mails) == 5
    assert new["title"] in str(mails[-1].message["Subject"])
    resumed = sse_server.connections[connections_before]
    assert resumed.last_event_id is not None and "since" not in resumed.query
    # Only the new upload reached an outcome; events sharing the last millisecond are read again
    # on resume (so none is lost) and dropped as duplicates.
    # (The email may go out before the outcome's write returns: outcomes are written in groups.)
    registry = run2.service.metrics.registry

    def outcomes2() -> float:
        return sum(registry.get_sample_value("mediamoderation_outcomes_total", {"outcome": o}) or 0
                   for o in ("clean", "match", "gone", "error", "unscannable"))

    await until(lambda: outcomes2() >= 1, what="the new upload's outcome")
    assert outcomes2() == 1
    assert await run2.service.stores.ledger.event_outcome(new["meta"]["id"]) == "match"
    await run2.stop()


async def _read_checkpoint(cfg: Config) -> Any:
    from service.store import sqlite_stores

    stores = sqlite_stores(cfg.store.path)
    await stores.open()
    try:
        return await stores.checkpoints.get_checkpoint("eventstreams")
    finally:
        await stores.close()


async def test_hostile_files_end_with_an_outcome_and_the_stream_goes_on(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running],
) -> None:
    run_id = uuid.uuid4().hex[:8]
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    files = {
        f"Hostile {run_id} truncated.jpg": images.truncated_jpeg(),
        f"Hostile {run_id} bomb.png": images.decompression_bomb_png(),
        f"Hostile {run_id} animated.gif": images.animated_gif(),
        f"Hostile {run_id} after.jpg": images.jpeg_bytes(images.photo(7400)),
    }
    events = [await upload_and_publish(mediawiki, sse_server, n, d) for n, d in files.items()]
    deleted = await upload_and_publish(mediawiki, sse_server, f"Hostile {run_id} deleted.jpg",
                                       images.jpeg_bytes(images.photo(7401)))
    await asyncio.to_thread(mediawiki.delete, deleted["title"])
    run = await start(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank))
    running_list.append(run)
    await run.finished(len(events) + 1)
    ledger = run.service.stores.ledger
    got = {e["title"].rsplit(" ", 1)[1]: await ledger.event_outcome(e["meta"]["id"]) for e in [*events, deleted]}
    assert got["animated.gif"] == "clean"
    assert got["after.jpg"] == "clean"  # the stream went on
    assert got["deleted.jpg"] == "gone"
    assert got["bomb.png"] == "unscannable:decompression-bomb"
    assert got["truncated.jpg"] is not None and got["truncated.jpg"] in ("clean", "unscannable:undecodable")
