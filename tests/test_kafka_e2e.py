"""End to end on Kafka: uploads on the real test wiki, their recentchange events produced to a real
Kafka-protocol broker, the service consuming them as a consumer group, then replays of the same window."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from service.app import Service
from service.config import Config, ThumbnailSection, config_from_dict
from service.media.thumbnail import prepare
from service.sources.replay import ReplayRequest, RescanAdmission, replay_source
from service.store import sqlite_stores
from tests.helpers import until
from tests.infra import images
from tests.infra.kafka import GROUP_TIMING, TansuBroker
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.test_e2e import Running, base_config_data, metric

pytestmark = pytest.mark.wiki


def config_data(tmp_path: Path, wiki: MediaWikiServer, broker: TansuBroker, smtp: SmtpServer, bank: Path,
                topics: list[str], group: str) -> dict[str, Any]:
    data = base_config_data(tmp_path, wiki, smtp, bank)
    data["source"] = {"type": "kafka", "kafka": {
        "connection": {"bootstrap_servers": [broker.bootstrap], **GROUP_TIMING},
        "topics": topics, "group_id": group, "auto_offset_reset": "earliest",
        "commit_interval": 0.2, "lag_interval": 0.5}}
    return data


async def start(service: Service) -> Running:
    task = asyncio.create_task(service.run())
    started = asyncio.ensure_future(service.started.wait())
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()
    return Running(service, task)


def fetched(service: Service) -> float:
    r = service.metrics.registry
    return sum(r.get_sample_value("mediamoderation_fetch_requests_total", {"kind": k, "result": "ok"}) or 0
               for k in ("thumbnail", "original"))


async def test_kafka_events_from_real_uploads_then_replays_send_nothing_new(
    tmp_path: Path, mediawiki: MediaWikiServer, broker: TansuBroker, smtp_server: SmtpServer,
) -> None:
    run_id = uuid.uuid4().hex[:8]
    eqiad, codfw = f"eqiad.rc-{run_id}", f"codfw.rc-{run_id}"
    broker.create_topic(eqiad, 2)
    broker.create_topic(codfw, 1)
    known = images.photo(8101)
    exact_bytes = images.jpeg_bytes(images.photo(8102))
    known_media = prepare(images.jpeg_bytes(known), "0" * 40, ThumbnailSection())
    assert known_media.pdq is not None
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n"
                    f"{known_media.pdq.hex},,test-source,known-8101\n"
                    f"{hashlib.sha1(exact_bytes).hexdigest()},terrorism,test-source,exact-8102\n")
    variants = images.variants(known)
    uploads = {
        f"K {run_id} known resized.jpg": variants["resized"],
        f"K {run_id} known mirrored.jpg": variants["mirrored"],
        f"K {run_id} exact.jpg": exact_bytes,
        f"K {run_id} unknown.jpg": images.jpeg_bytes(images.photo(8103)),
        f"K {run_id} unknown 2.jpg": images.jpeg_bytes(images.photo(8104)),
    }
    window_start = datetime.now(UTC)
    await asyncio.sleep(0.01)  # waits out the clock: log-append times of the produced events are after window_start
    events = []
    for i, (name, data) in enumerate(uploads.items()):
        await asyncio.to_thread(mediawiki.upload, name, data)
        event = await asyncio.to_thread(mediawiki.recentchange_event, name)
        events.append(event)
        # Spread over both data centres' topics and partitions, as production does.
        topic, partition = (eqiad, i % 2) if i < 4 else (codfw, 0)
        broker.produce(topic, [event], partition=partition)
    duplicate = copy.deepcopy(events[0])  # the same event seen through the other data centre
    broker.produce(codfw, [duplicate], partition=0)
    canary = copy.deepcopy(events[1])
    canary["meta"] = {**canary["meta"], "domain": "canary", "id": str(uuid.uuid4())}
    broker.produce(eqiad, [canary], partition=0)
    total = len(events) + 2

    group = f"mm-{run_id}"
    data = config_data(tmp_path, mediawiki, broker, smtp_server, bank, [eqiad, codfw], group)
    cfg = config_from_dict(data, base=tmp_path)
    run = await start(Service(cfg))
    try:
        await run.finished(total)
        mails = await smtp_server.wait_for_async(3)
        assert len(mails) == 3
        subjects = sorted(str(m.message["Subject"]) for m in mails)
        assert sum("child-protection" in s for s in subjects) == 2 and sum("terrorism" in s for s in subjects) == 1
        assert fetched(run.service) == 4  # the exact SHA-1 match was never downloaded
        text = await _get(run, "/metrics")
        assert metric(text, "mediamoderation_events_skipped_total", reason="duplicate") == 1
        assert metric(text, "mediamoderation_events_skipped_total", reason="canary") == 1

        def all_committed() -> bool:
            return (broker.committed(group, eqiad, 2) == {0: 3, 1: 2}
                    and broker.committed(group, codfw, 1) == {0: 2})

        await until(all_committed, 20, in_thread=True, what="every offset committed")
        pipeline = json.loads(await _get(run, "/healthz/pipeline"))
        parts = pipeline["details"]["source"]["partitions"]
        assert set(parts) == {f"{eqiad}:0", f"{eqiad}:1", f"{codfw}:0"}
        await until(lambda: metric_value(run, "mediamoderation_kafka_consumer_lag", topic=eqiad, partition="0") == 0,
                    20, what="lag 0")
    finally:
        await run.stop()

    # Replay of the same window through the command line: a finite run under its own group that
    # fetches nothing (every event was handled) and emails nothing.
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    replay = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "service", "replay", "-c", str(cfg_path),
                         "--since", window_start.isoformat()],
        capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert broker.committed(group, eqiad, 2) == {0: 3, 1: 2}  # the live group never moved
    assert broker.committed(f"{group}-replay", eqiad, 2) == {0: 3, 1: 2}
    assert await _outcome_count(cfg) == len(events)

    # --rescan fetches and matches again, and still sends nothing twice.
    stores = sqlite_stores(cfg.store.path)
    stores = dataclasses.replace(stores, pipeline=RescanAdmission(stores.pipeline))
    req = ReplayRequest(since=window_start, rescan=True, name="rescan")
    rescan = await start(Service(cfg, stores=stores,
                                 make_source=lambda c, s, m: replay_source(c, s.checkpoints, m, req)))
    await asyncio.wait_for(rescan.task, 90)  # ends by itself at the log end
    assert rescan.service.pipeline is not None and rescan.service.pipeline.finished == total
    assert fetched(rescan.service) == 4
    # The run has ended, and a service drains its outbox before it returns: nothing more is coming.
    assert len(smtp_server.messages) == 3


def metric_value(run: Running, name: str, **labels: str) -> float | None:
    return run.service.metrics.registry.get_sample_value(name, labels)


async def _get(run: Running, path: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(run.base + path) as r:
        return await r.text()


async def _outcome_count(cfg: Config) -> int:
    with contextlib.closing(sqlite3.connect(cfg.store.path)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
