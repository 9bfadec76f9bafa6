"""Backfill against a real wiki with a thousand generated files: batches, checkpoint, resume, skips, progress."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.progress import Progress as RichProgress

from service.app import Service
from service.config import Config, config_from_dict
from service.metrics import Metrics
from service.progress import EtaColumn
from service.sources.backfill import BackfillProgress, BackfillSource, checkpoint_name
from service.store import MemoryStore, Stores, sqlite_stores
from tests.helpers import until
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.wikifiles import GeneratedFile, add_files, utc
from tests.terminal import REPO, Terminal

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


def offline_source(metrics: Metrics) -> BackfillSource:
    cfg = config_from_dict({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "w", "api_url": "http://127.0.0.1:9/api.php"}],
        "actions": {"notify": {"enabled": False}},
    })
    return BackfillSource(cfg, "w", checkpoints=MemoryStore(), scans=MemoryStore(), metrics=metrics,
                          start=utc(2010), end=utc(2020))


def test_summary_counts_every_listed_file_once() -> None:
    metrics = Metrics()
    source = offline_source(metrics)
    source.listed_before, source.listed, source.skipped = 100, 600, 100  # a resumed run: 500 listed now
    source.cursor_time = "2015-01-01T00:00:00Z"
    metrics.outcomes.labels("clean").inc(300)
    metrics.outcomes.labels("match").inc(2)
    metrics.outcomes.labels("unscannable:too-small").inc(4)
    metrics.outcomes.labels("unscannable:decode").inc(1)
    metrics.outcomes.labels("error").inc(3)
    metrics.events_skipped.labels("duplicate").inc(40)  # uploads an earlier run already handled
    metrics.events_skipped.labels("not-an-upload").inc(5)  # the batch markers: not files
    progress = BackfillProgress(source, metrics)
    c = progress.counts()
    assert c["listed"] == 500 and c["scanned"] == 310
    assert (c["clean"], c["matched"], c["unscannable"], c["errors"]) == (300, 2, 5, 3)
    assert c["unscannable_by_reason"] == {"decode": 1, "too-small": 4}
    assert (c["skipped_already_scanned"], c["skipped_already_handled"]) == (100, 40)
    assert c["unfinished"] == 50
    assert c["listed"] == c["scanned"] + c["skipped_already_scanned"] + c["skipped_already_handled"] + c["unfinished"]
    assert c["scanned"] == c["clean"] + c["matched"] + c["gone"] + c["unscannable"] + c["errors"]
    rows = dict(progress.rows(elapsed=75))
    assert rows["listed"] == 500 and rows["listed in earlier runs"] == 100 and rows["elapsed"] == "00:01:15"
    assert rows["    too-small"] == 4
    sample = progress.sample()
    # done: 100 before + 450 finished now; the range is half listed (2015 of 2010-2020): about 1100 in all
    assert sample.completed == 550 and sample.total is not None and 1000 < sample.total < 1200


def test_eta_is_shown_only_once_a_rate_is_known() -> None:
    clock = [0.0]
    bar = RichProgress(get_time=lambda: clock[0])
    task_id = bar.add_task("backfill", total=100, completed=40)  # resumed: 40 done before this run
    column = EtaColumn()
    task = bar.tasks[0]
    assert column.render(task).plain == "ETA --:--:--"
    clock[0] = 1.0
    bar.update(task_id, completed=50)
    assert column.render(task).plain == "ETA --:--:--"  # one sample: no rate yet, whatever was done before
    clock[0] = 2.0
    bar.update(task_id, completed=60)
    assert column.render(task).plain == "ETA 00:00:04"  # 10 files/s, 40 left


def yaml_config(tmp_path: Path, server: MediaWikiServer, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 10},
        "http": {"host": "127.0.0.1", "port": 0},
        "wikis": [{"id": server.wiki_id, "api_url": server.api_url}],
        "pipeline": {"cpu_pool": "thread", "event_deadline": 60, "queue_size": 32},
        "fetch": {"retry_delay": 0.1},
        "banks": {"reload_interval": 0, "list": []},
        "actions": {"notify": {"enabled": False}},
        "store": {"path": str(tmp_path / "store.sqlite3")},
        "backfill": {"batch_size": BATCH, "progress_interval": 1},
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def backfill_args(config: Path, server: MediaWikiServer, first: GeneratedFile, last: GeneratedFile) -> list[str]:
    return ["backfill", "-c", str(config), "--wiki", server.wiki_id, "--start", first.uploaded.isoformat(),
            "--end", last.uploaded.isoformat()]


def test_backfill_on_a_terminal_draws_a_bar_logs_above_it_and_ends_with_a_summary_that_adds_up(
    tmp_path: Path, wiki: tuple[MediaWikiServer, list[GeneratedFile]],
) -> None:
    server, files = wiki
    window = files[300:450]
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{window[10].sha1},,test,k-1\n{window[20].sha1},,test,k-2\n")
    config = yaml_config(tmp_path, server, banks={
        "reload_interval": 0, "list": [{"name": "t", "path": str(bank), "category": "child-protection"}]})
    term = Terminal(backfill_args(config, server, window[0], window[-1]), tmp_path)
    assert term.finish(240) == 0, term.plain()[-3000:]
    text = term.text
    head, sep, summary = text.partition(f"backfill {server.wiki_id} summary (complete)")
    assert sep and f"backfill {server.wiki_id} summary" not in summary  # once
    assert "ETA" in head and "files/s" in head  # the bar was drawn ...
    assert "ETA" not in summary  # ... and removed at the end: no last progress line printed twice
    # Every outcome was logged (console format, through the bar's console) and none shares a line with the bar.
    pieces = term.pieces()
    assert sum(1 for p in pieces if "outcome  event_id=" in p) == len(window)
    assert not [p for p in pieces if "ETA" in p and ("outcome" in p or "INFO" in p or "WARNING" in p)]
    table = term.plain().partition("summary (complete)")[2].splitlines()
    rows = dict(tuple(part.strip() for part in line.rsplit(None, 1)) for line in table if len(line.split()) >= 2)
    assert rows["listed"] == "150" and rows["scanned"] == "150" and rows["matched"] == "2"
    assert rows["clean"] == "148" and rows["unfinished"] == "0"

    # The same files in a wider range (a new checkpoint), logs to a pipe: JSON lines and a JSON summary.
    wider = subprocess.run([sys.executable, "-m", "service", *backfill_args(config, server, window[0], files[459])],
                           cwd=tmp_path, capture_output=True, text=True, timeout=240,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert wider.returncode == 0, wider.stderr[-3000:]
    records = [json.loads(line) for line in wider.stderr.splitlines()]
    s = next(r for r in records if r["msg"].startswith(f"backfill {server.wiki_id} summary"))
    # 148 found clean before are not sent; the 2 matches were handled before (not reported again); 10 are new.
    assert (s["listed"], s["skipped_already_scanned"], s["skipped_already_handled"]) == (160, 148, 2)
    assert (s["scanned"], s["clean"], s["matched"], s["unfinished"], s["complete"]) == (10, 10, 0, 0, True)
    assert s["listed"] == s["scanned"] + s["skipped_already_scanned"] + s["skipped_already_handled"]


def test_run_and_backfill_side_by_side_with_one_config(
    tmp_path: Path, wiki: tuple[MediaWikiServer, list[GeneratedFile]], unused_port: Callable[[], int],
) -> None:
    server, files = wiki
    port = unused_port()
    config = yaml_config(tmp_path, server, http={"host": "127.0.0.1", "port": port}, source={
        "eventstreams": {"url": f"http://127.0.0.1:{unused_port()}/v2/stream/mediawiki.recentchange",
                         "reconnect": {"initial_delay": 0.05, "max_delay": 1}}})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    service = subprocess.Popen([sys.executable, "-m", "service", "run", "-c", str(config)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert "http server listening" in wait_for_line(service, "http server listening", 60)
        backfill = subprocess.run([sys.executable, "-m", "service",
                                   *backfill_args(config, server, files[600], files[619])],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert backfill.returncode == 0, backfill.stderr[-3000:]
        assert "already in use" not in backfill.stderr
        summary = next(json.loads(line) for line in backfill.stderr.splitlines() if "summary" in line)
        assert summary["listed"] == 20 and summary["scanned"] == 20
        assert service.poll() is None  # the service is still up, still serving its port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert b"mediamoderation_events_received_total" in response.read()
    finally:
        service.terminate()
        assert service.wait(60) == 0


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float) -> str:
    """Read the process's stderr (all of it, so that the pipe never fills) until a line contains ``text``."""
    assert proc.stderr is not None
    found: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if text in line and not found:
                found.append(line)
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    assert seen.wait(timeout), f"no line with {text!r} within {timeout} s"
    return found[0]
