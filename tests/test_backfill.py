"""Backfill against a real wiki with a thousand generated files: batches, checkpoint, resume, skips, progress."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.app import Service
from service.config import Config, config_from_dict
from service.metrics import Metrics
from service.sources.backfill import BackfillSource, Progress, checkpoint_name
from service.store import MemoryStore, Stores, sqlite_stores
from tests.helpers import until
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.wikifiles import GeneratedFile, add_files, utc

pytestmark = pytest.mark.wiki

COUNT = 1000  # two full anonymous batches of 500 would hide the resume; the tests ask for 100 per batch
BATCH = 100


@pytest.fixture(scope="module")
def wiki() -> Iterator[tuple[MediaWikiServer, list[GeneratedFile]]]:
    server = MediaWikiServer()
    server.start()
    try:
        files = add_files(server, COUNT, prefix="Backfill", start=utc(2012), seed=1)
        yield server, files
    finally:
        server.stop()


def make_config(tmp_path: Path, server: MediaWikiServer, **backfill: Any) -> Config:
    return config_from_dict({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 10},
        "http": {"enabled": False},
        "wikis": [{"id": server.wiki_id, "api_url": server.api_url}],
        "pipeline": {"cpu_pool": "thread", "event_deadline": 60, "queue_size": 32},
        "fetch": {"retry_delay": 0.1},
        "banks": {"reload_interval": 0},
        "actions": {"notify": {"enabled": False}},
        "store": {"path": str(tmp_path / "store.sqlite3")},
        "backfill": {"batch_size": BATCH, **backfill},
    }, base=tmp_path)


class Backfill:
    """A backfill run through the real service (role all); ``requests`` records every allimages call."""

    def __init__(self, cfg: Config, wiki_id: str, **kwargs: Any) -> None:
        self.requests: list[dict[str, str]] = []
        self.source: BackfillSource | None = None
        holder = self

        def make(c: Config, stores: Stores, m: Metrics) -> BackfillSource:
            # As `mediamoderation backfill` does: skip what the running pipeline's banks found clean.
            src = BackfillSource(c, wiki_id, checkpoints=stores.checkpoints, scans=stores.scans, metrics=m,
                                 scan_version=holder.scan_version, **kwargs)
            query = src.client.query

            async def recorded(params: dict[str, str], *, what: str) -> dict[str, Any]:
                if what == "allimages":
                    holder.requests.append(dict(params))
                return await query(params, what=what)

            src.client.query = recorded  # type: ignore[method-assign]
            holder.source = src
            return src

        self.service = Service(cfg, make_source=make)
        self.task: asyncio.Task[None] | None = None

    def scan_version(self) -> str | None:
        return self.service.pipeline.scan_version if self.service.pipeline is not None else None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.service.run())
        await self.service.started.wait()

    async def finished(self, timeout: float = 120) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout)


async def outcomes(cfg: Config) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(cfg.store.path)) as conn:
        return dict(conn.execute("SELECT title, outcome FROM events").fetchall())


async def checkpoint(cfg: Config, name: str) -> Any:
    stores = sqlite_stores(cfg.store.path)
    await stores.open()
    try:
        return await stores.checkpoints.get_checkpoint(name)
    finally:
        await stores.close()


async def test_interrupted_backfill_resumes_from_its_checkpoint_without_relisting(
    tmp_path: Path, wiki: tuple[MediaWikiServer, list[GeneratedFile]],
) -> None:
    server, files = wiki
    cfg = make_config(tmp_path, server)
    start, end = utc(2011), utc(2013)
    name = checkpoint_name(cfg, server.wiki_id, start, end)

    first = Backfill(cfg, server.wiki_id, start=start, end=end)
    await first.start()
    # Interrupt once at least three batches are finished and checkpointed.
    async def three_batches() -> bool:
        return ((await checkpoint(cfg, name)) or {}).get("listed", 0) >= 3 * BATCH

    await until(three_batches, 60, what="three batches checkpointed")
    first.service.stop()
    await first.finished()
    saved = await checkpoint(cfg, name)
    assert saved["aicontinue"] and not saved.get("done")
    assert first.requests[0].get("aicontinue") is None and first.requests[0]["ailimit"] == str(BATCH)
    assert first.requests[0]["aisort"] == "timestamp"
    assert first.source is not None and first.source.client.maxlag == 5  # sent with every request

    second = Backfill(cfg, server.wiki_id, start=start, end=end)
    await second.start()
    await second.finished()
    # The second run starts at the stored continuation and lists only what was left.
    assert second.requests[0]["aicontinue"] == saved["aicontinue"]
    assert second.source is not None and second.source.finished
    assert second.source.listed - saved["listed"] == COUNT - saved["listed"]
    assert len(first.requests) + len(second.requests) <= COUNT // BATCH + 2
    done = await outcomes(cfg)
    expected = {f.title for f in files}
    assert expected <= set(done) and all(done[t] == "clean" for t in expected)
    assert (await checkpoint(cfg, name))["done"] is True

    # Run again: the range is complete; nothing is listed.
    third = Backfill(cfg, server.wiki_id, start=start, end=end)
    await third.start()
    await third.finished()
    assert third.requests == []


async def test_files_already_scanned_clean_are_not_sent_again(
    tmp_path: Path, wiki: tuple[MediaWikiServer, list[GeneratedFile]],
) -> None:
    server, files = wiki
    cfg = make_config(tmp_path, server)
    window = files[:250]
    start, end = window[0].uploaded, window[-1].uploaded
    first = Backfill(cfg, server.wiki_id, start=start, end=end)
    await first.start()
    await first.finished()
    fetched = first.service.metrics.registry.get_sample_value(
        "mediamoderation_fetch_requests_total", {"kind": "original", "result": "ok"})
    assert fetched == len(window)

    # A wider range (a new checkpoint) lists them again but sends only the new ones.
    second = Backfill(cfg, server.wiki_id, start=start, end=files[299].uploaded)
    await second.start()
    await second.finished()
    assert second.source is not None
    assert second.source.listed == 300 and second.source.skipped == len(window)
    registry = second.service.metrics.registry
    assert registry.get_sample_value("mediamoderation_backfill_files_total",
                                     {"wiki": server.wiki_id, "state": "skipped"}) == len(window)
    assert registry.get_sample_value("mediamoderation_fetch_requests_total",
                                     {"kind": "original", "result": "ok"}) == 50


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_live_line_on_a_terminal_and_log_lines_otherwise(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config_from_dict({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "w", "api_url": "http://127.0.0.1:9/api.php"}],
        "actions": {"notify": {"enabled": False}},
    })
    metrics = Metrics()
    source = BackfillSource(cfg, "w", checkpoints=MemoryStore(), scans=MemoryStore(), metrics=metrics,
                            start=utc(2010), end=utc(2020))
    source.listed, source.skipped, source.cursor_time = 400, 100, "2015-01-01T00:00:00Z"
    metrics.outcomes.labels("clean").inc(200)
    metrics.matches.labels("child-protection", "sha1").inc(2)
    clock = [0.0]
    tty = FakeTty()
    progress = Progress(source, metrics, interval=30, stream=tty, clock=lambda: clock[0])
    progress.listed_at_start = 0
    clock[0] = 10.0
    progress.emit()
    text = tty.getvalue()
    assert text.startswith("\r\x1b[2Kbackfill w: listed 400  scanned 300  matched 2  skipped 100  30.0 files/s")
    assert "ETA 00:00:" in text  # ~800 files in the range at 30/s: about half a minute left
    plain = Progress(source, metrics, interval=30, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="service.sources.backfill"):
        plain.emit()
    record = next(r for r in caplog.records if r.getMessage() == "backfill progress")
    assert record.listed == 400 and record.scanned == 300 and record.matched == 2  # type: ignore[attr-defined]
