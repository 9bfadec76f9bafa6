"""The review backlog gauge ``mediamoderation_review_pending{category}``: counted from the review store by a
supervised task, refreshed when the queue changes, right after a restart, 0 once a category is done."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from service.app import Service
from service.config import config_from_dict
from service.errors import ServiceError
from service.metrics import Metrics
from service.models import Match, UploadEvent
from service.runtime.backlog import ReviewBacklog
from service.store import memory_stores
from service.store.base import Decision
from tests.helpers import until
from tests.test_e2e import metric
from tests.test_service import HeldSource, start_service

CP = Match(matcher="sha1", bank="cp", category="child-protection", hash_id="1", hash_value="a" * 40)
TERROR = Match(matcher="pdq", bank="tv", category="terrorism", hash_id="2", hash_value="f" * 64, distance=4)


def upload(n: int, sha1: str) -> UploadEvent:
    return UploadEvent(event_id=f"ev-{n}", wiki="testwiki", title=f"File:F{n}.jpg", server_url="https://w.example",
                       page_url=f"https://w.example/wiki/File:F{n}.jpg", uploader="U",
                       upload_time=datetime(2026, 1, 1, tzinfo=UTC), log_action="upload", sha1=sha1)


def pending(metrics: Metrics, category: str) -> float | None:
    return metrics.registry.get_sample_value("mediamoderation_review_pending", {"category": category})


async def test_the_gauge_counts_open_cases_per_category_and_drops_to_zero() -> None:
    stores, metrics = memory_stores(), Metrics()
    backlog = ReviewBacklog(stores.review, metrics)
    await stores.pipeline.record_matches(upload(1, "a" * 40), "a" * 40, [CP, TERROR], [])
    await stores.pipeline.record_matches(upload(2, "b" * 40), "b" * 40, [CP], [])
    assert await backlog.refresh() == {"child-protection": 2, "terrorism": 1}
    assert (pending(metrics, "child-protection"), pending(metrics, "terrorism")) == (2, 1)
    await stores.review.record_decision(Decision(sha1="a" * 40, state="confirmed", reviewer="r", action="confirm"))
    await backlog.refresh()
    assert (pending(metrics, "child-protection"), pending(metrics, "terrorism")) == (1, 0)  # not stale at 1


async def test_a_store_outage_keeps_the_last_values_and_the_task_goes_on() -> None:
    stores, metrics = memory_stores(), Metrics()
    await stores.pipeline.record_matches(upload(1, "a" * 40), "a" * 40, [CP], [])

    class Flaky:
        calls = 0

        async def pending_by_category(self) -> dict[str, int]:
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise ServiceError("store down")
            return await stores.review.pending_by_category()

    backlog = ReviewBacklog(Flaky(), metrics, interval=0.05, min_gap=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(backlog.run(stop))
    await until(lambda: Flaky.calls >= 3, 5, what="three rounds, one of them failing")
    assert pending(metrics, "child-protection") == 1 and not task.done()
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_the_running_service_exports_the_backlog_and_updates_it_on_a_decision(tmp_path: Path) -> None:
    cfg = config_from_dict({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)", "shutdown_grace": 5},
        "http": {"host": "127.0.0.1", "port": 0},
        "wikis": [{"id": "testwiki", "api_url": "https://w.example/w/api.php"}],
        "pipeline": {"cpu_pool": "thread"},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        "store": {"path": str(tmp_path / "store.sqlite3")},
    }, base=tmp_path)
    source = HeldSource()
    service = Service(cfg, source=source)
    run = await start_service(service)
    try:
        assert "review-backlog" in service.supervisor.names
        await service.stores.pipeline.record_matches(upload(1, "a" * 40), "a" * 40, [CP, TERROR], [])
        service.backlog.kick()  # what a new match or a decision does

        async def scraped(category: str, want: float) -> bool:
            async with aiohttp.ClientSession() as http, http.get(run.base + "/metrics") as r:
                text = await r.text()
            return f'mediamoderation_review_pending{{category="{category}"}}' in text and \
                metric(text, "mediamoderation_review_pending", category=category) == want

        await until(lambda: scraped("terrorism", 1.0), 10, what="the backlog after a match")
        assert await scraped("child-protection", 1.0)
        await service.stores.review.record_decision(Decision(sha1="a" * 40, state="dismissed", reviewer="r",
                                                             action="dismiss"))
        service.backlog.kick()
        await until(lambda: scraped("child-protection", 0.0), 10, what="the backlog after a decision")
    finally:
        source.release.set()
        await run.stop()

