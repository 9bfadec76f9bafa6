"""The pipeline with in-memory parts: routing, outcomes, backpressure, deadline, watermark."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from service.config import Config, WikiSection, config_from_dict
from service.errors import FileGone, TransientFetchError, Unscannable
from service.events import sha1_to_base36
from service.metrics import Metrics
from service.models import FetchedMedia, FileInfo, Match, PreparedMedia, RawEvent, UploadEvent
from service.pipeline import Pipeline
from service.sources.base import SourceBase
from service.store import Stores
from service.store.base import NewAction
from tests.test_events import REAL

SHA_CLEAN = "1" * 40
SHA_PDQ = "2" * 40
SHA_EXACT = "3" * 40
SHA_GONE = "4" * 40
SHA_BROKEN = "5" * 40
SHA_FAIL = "6" * 40
SHA_HANG = "7" * 40

HIT = Match(matcher="pdq", bank="b", category="child-protection", hash_id="p1", hash_value="f" * 64, distance=4)
EXACT_HIT = Match(matcher="sha1", bank="b", category="terrorism", hash_id="s1", hash_value=SHA_EXACT)


def make_event(n: int, sha1: str | None, **changes: Any) -> str:
    obj = copy.deepcopy(REAL)
    obj["meta"]["id"] = f"event-{n}"
    obj["title"] = f"File:Test {n}.jpg"
    obj["wiki"] = "testwiki"
    obj["log_params"] = {"img_sha1": sha1_to_base36(sha1), "img_timestamp": "20261125000000"} if sha1 else []
    obj.update(changes)
    return json.dumps(obj)


class FakeFetcher:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self.hold: set[str] = set()

    async def fetch(self, wiki: WikiSection, title: str, *, expected_sha1: str | None = None) -> FetchedMedia:
        self.calls.append(title)
        sha1 = expected_sha1 or SHA_CLEAN
        if sha1 == SHA_HANG:
            await asyncio.Event().wait()
        if title in self.hold:
            await self.release.wait()
        if sha1 == SHA_GONE:
            raise FileGone(title)
        if sha1 == SHA_FAIL:
            raise TransientFetchError("HTTP 503", reason="http-503")
        info = FileInfo(title=title, url="u", description_url="d", sha1=sha1, size=3, width=10, height=10,
                        mime="image/jpeg", mediatype="BITMAP")
        return FetchedMedia(info=info, data=sha1.encode(), data_source="thumbnail")


def fake_prepare(data: bytes, sha1: str, cfg: Any, *, md5: str | None = None,
                 source: str = "thumbnail") -> PreparedMedia:
    if sha1 == SHA_BROKEN:
        raise Unscannable("undecodable", "truncated")
    return PreparedMedia(sha1=sha1, md5=md5, pdq=None, jpeg=None, width=10, height=10, source=source)


class FakeExact:
    version = "v1"

    def match_sha1(self, sha1: str) -> list[Match]:
        return [EXACT_HIT] if sha1 == SHA_EXACT else []


class FakePdq:
    name = "pdq"

    async def match(self, media: PreparedMedia) -> list[Match]:
        return [HIT] if media.sha1 == SHA_PDQ else []


class ListSource(SourceBase):
    name = "list"

    def __init__(self, events: Sequence[str]) -> None:
        self.events = list(events)
        self.committed: list[Any] = []
        self.read = 0
        self.blocked = asyncio.Event()

    @property
    def connected(self) -> bool:
        return True

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        for i, data in enumerate(self.events):
            if out.full():
                self.blocked.set()
            await out.put(RawEvent(data=data, position=i, label=f"#{i}"))
            self.read = i + 1

    async def commit(self, position: Any) -> None:
        assert not self.committed or position > self.committed[-1]
        self.committed.append(position)


def config(tmp_path: Path, **pipeline: Any) -> Config:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    return config_from_dict(
        {
            "service": {"user_agent": "mm-test/0 (ts@example.org)", "shutdown_grace": 5},
            "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:1/api.php"}],
            "pipeline": {"queue_size": 4, "concurrency": {"fetch": 2, "thumbnail": 1, "match": 1, "act": 1},
                         **pipeline},
            "banks": {"list": [{"name": "b", "path": str(bank), "category": "child-protection"}]},
            "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
            "store": {"path": str(tmp_path / "db.sqlite3")},
        },
        base=tmp_path,
    )


def planner(event: UploadEvent, sha1: str, matches: Sequence[Match]) -> list[NewAction]:
    return [NewAction(key=f"notify:{event.wiki}:{event.title}:{sha1}", kind="notify", payload={"t": event.title})]


def build(cfg: Config, source: ListSource, stores: Stores, fetcher: FakeFetcher,
          metrics: Metrics) -> tuple[Pipeline, list[str]]:
    kicked: list[str] = []
    p = Pipeline(cfg, source=source, store=stores.pipeline, fetcher=fetcher, exact=FakeExact(), matchers=[FakePdq()],
                 planners=[planner], cpu=None, prepare=fake_prepare, metrics=metrics,
                 on_actions=lambda items: kicked.extend(i.key for i in items))
    return p, kicked


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_every_event_gets_one_outcome(tmp_path: Path, stores: Stores) -> None:
    canary = copy.deepcopy(REAL)
    canary["meta"]["domain"] = "canary"
    events = [
        make_event(0, SHA_CLEAN),
        make_event(1, SHA_PDQ),
        make_event(2, SHA_EXACT),
        make_event(3, SHA_GONE),
        make_event(4, SHA_BROKEN),
        make_event(5, SHA_FAIL),
        json.dumps(canary),
        make_event(7, SHA_CLEAN, type="edit"),
        "{broken json",
        make_event(0, SHA_CLEAN),  # duplicate event id
        make_event(10, SHA_CLEAN, wiki="otherwiki"),
        make_event(11, None),
    ]
    metrics = Metrics()
    source = ListSource(events)
    fetcher = FakeFetcher()
    p, kicked = build(config(tmp_path), source, stores, fetcher, metrics)
    await asyncio.wait_for(p.run(), 10)

    outcomes = {f"event-{n}": await stores.ledger.event_outcome(f"event-{n}") for n in (0, 1, 2, 3, 4, 5, 11)}
    assert outcomes == {
        "event-0": "clean", "event-1": "match", "event-2": "match", "event-3": "gone",
        "event-4": "unscannable:undecodable", "event-5": "error:http-503", "event-11": "clean",
    }
    assert "File:Test 2.jpg" not in fetcher.calls  # exact SHA-1 matched before any download
    assert sorted(kicked) == [f"notify:testwiki:File:Test {n}.jpg:{s}" for n, s in ((1, SHA_PDQ), (2, SHA_EXACT))]
    assert source.committed[-1] == len(events) - 1
    assert sample(metrics, "mediamoderation_events_skipped_total", reason="canary") == 1
    assert sample(metrics, "mediamoderation_events_skipped_total", reason="not-upload") == 1
    assert sample(metrics, "mediamoderation_events_skipped_total", reason="malformed") == 1
    assert sample(metrics, "mediamoderation_events_skipped_total", reason="duplicate") == 1
    assert sample(metrics, "mediamoderation_events_skipped_total", reason="wiki-not-configured") == 1
    assert sample(metrics, "mediamoderation_outcomes_total", outcome="match") == 2
    assert sample(metrics, "mediamoderation_outcomes_total", outcome="error") == 1
    assert sample(metrics, "mediamoderation_matches_total", category="terrorism", matcher="sha1") == 1


async def test_cached_sha1_is_not_fetched_again(tmp_path: Path, stores: Stores) -> None:
    metrics = Metrics()
    fetcher = FakeFetcher()
    p, _ = build(config(tmp_path), ListSource([make_event(0, SHA_PDQ)]), stores, fetcher, metrics)
    await p.run()
    # Same content uploaded under another title: reported again, without a download.
    p2, kicked2 = build(config(tmp_path), ListSource([make_event(1, SHA_PDQ)]), stores, fetcher, metrics)
    await p2.run()
    assert fetcher.calls == ["File:Test 0.jpg"]
    assert kicked2 == [f"notify:testwiki:File:Test 1.jpg:{SHA_PDQ}"]
    assert sample(metrics, "mediamoderation_scan_cache_hits_total") == 1


async def test_backpressure_bounds_what_is_read(tmp_path: Path, stores: Stores) -> None:
    fetcher = FakeFetcher()
    fetcher.release.clear()
    events = [make_event(i, SHA_CLEAN) for i in range(200)]
    fetcher.hold = {f"File:Test {i}.jpg" for i in range(200)}
    source = ListSource(events)
    p, _ = build(config(tmp_path), source, stores, fetcher, Metrics())
    task = asyncio.create_task(p.run())
    await asyncio.wait_for(source.blocked.wait(), 5)
    # ingest queue (4) + intake (1) + fetch queue (4) + fetch workers (2): nothing else is read.
    assert source.read <= 4 + 1 + 4 + 2
    assert source.committed == []
    fetcher.release.set()
    await asyncio.wait_for(task, 10)
    assert source.read == 200 and source.committed[-1] == 199


async def test_checkpoint_waits_for_the_slowest_event(tmp_path: Path, stores: Stores) -> None:
    fetcher = FakeFetcher()
    fetcher.release.clear()
    fetcher.hold = {"File:Test 0.jpg"}
    source = ListSource([make_event(i, SHA_CLEAN) for i in range(6)])
    p, _ = build(config(tmp_path), source, stores, fetcher, Metrics())
    task = asyncio.create_task(p.run())
    await asyncio.wait_for(p.wait_idle(count=5), 5)  # events 1..5 done, event 0 held
    await p.committer.commit()
    assert source.committed == []  # nothing may pass event 0
    fetcher.release.set()
    await asyncio.wait_for(task, 10)
    assert source.committed[-1] == 5


async def test_deadline_ends_a_stuck_event(tmp_path: Path, stores: Stores) -> None:
    source = ListSource([make_event(0, SHA_HANG), make_event(1, SHA_CLEAN)])
    p, _ = build(config(tmp_path, event_deadline=0.3), source, stores, FakeFetcher(), Metrics())
    await asyncio.wait_for(p.run(), 10)
    assert await stores.ledger.event_outcome("event-0") == "error:deadline"
    assert await stores.ledger.event_outcome("event-1") == "clean"
    assert source.committed[-1] == 1


async def test_failed_event_is_retried_when_seen_again(tmp_path: Path, stores: Stores) -> None:
    fetcher = FakeFetcher()
    p, _ = build(config(tmp_path), ListSource([make_event(0, SHA_FAIL)]), stores, fetcher, Metrics())
    await p.run()
    p2, _ = build(config(tmp_path), ListSource([make_event(0, SHA_FAIL)]), stores, fetcher, Metrics())
    await p2.run()
    assert fetcher.calls == ["File:Test 0.jpg", "File:Test 0.jpg"]


async def test_a_new_or_changed_vpdq_bank_makes_scanned_files_be_scanned_again(tmp_path: Path,
                                                                               stores: Stores) -> None:
    """vPDQ banks are part of the scan version: a clean result stored before a vPDQ bank was added (or changed)
    is not reused, the file is fetched and decoded again; with the same banks it is reused."""
    from service.config.media import VideoSection, VpdqBankSection
    from service.matchers.vpdq import VpdqMatcher

    header = "id,category,source,frame_number,quality,pdq,timestamp\n"
    bank = tmp_path / "v.csv"
    bank.write_text(header + f"clip,,t,0,100,{'ab' * 32},0.000\n")
    vpdq = VpdqMatcher(VideoSection(vpdq_banks=(VpdqBankSection(name="v", path=str(bank), category="c"),)),
                       Metrics())
    metrics = Metrics()
    fetcher = FakeFetcher()

    async def scan(n: int, matchers: list[Any]) -> Pipeline:
        p = Pipeline(config(tmp_path), source=ListSource([make_event(n, SHA_CLEAN)]), store=stores.pipeline,
                     fetcher=fetcher, exact=FakeExact(), matchers=matchers, planners=[planner], cpu=None,
                     prepare=fake_prepare, metrics=metrics)
        await p.run()
        assert await stores.ledger.event_outcome(f"event-{n}") == "clean"
        return p

    first = await scan(0, [FakePdq()])
    assert first.scan_version == "v1"  # without vPDQ banks: as stored by earlier releases
    second = await scan(1, [FakePdq(), vpdq])  # a vPDQ bank was added: looked at again
    assert second.scan_version == f"v1+vpdq:{vpdq.version}"
    await scan(2, [FakePdq(), vpdq])  # same banks: the stored result is reused
    assert fetcher.calls == ["File:Test 0.jpg", "File:Test 1.jpg"]

    before = vpdq.version
    bank.write_text(header + f"other,,t,0,100,{'cd' * 32},0.000\n")
    assert vpdq.reload_if_changed()
    assert vpdq.version != before
    await scan(3, [FakePdq(), vpdq])  # the bank changed: looked at again
    assert fetcher.calls[-1] == "File:Test 3.jpg"
    bank.write_text(header + "broken,,t,0,100,not-hex,0.000\n")  # refused: the loaded content and version stay
    after = vpdq.version
    assert not vpdq.reload_if_changed()
    assert vpdq.version == after
    assert sample(metrics, "mediamoderation_scan_cache_hits_total") == 1


async def test_a_crash_while_recording_an_outcome_stops_the_pipeline_with_its_cause(
    tmp_path: Path, stores: Stores,
) -> None:
    """Stage workers hand an ended upload's recording off; a bug there is still never swallowed."""

    def broken(_: Any) -> None:
        raise RuntimeError("bug after the outcome was stored")

    events = [make_event(n, SHA_CLEAN) for n in range(3)]
    p = Pipeline(config(tmp_path), source=ListSource(events), store=stores.pipeline, fetcher=FakeFetcher(),
                 exact=FakeExact(), matchers=[FakePdq()], planners=[planner], cpu=None, prepare=fake_prepare,
                 metrics=Metrics(), on_scanned=broken)
    with pytest.raises(RuntimeError, match="bug after the outcome was stored"):
        await asyncio.wait_for(p.run(), 10)
    assert not p._recording  # nothing left running behind
