"""Backfill throughput with one and with three workers, and Kafka source throughput on the exact SHA-1 path.

    python bench/bench_backfill.py [--files 3000] [--events 20000] [--skip-backfill] [--skip-kafka]

Backfill: a fresh local MediaWiki (Debian 1.39 under ``php -S``) holding N generated 200x160 JPEGs,
a Tansu broker, PostgreSQL.  ``mediamoderation backfill --role ingest`` lists them (allimages, batches
of 500) onto a 6-partition work topic; 1 or 3 ``mediamoderation run --role worker`` processes scan them
(imageinfo batches, download, decode, PDQ, match, PostgreSQL).  files/s = N / (time from the ingest's
start until every file has an outcome in the store); worker start-up and the group join are included,
as they are in a real run.

Kafka source: M recentchange events on a 4-partition topic, consumed by one service process
(role all, SQLite store) whose events need no download: (a) every SHA-1 is in the exact bank
(notifications off), (b) every SHA-1 was already scanned clean against the current banks.
events/s = M / (time from the first to the last finished event).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.app import Service
from service.config import config_from_dict
from service.events import sha1_to_base36
from service.store import sqlite_stores
from service.store.base import ScanRecord
from tests.infra.kafka import GROUP_TIMING, TansuBroker
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.postgres import TestDatabase
from tests.infra.wikifiles import add_files, utc

UA = "mediamoderation-bench/0.1 (ts@example.org)"
ROOT = Path(__file__).resolve().parent.parent


def count_done(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            row = conn.execute("SELECT COUNT(*) FROM events WHERE event_id LIKE 'backfill:%'").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0]) if row else 0


def backfill_run(server: MediaWikiServer, files: int, workers: int, broker: TansuBroker, tmp: Path) -> float:
    run_id = uuid.uuid4().hex[:8]
    with TestDatabase() as db:
        cfg = {
            "service": {"user_agent": UA, "shutdown_grace": 10, "log_level": "warning"},
            "http": {"enabled": False},
            "source": {"kafka": {"connection": {"bootstrap_servers": [broker.bootstrap], **GROUP_TIMING}}},
            "work": {"topic": f"work-{run_id}", "group_id": f"workers-{run_id}", "partitions": 6},
            "wikis": [{"id": server.wiki_id, "api_url": server.api_url}],
            "pipeline": {"cpu_pool": "thread", "cpu_workers": 1},
            "banks": {"reload_interval": 0},
            "actions": {"notify": {"enabled": False}},
            "store": {"url": db.url},
        }
        path = tmp / f"bench-{run_id}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        logs = [(tmp / f"{run_id}-{i}.log").open("wb") for i in range(workers + 1)]
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-m", "service", "run", "--role", "worker", "-c", str(path)],
                                  cwd=ROOT, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(workers)]
        ingest = ["backfill", "--wiki", server.wiki_id, "--role", "ingest", "-c", str(path)]
        procs.append(subprocess.Popen([sys.executable, "-m", "service", *ingest], cwd=ROOT, stdout=logs[-1],
                                      stderr=subprocess.STDOUT))
        try:
            while count_done(db.url) < files:
                if any(p.poll() not in (None, 0) for p in procs):
                    raise RuntimeError(f"a process failed; logs in {tmp}")
                if time.monotonic() - started > 900:
                    raise RuntimeError("backfill did not finish in 15 minutes")
                time.sleep(0.2)
            elapsed = time.monotonic() - started
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            for f in logs:
                f.close()
        return elapsed


def recentchange(n: int, wiki: str, sha1: str) -> dict[str, Any]:
    return {"meta": {"id": f"bench-{n}", "uri": f"https://w.example/wiki/File:B{n}.jpg", "domain": "w.example",
                     "dt": "2024-01-01T00:00:00Z"},
            "type": "log", "namespace": 6, "title": f"File:B{n}.jpg", "timestamp": 1704067200, "user": "U",
            "log_type": "upload", "log_action": "upload", "server_url": "https://w.example", "wiki": wiki,
            "log_params": {"img_sha1": sha1_to_base36(sha1), "img_timestamp": "20240101000000"}}


async def kafka_run(broker: TansuBroker, events: int, mode: str, tmp: Path) -> float:
    run_id = uuid.uuid4().hex[:8]
    topic = f"rc-{run_id}"
    broker.create_topic(topic, 4)
    sha1s = [hashlib.sha1(f"{run_id}-{i}".encode()).hexdigest() for i in range(events)]
    bank = tmp / f"bank-{run_id}.csv"
    rows = "".join(f"{s},terrorism,bench,{i}\n" for i, s in enumerate(sha1s)) if mode == "exact" else \
        "0" * 40 + ",terrorism,bench,none\n"
    bank.write_text("hash,category,source,id\n" + rows)
    producer = broker.producer()
    for i, s in enumerate(sha1s):
        producer.send(topic, json.dumps(recentchange(i, "benchwiki", s)).encode(), partition=i % 4)
    producer.flush()
    producer.close()
    cfg = config_from_dict({
        "service": {"user_agent": UA, "shutdown_grace": 10, "log_level": "warning"},
        "http": {"enabled": False},
        "source": {"type": "kafka", "kafka": {
            "connection": {"bootstrap_servers": [broker.bootstrap], **GROUP_TIMING},
            "topics": [topic], "group_id": f"bench-{run_id}", "auto_offset_reset": "earliest"}},
        "wikis": [{"id": "benchwiki", "api_url": "https://w.example/w/api.php"}],
        "pipeline": {"cpu_pool": "thread", "queue_size": 256},
        "banks": {"reload_interval": 0, "list": [{"name": "b", "path": str(bank), "category": "terrorism"}]},
        "actions": {"notify": {"enabled": False}},
        "store": {"path": str(tmp / f"store-{run_id}.sqlite3")},
    }, base=tmp)
    if mode == "cached":
        from service.matchers.banks import BankSet
        from service.metrics import Metrics

        version = BankSet(cfg.banks, Metrics()).version
        stores = sqlite_stores(cfg.store.path)
        await stores.open()
        for s in sha1s:
            await stores.scans.put_scan(ScanRecord(sha1=s, outcome="clean", bank_version=version, scanned_at=0.0))
        await stores.close()
    service = Service(cfg)
    task = asyncio.create_task(service.run())
    await service.started.wait()
    assert service.pipeline is not None
    await service.pipeline.wait_idle(1)
    first = time.monotonic()
    await service.pipeline.wait_idle(events)
    elapsed = time.monotonic() - first
    service.stop()
    await task
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--skip-backfill", action="store_true")
    parser.add_argument("--skip-kafka", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    with TansuBroker() as broker:
        if not args.skip_backfill:
            server = MediaWikiServer(workers=6)
            server.start()
            try:
                add_files(server, args.files, prefix="Bench", start=utc(2013), seed=7)
                for workers in (1, 3):
                    elapsed = backfill_run(server, args.files, workers, broker, tmp)
                    print(f"backfill, {workers} worker(s): {args.files} files in {elapsed:.1f} s = "
                          f"{args.files / elapsed:.0f} files/s", flush=True)
            finally:
                server.stop()
        if not args.skip_kafka:
            for mode in ("exact", "cached"):
                rate = asyncio.run(kafka_run(broker, args.events, mode, tmp))
                print(f"kafka source, {args.events} events, no download ({mode} SHA-1): {rate:.0f} events/s",
                      flush=True)


if __name__ == "__main__":
    main()
