"""A failure in one event's handling ends that event with a recorded outcome, never the pipeline.

Failures are injected where the pipeline has no stage handler around them: at intake (the exact-bank
lookup, the store's admission) and while recording the outcome.  Each used to end the intake task or
a stage worker and so the whole pipeline; now the event ends ``error:internal`` (logged with its id
and traceback, counted), the next events are scanned and the checkpoint passes all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from service.metrics import Metrics
from service.models import Match, UploadEvent
from service.pipeline import Pipeline
from service.store import Database, Stores
from service.store.base import RemoteScan, ScanRecord
from service.store.pipeline import SqlPipeline
from tests.test_pipeline import (
    SHA_CLEAN,
    SHA_EXACT,
    FakeExact,
    FakeFetcher,
    FakePdq,
    ListSource,
    config,
    fake_prepare,
    make_event,
    planner,
    sample,
)

SHA_POISON = "8" * 40


class PoisonExact(FakeExact):
    def match_sha1(self, sha1: str) -> list[Match]:
        if sha1 == SHA_POISON:
            raise RuntimeError("injected: exact bank lookup failed")
        return super().match_sha1(sha1)


class PoisonStore(SqlPipeline):
    """Fails unexpectedly (not a ServiceError) for chosen events."""

    def __init__(self, db: Database, *, admit_fails: Collection[str] = (), finish_fails: Collection[str] = (),
                 finish_always_fails: Collection[str] = ()) -> None:
        super().__init__(db)
        self.admit_fails = admit_fails
        self.finish_fails = finish_fails
        self.finish_always_fails = finish_always_fails

    async def admit(self, event_id: str, sha1: str | None) -> tuple[bool, ScanRecord | None]:
        if event_id in self.admit_fails:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "injected: surrogates not allowed")
        return await super().admit(event_id, sha1)

    async def finish(self, event: UploadEvent, outcome: str, scan: ScanRecord | None = None,
                     remote: Any = (), actions: Any = ()) -> None:
        if event.event_id in self.finish_always_fails or (
                event.event_id in self.finish_fails and outcome != "error:internal"):
            raise ValueError(f"injected: cannot record {outcome}")
        remote_scans: list[RemoteScan] = list(remote)
        await super().finish(event, outcome, scan, remote_scans, actions)


@pytest.fixture
def poison_store(stores: Stores) -> PoisonStore:
    assert isinstance(stores.db, Database)
    return PoisonStore(stores.db, admit_fails={"event-3"}, finish_fails={"event-5"}, finish_always_fails={"event-7"})


async def test_an_exception_in_one_event_ends_it_with_a_recorded_outcome(
    tmp_path: Path, poison_store: PoisonStore, stores: Stores, caplog: pytest.LogCaptureFixture,
) -> None:
    events = [
        make_event(0, SHA_CLEAN),
        make_event(1, SHA_POISON),  # the exact-bank lookup at intake raises
        make_event(2, SHA_EXACT),
        make_event(3, SHA_CLEAN),  # the store's admission raises (not a ServiceError)
        make_event(4, SHA_CLEAN),
        make_event(5, SHA_EXACT),  # recording "match" raises; "error:internal" can be recorded
        make_event(6, SHA_CLEAN),
        make_event(7, SHA_CLEAN),  # no outcome can be recorded at all: moved past, not stuck
        make_event(8, SHA_CLEAN),
    ]
    metrics = Metrics()
    source = ListSource(events)
    p = Pipeline(config(tmp_path), source=source, store=poison_store, fetcher=FakeFetcher(), exact=PoisonExact(),
                 matchers=[FakePdq()], planners=[planner], cpu=None, prepare=fake_prepare, metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="service.pipeline"):
        await asyncio.wait_for(p.run(), 20)  # a crashed intake or worker would raise here

    outcomes = {n: await stores.ledger.event_outcome(f"event-{n}") for n in range(len(events))}
    assert outcomes == {0: "clean", 1: "error:internal", 2: "match", 3: "error:internal", 4: "clean",
                        5: "error:internal", 6: "clean", 7: None, 8: "clean"}
    assert source.committed[-1] == len(events) - 1  # the checkpoint moved past every one of them
    assert sample(metrics, "mediamoderation_errors_total", stage="intake", reason="internal") == 2
    assert sample(metrics, "mediamoderation_errors_total", stage="store", reason="internal") == 2
    assert sample(metrics, "mediamoderation_errors_total", stage="store", reason="unrecorded") == 1
    assert sample(metrics, "mediamoderation_outcomes_total", outcome="error") == 4
    logged = {(r.getMessage(), getattr(r, "event_id", None)) for r in caplog.records if r.exc_info}
    assert ("unexpected error at intake", "event-1") in logged  # with the event id and a traceback
    assert ("unexpected error at intake", "event-3") in logged
    assert ("could not record outcome; recording error:internal", "event-5") in logged
    assert ("could not record any outcome; moving past the event", "event-7") in logged
