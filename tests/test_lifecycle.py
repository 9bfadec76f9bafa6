"""The real command: `mediamoderation run` as a process (default CPU pool: processes), SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.helpers import until
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer

pytestmark = pytest.mark.wiki
REPO = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, wiki: MediaWikiServer, sse: EventStreamsServer, smtp: SmtpServer,
                 port: int, **pipeline: Any) -> Path:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    cfg = {
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 20},
        "http": {"host": "127.0.0.1", "port": port},
        "source": {"eventstreams": {"url": sse.stream_url(), "since": "2000-01-01T00:00:00Z",
                                    "reconnect": {"initial_delay": 0.05, "max_delay": 0.5}}},
        "wikis": [{"id": wiki.wiki_id, "api_url": wiki.api_url}],
        "pipeline": {"cpu_workers": 2, **pipeline},
        "banks": {"list": [{"name": "empty", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"],
                               "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none"}}},
        "store": {"path": str(tmp_path / "store.sqlite3")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def spawn(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(config.parent),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def outcomes(port: int) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("mediamoderation_outcomes_total{"))


async def wait_outcomes(proc: asyncio.subprocess.Process, port: int, count: int, timeout: float = 60) -> None:
    async def reached() -> bool:  # polling another process's /metrics
        if proc.returncode is not None:
            raise AssertionError(f"service exited early with {proc.returncode}")
        try:
            return await outcomes(port) >= count
        except aiohttp.ClientError:
            return False  # not listening yet

    await until(reached, timeout, interval=0.1, what=f"{count} outcomes")


async def test_sigterm_drains_persists_checkpoint_and_exits_0(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    unused_port: Callable[[], int],
) -> None:
    run_id = uuid.uuid4().hex[:8]
    for n in range(4):
        name = f"Lifecycle {run_id} {n}.jpg"
        await asyncio.to_thread(mediawiki.upload, name, images.jpeg_bytes(images.photo(8100 + n)))
        sse_server.publish(await asyncio.to_thread(mediawiki.recentchange_event, name))
    port = unused_port()
    config = write_config(tmp_path, mediawiki, sse_server, smtp_server, port)
    proc = await spawn(config)
    try:
        await wait_outcomes(proc, port, 4)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "service stopped" for entry in logs)
    assert sum(entry.get("outcome") == "clean" for entry in logs) == 4  # one JSON line per outcome
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        (checkpoint,) = db.execute("SELECT value FROM checkpoints WHERE name = 'eventstreams'").fetchone()
    assert json.loads(json.loads(checkpoint)) == sse_server.connections[-1].ids[-1]


async def test_second_signal_exits_at_once(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    unused_port: Callable[[], int],
) -> None:
    # A wiki whose API accepts connections and never answers keeps one event in flight, so the first
    # signal starts a drain that cannot finish; the second must end the process at once.
    held: list[asyncio.StreamWriter] = []
    connected = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    name = f"Hang {uuid.uuid4().hex[:8]}.jpg"
    await asyncio.to_thread(mediawiki.upload, name, images.jpeg_bytes(images.photo(8200)))
    sse_server.publish(await asyncio.to_thread(mediawiki.recentchange_event, name))
    port = unused_port()
    config = write_config(tmp_path, mediawiki, sse_server, smtp_server, port)
    data = yaml.safe_load(config.read_text())
    data["wikis"][0]["api_url"] = f"http://127.0.0.1:{silent_port}/api.php"
    config.write_text(yaml.safe_dump(data))
    proc = await spawn(config)
    try:
        await asyncio.wait_for(connected.wait(), 30)  # the event reached the fetch stage
        assert proc.stderr is not None
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            while b"stopping" not in await proc.stderr.readline():
                pass
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
        silent.close()
        for w in held:
            w.close()
    assert proc.returncode == 128 + signal.SIGINT


async def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("service: {user_agent: x}\npipeline: {concurrency: {fetch: -1}}\n")
    proc = await spawn(bad)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"pipeline.concurrency.fetch: must be >= 1" in err


async def test_a_dead_pipeline_exits_non_zero_with_the_cause_logged(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    unused_port: Callable[[], int],
) -> None:
    # The stream answers HTTP 400 (no such stream): the source fails for good and the pipeline dies.
    config = write_config(tmp_path, mediawiki, sse_server, smtp_server, unused_port())
    data = yaml.safe_load(config.read_text())
    data["source"]["eventstreams"]["url"] = sse_server.stream_url("no.such.stream")
    config.write_text(yaml.safe_dump(data))
    proc = await spawn(config)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 4, err.decode()[-2000:]  # EXIT_UPSTREAM: stopped on an error (1 means a match)
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    died = [e for e in logs if e["msg"].startswith("task pipeline died: ")]
    assert len(died) == 1 and "SourceError" in died[0]["msg"], [e["msg"] for e in logs]
    assert "Traceback" in died[0]["exc"] and "HTTP 400" in died[0]["exc"]  # the cause, with its traceback
    stopped = [e for e in logs if e["msg"] == "service stopped on an error"]
    assert len(stopped) == 1 and stopped[0]["error"].startswith("task pipeline failed: ")
    assert "HTTP 400" in stopped[0]["error"] and stopped[0]["type"] == "TaskFailed"
    assert any(e["msg"] == "service stopped" for e in logs)  # stopped in order, not torn down
    assert "error: task pipeline failed: " in err.decode()
