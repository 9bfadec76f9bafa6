"""Horizontal scale with real parts: a backfill ingest process publishes 3,000 generated files of a real
wiki to a partitioned work topic on a Kafka-protocol broker; three worker processes (one consumer group,
one PostgreSQL store) scan them; one worker is killed with SIGKILL mid-run and the other two finish
with nothing lost, every file scanned and every match emailed exactly once.

Size: 3,000 files (six anonymous ``list=allimages`` batches of 500), "a few thousand" as asked.  On this
2-core machine the three workers, the wiki's PHP server, PostgreSQL and the broker share two cores and
the whole test takes about 30 s (including the 6 s session timeout before the killed worker's
partitions move); twice the files would double the scanning part without testing anything more.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.helpers import until
from tests.infra.kafka import GROUP_TIMING, TansuBroker
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.postgres import TestDatabase
from tests.infra.smtp import SmtpServer
from tests.infra.wikifiles import GeneratedFile, add_files, utc

pytestmark = pytest.mark.wiki

COUNT = 3000
MATCHES = 20  # files whose SHA-1 is in the exact bank: one email each


@pytest.fixture(scope="module")
def wiki() -> Iterator[tuple[MediaWikiServer, list[GeneratedFile]]]:
    server = MediaWikiServer(workers=6)
    server.start()
    try:
        yield server, add_files(server, COUNT, prefix="Scale", start=utc(2014), seed=50_000)
    finally:
        server.stop()


def write_config(tmp_path: Path, server: MediaWikiServer, broker: TansuBroker, db: TestDatabase, smtp: SmtpServer,
                 bank: Path, run_id: str) -> Path:
    data: dict[str, Any] = {
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 10,
                    "log_level": "warning"},
        "http": {"enabled": False},
        "source": {"kafka": {"connection": {"bootstrap_servers": [broker.bootstrap], **GROUP_TIMING},
                             "commit_interval": 0.5}},
        "work": {"topic": f"work-{run_id}", "group_id": f"workers-{run_id}", "partitions": 6},
        "wikis": [{"id": server.wiki_id, "api_url": server.api_url}],
        "pipeline": {"cpu_pool": "thread", "cpu_workers": 1, "event_deadline": 60},
        "fetch": {"retry_delay": 0.1},
        "banks": {"reload_interval": 0, "list": [{"name": "exact", "path": str(bank), "category": "terrorism"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"],
                               "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none"},
                               "retry": {"initial_delay": 0.1, "max_delay": 0.5}}},
        "store": {"url": db.url, "outbox_lease": 5},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "service", *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)


def count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
        except psycopg.errors.UndefinedTable:  # the first worker has not created the schema yet
            return 0
        return int(row[0]) if row else 0


async def until_scanned(check: Callable[[], bool], what: str, timeout: float, procs: list[subprocess.Popen[bytes]],
                        logs: Path) -> None:
    """Poll the database (written by other processes) until ``check`` holds; a crashed worker fails at once."""

    def holds() -> bool:
        for p in procs:
            if p.poll() not in (None, 0, -signal.SIGKILL):
                raise AssertionError(f"a process exited with {p.returncode}:\n{_tail(logs)}")
        return check()

    try:
        await until(holds, timeout, in_thread=True, interval=0.2, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{_tail(logs)}") from None


def _tail(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(logs.glob("*.log")))


async def test_three_workers_scan_a_backfill_and_survive_a_sigkill(
    tmp_path: Path, wiki: tuple[MediaWikiServer, list[GeneratedFile]], pg_database: TestDatabase,
    smtp_server: SmtpServer,
) -> None:
    server, files = wiki
    run_id = uuid.uuid4().hex[:8]
    matched = files[7::COUNT // MATCHES][:MATCHES]
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n" + "".join(f"{f.sha1},,test,{i}\n" for i, f in enumerate(matched)))
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    with TansuBroker() as broker:
        cfg = write_config(tmp_path, server, broker, pg_database, smtp_server, bank, run_id)
        try:
            workers = [spawn(["run", "--role", "worker", "-c", str(cfg)], logs / f"worker{i}.log") for i in range(3)]
            procs += workers
            ingest = spawn(["backfill", "--wiki", server.wiki_id, "--role", "ingest", "-c", str(cfg)],
                           logs / "ingest.log")
            procs.append(ingest)
            done_sql = "SELECT COUNT(*) FROM events WHERE event_id LIKE 'backfill:%' AND outcome IN ('clean', 'match')"
            await until_scanned(lambda: count(pg_database.url, done_sql) >= COUNT // 3, "a third scanned", 120, procs,
                                logs)
            workers[0].send_signal(signal.SIGKILL)  # mid-run: its unfinished, uncommitted events must not be lost
            started = time.monotonic()
            await until_scanned(lambda: count(pg_database.url, done_sql) >= COUNT, "every file scanned", 120, procs,
                                logs)
            recovered = time.monotonic() - started
            assert await asyncio.to_thread(ingest.wait, 30) == 0, _tail(logs)
            sent_sql = "SELECT COUNT(*) FROM outbox WHERE state = 'done'"
            await until_scanned(lambda: count(pg_database.url, sent_sql) >= MATCHES, "notifications sent", 60, procs,
                                logs)
            for w in workers[1:]:
                w.send_signal(signal.SIGTERM)
            for w in workers[1:]:
                assert await asyncio.to_thread(w.wait, 30) == 0, _tail(logs)
        finally:
            for p in procs:
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(10)

    with psycopg.connect(pg_database.url) as conn:
        scanned = {r[0] for r in conn.execute("SELECT sha1 FROM scans WHERE outcome IN ('clean', 'match')")}
    assert {f.sha1 for f in files} <= scanned  # (the wiki also holds the generator's template file)
    assert count(pg_database.url, "SELECT COUNT(*) FROM scans WHERE outcome = 'match'") == MATCHES
    assert count(pg_database.url, "SELECT COUNT(*) FROM outbox") == MATCHES
    assert count(pg_database.url, "SELECT COUNT(*) FROM outbox WHERE state <> 'done'") == 0
    mails = smtp_server.messages
    subjects = [str(m.message["Subject"]) for m in mails]
    assert len(mails) == MATCHES, subjects
    assert len({str(m.message["Message-ID"]) for m in mails}) == MATCHES
    for f in matched:
        assert sum(f.title.removeprefix("File:") in s for s in subjects) == 1, f.title
    print(f"\n{COUNT} files, 3 workers, one killed: the survivors finished {recovered:.1f} s after the kill")
