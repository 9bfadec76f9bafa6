"""Under 30 % injected transient failures (5xx, 429 with and without Retry-After, malformed JSON, 3004)
every upload still gets a PhotoDNA verdict (in the pipeline, or from the rescanner's retries), and the
stand-in never sees more requests in a second than the configured rate."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.config import BackoffSection, CircuitSection, PhotoDnaSection, RescanSection, Secret, WikiSection
from service.matchers.photodna import build_matcher
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.models import FetchedMedia, FileInfo
from service.pipeline import Pipeline
from service.rescan import Rescanner
from service.store import sqlite_stores
from service.store.base import REMOTE_CLEAN, REMOTE_FAILED, REMOTE_MATCH
from tests.infra import images
from tests.infra.photodna_server import Faults, PhotoDnaServer
from tests.test_pipeline import FakeExact, ListSource, config, make_event, planner

KEY = "faults-key"
RATE = 20
EVENTS = 40
KNOWN = range(0, EVENTS, 8)  # 5 of them match


def sha(n: int) -> str:
    return f"{0xabc000 + n:040x}"


class ImageFetcher:
    async def fetch(self, wiki: WikiSection, title: str, *, expected_sha1: str | None = None) -> FetchedMedia:
        n = int(title.split()[1].split(".")[0])
        info = FileInfo(title=title, url="u", description_url="d", sha1=expected_sha1 or sha(n), size=1, width=320,
                        height=240, mime="image/jpeg", mediatype="BITMAP")
        return FetchedMedia(info=info, data=images.jpeg_bytes(images.photo(9000 + n, (320, 240))),
                            data_source="thumbnail")


@pytest.fixture
def server(photodna_server: Callable[..., PhotoDnaServer]) -> PhotoDnaServer:
    faults = Faults(p_5xx=0.10, p_429=0.04, p_429_retry_after=0.04, retry_after=0.2, p_malformed=0.06, p_3004=0.06)
    assert faults.total == pytest.approx(0.30)
    s = photodna_server(keys=[KEY], rate_limit=RATE, faults=faults, seed=3)
    for n in KNOWN:
        s.add_known(images.jpeg_bytes(images.photo(9000 + n, (640, 480))), match_id=f"known-{n}")
    return s


async def test_every_upload_is_scanned_under_30_percent_failures_within_the_rate(
    tmp_path: Path, server: PhotoDnaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAULTS_KEY", KEY)
    stores = sqlite_stores(str(tmp_path / "db.sqlite3"))
    await stores.open()
    cfg = config(tmp_path, event_deadline=60, queue_size=16)
    cfg = dataclasses.replace(cfg, pipeline=dataclasses.replace(
        cfg.pipeline, concurrency=dataclasses.replace(cfg.pipeline.concurrency, thumbnail=2, remote=8)))
    pdna = PhotoDnaSection(
        enabled=True, url=server.url, key=Secret(env="FAULTS_KEY"), rate=RATE, retries=4, timeout=2,
        backoff=BackoffSection(initial_delay=0.05, max_delay=0.4),
        circuit=CircuitSection(failures=1000, open_seconds=1, max_open_seconds=1),
    )
    metrics = Metrics()
    matcher = build_matcher(pdna, user_agent="mm-test/0 (ts@example.org)", store=stores.budget, metrics=metrics)
    await matcher.client.start()
    kicked: list[str] = []
    cpu = ThreadPoolExecutor(2)
    try:
        pipeline = Pipeline(
            cfg, source=ListSource([make_event(n, sha(n)) for n in range(EVENTS)]), store=stores.pipeline,
            fetcher=ImageFetcher(), exact=FakeExact(), matchers=[], planners=[planner], cpu=cpu, prepare=prepare,
            metrics=metrics, on_actions=lambda items: kicked.extend(i.key for i in items),
            thumbnail_cfg=dataclasses.replace(cfg.thumbnail, make_jpeg=True), remote_matchers=[matcher],
            remote_retry_delays=(60.0,),
        )
        await asyncio.wait_for(pipeline.run(), 60)
        outcomes = [await stores.ledger.event_outcome(f"event-{n}") for n in range(EVENTS)]
        assert all(o in ("clean", "match", "error:photodna") for o in outcomes), outcomes

        # Scans that still failed after their retries are asked again by the rescanner ("an hour later").
        rescanner = Rescanner(
            RescanSection(retry_delays=(60.0,)), matcher=matcher, budget=matcher.client.budget, store=stores.rescan,
            fetcher=ImageFetcher(), wikis={"testwiki": cfg.wikis[0]}, prepare=prepare, cpu=cpu,
            thumbnail_cfg=pipeline.thumbnail_cfg, planners=[planner], metrics=metrics,
            scan_version=lambda: pipeline.scan_version, on_actions=lambda items: kicked.extend(i.key for i in items),
            clock=lambda: time.time() + 3600,
        )
        for _ in range(5):
            if not await stores.remote.due_remote_retries("photodna", time.time() + 3600, 1):
                break
            await rescanner.run_once()

        rows = {r.sha1: r.state for r in await stores.remote.list_remote_scans("photodna")}
        assert len(rows) == EVENTS and REMOTE_FAILED not in rows.values()
        assert {s for s, state in rows.items() if state == REMOTE_MATCH} == {sha(n) for n in KNOWN}
        assert sum(state == REMOTE_CLEAN for state in rows.values()) == EVENTS - len(KNOWN)
        assert sorted(kicked) == sorted(f"notify:testwiki:File:Test {n}.jpg:{sha(n)}" for n in KNOWN)
    finally:
        cpu.shutdown()
        await matcher.aclose()
        await stores.close()

    records = server.records
    injected = sum(r.kind not in ("match", "no-match") for r in records)
    assert injected / len(records) >= 0.15, server.stats()  # the failures really happened
    assert all(r.kind != "rate-limited" for r in records), server.stats()  # never over the stand-in's limit
    assert server.max_in_window(1.0) <= RATE, server.stats()
