"""The pipeline's remote stage with in-memory parts: when remote matchers run, that local matches never
wait for them, and the per-SHA-1 remote state each outcome leaves for the rescanner."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from service.errors import Unscannable
from service.matchers.photodna import PhotoDnaError, PhotoDnaUnauthorized
from service.metrics import Metrics
from service.models import Match, PreparedMedia
from service.pipeline import Pipeline
from service.store import Stores
from service.store.base import REMOTE_CLEAN, REMOTE_FAILED, REMOTE_MATCH, REMOTE_UNSCANNABLE
from tests.test_pipeline import (
    SHA_CLEAN,
    SHA_PDQ,
    FakeExact,
    FakeFetcher,
    FakePdq,
    ListSource,
    config,
    fake_prepare,
    make_event,
    planner,
)

SHA_REMOTE = "a" * 40
SHA_FLAKY = "b" * 40
SHA_ODD = "c" * 40
SHA_REFUSED = "d" * 40
REMOTE_HIT = Match(matcher="photodna", bank="photodna:Test", category="child-protection", hash_id="7469692",
                   hash_value="", distance=12, source="Test; violations A1; TrackingId T1",
                   details={"tracking_id": "T1", "violations": ["A1"]})


class FakeRemote:
    """A remote matcher: matches SHA_REMOTE, fails for SHA_FLAKY, cannot scan SHA_ODD; ``gate`` holds calls."""

    name = "photodna"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def match(self, media: PreparedMedia, *, background: bool = False) -> list[Match]:
        self.calls.append(media.sha1)
        self.entered.set()
        await self.gate.wait()
        if media.sha1 == SHA_FLAKY:
            raise PhotoDnaError("PhotoDNA: http-503 after 5 attempt(s)", reason="photodna")
        if media.sha1 == SHA_REFUSED:
            raise PhotoDnaUnauthorized("HTTP 401: Access denied")
        if media.sha1 == SHA_ODD:
            raise Unscannable("photodna-not-an-image", "3206")
        return [REMOTE_HIT] if media.sha1 in (SHA_REMOTE, SHA_PDQ) else []


def build(tmp_path: Path, stores: Stores, events: list[str], remote: FakeRemote, **kw: Any
          ) -> tuple[Pipeline, list[str], FakeFetcher]:
    kicked: list[str] = []
    fetcher = FakeFetcher()
    p = Pipeline(config(tmp_path), source=ListSource(events), store=stores.pipeline, fetcher=fetcher, exact=FakeExact(),
                 matchers=[FakePdq()], planners=[planner], cpu=None, prepare=fake_prepare, metrics=Metrics(),
                 on_actions=lambda items: kicked.extend(i.key for i in items), remote_matchers=[remote],
                 remote_retry_delays=(60.0, 600.0), **kw)
    return p, kicked, fetcher


async def test_remote_runs_only_without_a_local_match_and_leaves_its_state(tmp_path: Path,
                                                                         stores: Stores) -> None:
    remote = FakeRemote()
    events = [make_event(0, SHA_CLEAN), make_event(1, SHA_PDQ), make_event(2, SHA_REMOTE), make_event(3, SHA_FLAKY),
              make_event(4, SHA_ODD), make_event(5, SHA_REFUSED)]
    p, kicked, _ = build(tmp_path, stores, events, remote)
    await asyncio.wait_for(p.run(), 10)

    assert sorted(remote.calls) == sorted([SHA_CLEAN, SHA_REMOTE, SHA_FLAKY, SHA_ODD, SHA_REFUSED])  # not SHA_PDQ
    outcomes = {n: await stores.ledger.event_outcome(f"event-{n}") for n in range(6)}
    assert outcomes == {0: "clean", 1: "match", 2: "match", 3: "error:photodna",
                        4: "unscannable:photodna-not-an-image", 5: "error:photodna-unauthorized"}
    assert sorted(kicked) == [f"notify:testwiki:File:Test {n}.jpg:{s}" for n, s in ((1, SHA_PDQ), (2, SHA_REMOTE))]

    states = {r.sha1: r for r in await stores.remote.list_remote_scans("photodna")}
    assert {s: r.state for s, r in states.items()} == {
        SHA_CLEAN: REMOTE_CLEAN, SHA_REMOTE: REMOTE_MATCH, SHA_FLAKY: REMOTE_FAILED,
        SHA_ODD: REMOTE_UNSCANNABLE, SHA_REFUSED: REMOTE_FAILED,
    }
    flaky = states[SHA_FLAKY]
    assert flaky.failures == 1 and flaky.next_attempt_at == pytest.approx(flaky.scanned_at + 60)
    assert flaky.upload is not None and flaky.upload.title == "File:Test 3.jpg"  # enough to fetch it again
    assert states[SHA_REFUSED].last_error and "photodna-unauthorized" in states[SHA_REFUSED].last_error
    assert states[SHA_CLEAN].clean_at == states[SHA_CLEAN].scanned_at

    [match] = [m for m in await stores.pipeline.list_matches() if m["matcher"] == "photodna"]
    assert match["hash_id"] == "7469692" and "TrackingId T1" in match["source"]
    scan = await stores.scans.get_scan(SHA_CLEAN)
    assert scan is not None and scan.bank_version == "v1+photodna"

    # A failed scan fails again: the next delay of the schedule applies.
    p2, _, _ = build(tmp_path, stores, [make_event(6, SHA_FLAKY)], remote)
    await asyncio.wait_for(p2.run(), 10)
    again = await stores.remote.get_remote_scan(SHA_FLAKY, "photodna")
    assert again is not None and again.failures == 2
    assert again.next_attempt_at == pytest.approx(again.scanned_at + 600)


async def test_cached_clean_content_is_not_sent_again_but_its_latest_upload_is_kept(tmp_path: Path,
                                                                                     stores: Stores) -> None:
    remote = FakeRemote()
    p, _, _ = build(tmp_path, stores, [make_event(0, SHA_CLEAN)], remote)
    await asyncio.wait_for(p.run(), 10)
    p2, _, fetcher = build(tmp_path, stores, [make_event(1, SHA_CLEAN)], remote)
    await asyncio.wait_for(p2.run(), 10)
    assert remote.calls == [SHA_CLEAN] and fetcher.calls == []
    row = await stores.remote.get_remote_scan(SHA_CLEAN, "photodna")
    assert row is not None and row.upload is not None and row.upload.title == "File:Test 1.jpg"
    assert row.state == REMOTE_CLEAN


async def test_local_matches_are_acted_on_before_the_remote_call(tmp_path: Path, stores: Stores) -> None:
    remote = FakeRemote()
    remote.gate.clear()
    p, kicked, _ = build(tmp_path, stores, [make_event(0, SHA_PDQ)], remote, remote_when_local=True)
    task = asyncio.create_task(p.run())
    await asyncio.wait_for(remote.entered.wait(), 5)
    # PhotoDNA has not answered yet, and the local PDQ match is already recorded and notified.
    assert kicked == [f"notify:testwiki:File:Test 0.jpg:{SHA_PDQ}"]
    assert [m["matcher"] for m in await stores.pipeline.list_matches()] == ["pdq"]
    remote.gate.set()
    await asyncio.wait_for(task, 10)
    assert sorted(m["matcher"] for m in await stores.pipeline.list_matches()) == ["pdq", "photodna"]
    assert kicked == [f"notify:testwiki:File:Test 0.jpg:{SHA_PDQ}"]  # one notification per upload
    assert await stores.ledger.event_outcome("event-0") == "match"
    row = await stores.remote.get_remote_scan(SHA_PDQ, "photodna")
    assert row is not None and row.state == REMOTE_MATCH
    assert p.metrics.registry.get_sample_value("mediamoderation_matches_total",
                                               {"category": "child-protection", "matcher": "pdq"}) == 1


async def test_a_remote_failure_after_a_local_match_keeps_the_match(tmp_path: Path, stores: Stores) -> None:
    class Failing(FakeRemote):
        async def match(self, media: PreparedMedia, *, background: bool = False) -> list[Match]:
            raise PhotoDnaError("down", reason="photodna")

    p, kicked, _ = build(tmp_path, stores, [make_event(0, SHA_PDQ)], Failing(), remote_when_local=True)
    await asyncio.wait_for(p.run(), 10)
    assert await stores.ledger.event_outcome("event-0") == "match"
    assert kicked == [f"notify:testwiki:File:Test 0.jpg:{SHA_PDQ}"]
    row = await stores.remote.get_remote_scan(SHA_PDQ, "photodna")
    assert row is not None and row.state == REMOTE_FAILED  # asked again on the retry schedule


async def test_a_deadline_during_the_remote_call_leaves_a_failed_state(tmp_path: Path, stores: Stores) -> None:
    remote = FakeRemote()
    remote.gate.clear()  # never answers
    kicked: list[str] = []
    p = Pipeline(config(tmp_path, event_deadline=0.3), source=ListSource([make_event(0, SHA_CLEAN)]),
                 store=stores.pipeline,
                 fetcher=FakeFetcher(), exact=FakeExact(), matchers=[FakePdq()], planners=[planner], cpu=None,
                 prepare=fake_prepare, metrics=Metrics(), on_actions=lambda items: kicked.extend(i.key for i in items),
                 remote_matchers=[remote])
    await asyncio.wait_for(p.run(), 10)
    assert await stores.ledger.event_outcome("event-0") == "error:deadline"
    row = await stores.remote.get_remote_scan(SHA_CLEAN, "photodna")
    assert row is not None and row.state == REMOTE_FAILED and row.last_error == "interrupted"
