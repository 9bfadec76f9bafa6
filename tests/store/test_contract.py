"""One behaviour suite for every store protocol, run against memory, SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.models import Match, UploadEvent
from service.store import Database, MemoryStore, StoreError, Stores, memory_stores, postgres_stores, sqlite_stores
from service.store.base import (
    ANY_BANK,
    REMOTE_CLEAN,
    REMOTE_FAILED,
    REMOTE_GONE,
    REMOTE_SEEN,
    RETRO_ACTING,
    RETRO_MATCHING,
    RETRO_QUARANTINED,
    AllowlistEntry,
    BankHash,
    CaseFilter,
    Decision,
    FileHashes,
    NewAction,
    RemoteScan,
    ReviewSession,
    ScanRecord,
    SignInCounts,
)
from tests.infra.postgres import TestDatabase

SHA = "a" * 40
M = Match(matcher="pdq", bank="b", category="child-protection", hash_id="7", hash_value="f" * 64, distance=3)


def upload(n: int = 1, sha1: str = SHA, wiki: str = "testwiki") -> UploadEvent:
    return UploadEvent(event_id=f"ev-{n}", wiki=wiki, title=f"File:F{n}.jpg", server_url="https://w.example",
                       page_url=f"https://w.example/wiki/File:F{n}.jpg", uploader="U",
                       upload_time=datetime(2024, 1, 1, tzinfo=UTC), log_action="upload", sha1=sha1)


@dataclass
class Backend:
    """Opens stores over one database (several, for the tests of concurrent replicas)."""

    name: str
    make: Callable[..., Stores]
    clock: list[float]

    def new(self, **kw: Any) -> Stores:
        return self.make(clock=lambda: self.clock[0], **kw)


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    clock = [1000.0]
    if request.param == "memory":
        shared = MemoryStore(clock=lambda: clock[0])
        return Backend("memory", lambda clock, **kw: memory_stores(shared), clock)
    if request.param == "sqlite":
        path = str(tmp_path / "db.sqlite3")
        return Backend("sqlite", lambda **kw: sqlite_stores(path, **kw), clock)
    db = request.getfixturevalue("pg_database")
    assert isinstance(db, TestDatabase)
    return Backend("postgres", lambda **kw: postgres_stores(db.url, **kw), clock)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return _backend(request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A database that several processes (replicas) share."""
    return _backend(request, tmp_path)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Stores]:
    s = backend.new()
    await s.open()
    yield s
    await s.close()


# ------------------------------------------------------------------ checkpoints


async def test_checkpoints_round_trip_json_and_survive_reopen(backend: Backend) -> None:
    s = backend.new()
    await s.open()
    assert await s.checkpoints.get_checkpoint("es") is None
    await s.checkpoints.set_checkpoint("es", [{"topic": "t", "partition": 0, "timestamp": 5}])
    await s.checkpoints.set_checkpoint("kafka", "text")
    await s.checkpoints.set_checkpoint("es", {"moved": True})
    await s.close()
    s2 = backend.new()
    await s2.open()
    assert await s2.checkpoints.get_checkpoint("es") == {"moved": True}
    assert await s2.checkpoints.get_checkpoint("kafka") == "text"
    await s2.close()


# ------------------------------------------------------------------ ledger, scans, pipeline


async def test_ledger_counts_only_non_error_outcomes_and_prunes_by_time(store: Stores, backend: Backend) -> None:
    await store.ledger.record_event(upload(1), "clean")
    await store.ledger.record_event(upload(2), "error:fetcherror")
    assert await store.ledger.event_seen("ev-1")
    assert not await store.ledger.event_seen("ev-2")  # failed events are processed again when seen again
    assert not await store.ledger.event_seen("ev-3")
    backend.clock[0] = 2000.0
    await store.ledger.record_event(upload(3), "clean")
    assert await store.ledger.prune_events(older_than=1500.0) == 2
    assert await store.ledger.event_seen("ev-3") and not await store.ledger.event_seen("ev-1")


async def test_scan_round_trip(store: Stores) -> None:
    rec = ScanRecord(sha1=SHA, outcome="match", bank_version="v1", scanned_at=1.0, pdq="f" * 64, pdq_quality=90,
                     md5="0" * 32, matches=(M,))
    await store.scans.put_scan(rec)
    assert await store.scans.get_scan(SHA) == rec
    newer = ScanRecord(sha1=SHA, outcome="clean", bank_version="v2", scanned_at=2.0)
    await store.scans.put_scan(newer)
    assert await store.scans.get_scan(SHA) == newer
    assert await store.scans.get_scan("b" * 40) is None


async def test_admit_and_finish(store: Stores) -> None:
    ev = upload(1)
    assert await store.pipeline.admit(ev.event_id, ev.sha1) == (False, None)
    scan = ScanRecord(sha1=SHA, outcome="match", bank_version="v1", scanned_at=1.0, pdq="0" * 64, pdq_quality=90,
                      matches=(M,))
    remote = RemoteScan(SHA, "photodna", REMOTE_CLEAN, 5.0, upload=ev)
    await store.pipeline.finish(ev, "match", scan, [remote])
    assert await store.pipeline.admit(ev.event_id, ev.sha1) == (True, None)
    assert await store.pipeline.admit("another", ev.sha1) == (False, scan)
    assert await store.pipeline.admit("another", None) == (False, None)
    row = await store.remote.get_remote_scan(SHA, "photodna")
    assert row is not None and row.state == REMOTE_CLEAN and row.clean_at == 5.0 and row.upload == ev
    await store.pipeline.finish(upload(2), "error:timeout", None)
    assert not await store.ledger.event_seen("ev-2")
    await store.pipeline.finish(upload(2), "clean", None)  # the retry's outcome replaces the error
    assert await store.ledger.event_seen("ev-2")


# ------------------------------------------------------------------ retroactive matching: file hashes, deltas


async def test_file_hashes_round_trip_latest_event_wins_and_lookups(store: Stores) -> None:
    variants = bytes(range(224))  # the 7 rotated / mirrored variants' PDQ hashes
    a = FileHashes(event=upload(1), sha1=SHA, md5="0" * 32, pdq="f" * 64, pdq_quality=90, scanned_at=5.0,
                   pdq_variants=variants)
    b = FileHashes(event=upload(2, sha1="b" * 40), sha1="b" * 40, scanned_at=6.0)  # exact SHA-1 hit: no PDQ
    c = FileHashes(event=upload(3, sha1="c" * 40), sha1="c" * 40, pdq="e" * 64, pdq_quality=40, scanned_at=7.0)
    await store.retro.put_file_hashes([a, b, c])
    assert await store.retro.count_file_hashes() == 3
    [got] = await store.retro.files_by_hash("sha1", [SHA, "d" * 40])
    assert got.id > 0 and got.event == a.event and (got.md5, got.pdq, got.pdq_quality) == (a.md5, a.pdq, 90)
    assert got.pdq_variants == variants
    assert [f.sha1 for f in await store.retro.files_by_hash("md5", ["0" * 32])] == [SHA]
    assert await store.retro.files_by_hash("md5", []) == []
    pdqs = await store.retro.file_pdqs(0, 10)
    assert [(p, q, v) for _, p, q, v in pdqs] == [("f" * 64, 90, variants), ("e" * 64, 40, None)]
    assert await store.retro.file_pdqs(pdqs[0][0], 10) == pdqs[1:]
    assert len(await store.retro.file_pdqs(0, 1)) == 1
    # The same upload version scanned again (a replay): one row, the same id, the latest event.
    again = FileHashes(event=dataclasses.replace(upload(1), event_id="ev-9"), sha1=SHA, md5="0" * 32,
                       pdq="f" * 64, pdq_quality=90, scanned_at=9.0)
    await store.retro.put_file_hashes([again])
    assert await store.retro.count_file_hashes() == 3
    [row] = await store.retro.files_by_id([got.id])
    assert row.id == got.id and row.event.event_id == "ev-9" and row.scanned_at == 9.0
    assert await store.retro.files_by_id([]) == []


async def test_retro_deltas_keep_their_progress(store: Stores) -> None:
    entries = [("a" * 40, "child-protection", "src", "e1"), ("f" * 64, "terrorism", "", "")]
    first = await store.retro.add_retro_delta("bank-a", 100.0, entries)
    second = await store.retro.add_retro_delta("bank-b", 101.0, entries[:1])
    d = await store.retro.get_retro_delta(first)
    assert d is not None and (d.bank, d.added_at, d.entries, d.state, d.progress, d.hits) == (
        "bank-a", 100.0, tuple(entries), RETRO_MATCHING, 0, ())
    await store.retro.update_retro_delta(first, state=RETRO_MATCHING, progress=1, hits=[(7, 0, None), (8, 1, 12)])
    await store.retro.update_retro_delta(second, state=RETRO_QUARANTINED, progress=1, note="60 files hit")
    d = await store.retro.get_retro_delta(first)
    assert d is not None and d.progress == 1 and d.hits == ((7, 0, None), (8, 1, 12))
    await store.retro.update_retro_delta(first, state=RETRO_ACTING, progress=0)  # hits and note kept
    d = await store.retro.get_retro_delta(first)
    assert d is not None and d.state == RETRO_ACTING and d.hits == ((7, 0, None), (8, 1, 12)) and d.note == ""
    assert [x.id for x in await store.retro.list_retro_deltas()] == [first, second]
    [q] = await store.retro.list_retro_deltas((RETRO_QUARANTINED,))
    assert q.id == second and q.note == "60 files hit"
    assert await store.retro.get_retro_delta(9999) is None
    assert [(x.id, x.bank, x.state, x.progress, x.size, x.created_at)
            for x in await store.retro.retro_delta_status((RETRO_ACTING, RETRO_QUARANTINED))] == [
        (first, "bank-a", RETRO_ACTING, 0, 2, 1000.0), (second, "bank-b", RETRO_QUARANTINED, 1, 1, 1000.0)]
    assert await store.retro.retro_delta_status((RETRO_MATCHING,)) == []
    # The retroactive matcher records matches and adds alerts through the same store.
    assert await store.retro.record_matches(upload(1), SHA, [M], []) == []
    [alert] = await store.retro.add_actions([NewAction(key="flood:x:1", kind="notify", payload={})])
    assert alert.key == "flood:x:1"


# ------------------------------------------------------------------ matches and outbox


async def test_record_matches_is_idempotent_and_returns_only_new_actions(store: Stores) -> None:
    act = NewAction(key=f"notify:testwiki:File:F1.jpg:{SHA}", kind="notify", payload={"x": 1})
    first = await store.pipeline.record_matches(upload(1), SHA, [M], [act])
    assert [(i.key, i.kind, i.payload, i.state) for i in first] == [(act.key, "notify", {"x": 1}, "pending")]
    assert await store.pipeline.record_matches(upload(1), SHA, [M], [act]) == []
    assert await store.rescan.record_matches(upload(1), SHA, [M], []) == []
    assert await store.outbox.pending_count() == 1
    assert len(await store.review.case_matches(SHA)) == 1


async def test_outbox_lifecycle(store: Stores) -> None:
    [item] = await store.outbox.add_actions([NewAction(key="k", kind="notify", payload={"a": 1})])
    assert await store.outbox.add_actions([NewAction(key="k", kind="notify")]) == []
    [due] = await store.outbox.due_actions("notify", now=1000, limit=10)
    assert due.payload == {"a": 1} and due.id == item.id
    assert await store.outbox.due_actions("takedown", now=1000, limit=10) == []
    await store.outbox.mark_retry(item.id, "smtp down", next_attempt_at=1100)
    assert await store.outbox.due_actions("notify", now=1050, limit=10) == []
    assert [i.id for i in await store.outbox.due_actions("notify", now=1100, limit=10)] == [item.id]
    got = await store.outbox.get_action(item.id)
    assert got is not None and got.last_error == "smtp down" and got.attempts == 1
    await store.outbox.mark_done(item.id, "sent")
    done = await store.outbox.get_action(item.id)
    assert done is not None and (done.state, done.attempts, done.result, done.last_error) == ("done", 2, "sent", None)
    [other] = await store.outbox.add_actions([NewAction(key="t", kind="takedown")])
    await store.outbox.mark_failed(other.id, "no right")
    failed = await store.outbox.get_action(other.id)
    assert failed is not None and failed.state == "failed" and failed.last_error == "no right"
    assert await store.outbox.pending_count() == 0
    assert await store.outbox.get_action(10_000) is None


async def test_due_actions_oldest_first_within_the_limit(store: Stores) -> None:
    items = await store.outbox.add_actions([NewAction(key=f"k{i}", kind="notify") for i in range(5)])
    await store.outbox.mark_retry(items[0].id, "later", next_attempt_at=500)
    due = await store.outbox.due_actions("notify", now=1000, limit=3)
    assert [i.key for i in due] == ["k1", "k2", "k3"]


# ------------------------------------------------------------------ remote scans and budgets


async def test_remote_scan_failures_count_up_and_schedule_retries(store: Stores) -> None:
    sha1 = "b" * 40
    for at in (100.0, 200.0):
        await store.remote.put_remote_scans([RemoteScan(sha1, "photodna", REMOTE_FAILED, at, upload=upload(3, sha1),
                                                        error="timeout", retry_delays=(10.0, 60.0))])
    row = await store.remote.get_remote_scan(sha1, "photodna")
    assert row is not None and row.failures == 2 and row.next_attempt_at == 260.0 and row.last_error == "timeout"
    assert row.upload is not None and row.upload.title == "File:F3.jpg"
    assert await store.remote.due_remote_retries("photodna", 259.0, 10) == []
    assert [r.sha1 for r in await store.rescan.due_remote_retries("photodna", 300.0, 10)] == [sha1]
    assert await store.remote.retry_remote_failures_now("photodna", 150.0) == 1
    assert [r.sha1 for r in await store.remote.due_remote_retries("photodna", 150.0, 10)] == [sha1]
    # A later upload of the same content only moves the upload the rescanner fetches from.
    await store.remote.put_remote_scans([RemoteScan(sha1, "photodna", REMOTE_SEEN, 300.0, upload=upload(4, sha1))])
    row = await store.remote.get_remote_scan(sha1, "photodna")
    assert row is not None and row.state == REMOTE_FAILED and row.upload is not None
    assert row.upload.title == "File:F4.jpg"
    await store.remote.put_remote_scans([RemoteScan(sha1, "photodna", REMOTE_CLEAN, 400.0)])
    row = await store.remote.get_remote_scan(sha1, "photodna")
    assert row is not None and (row.failures, row.next_attempt_at, row.clean_at) == (0, None, 400.0)
    assert row.upload is not None and row.upload.title == "File:F4.jpg"  # kept when not given
    assert [r.sha1 for r in await store.remote.stale_remote_scans("photodna", 500.0, 10)] == [sha1]
    assert await store.remote.stale_remote_scans("photodna", 400.0, 10) == []
    await store.remote.put_remote_scans([RemoteScan(sha1, "photodna", REMOTE_GONE, 450.0)])
    row = await store.remote.get_remote_scan(sha1, "photodna")
    assert row is not None and row.state == REMOTE_GONE and row.clean_at == 400.0
    assert await store.remote.get_remote_scan(sha1, "other") is None


async def test_stale_scans_oldest_clean_verdict_first(store: Stores) -> None:
    for n, at in enumerate((30.0, 10.0, 20.0)):
        await store.remote.put_remote_scans([RemoteScan(f"{n}" * 40, "photodna", REMOTE_CLEAN, at)])
    stale = await store.remote.stale_remote_scans("photodna", 100.0, 2)
    assert [r.clean_at for r in stale] == [10.0, 20.0]


async def test_budget_is_never_overspent_and_release_floors_at_zero(store: Stores) -> None:
    assert await store.budget.budget_used("photodna", "2024-01") == 0
    assert await store.budget.reserve_budget("photodna", "2024-01", 30, 50) == (30, 30)
    assert await store.budget.reserve_budget("photodna", "2024-01", 30, 50) == (20, 50)
    assert await store.budget.reserve_budget("photodna", "2024-01", 1, 50) == (0, 50)
    assert await store.budget.reserve_budget("photodna", "2024-02", 1, 50) == (1, 1)
    await store.budget.release_budget("photodna", "2024-01", 5)
    assert await store.budget.budget_used("photodna", "2024-01") == 45
    await store.budget.release_budget("photodna", "2024-01", 60)
    assert await store.budget.budget_used("photodna", "2024-01") == 0


# ------------------------------------------------------------------ review


async def test_review_queue_decisions_allowlist_and_audit(store: Stores, backend: Backend) -> None:
    await store.pipeline.record_matches(upload(4), SHA, [M], [])
    backend.clock[0] = 1001.0
    other = Match(matcher="sha1", bank="c", category="terrorism", hash_id="h", hash_value=SHA)
    await store.pipeline.record_matches(upload(5, wiki="otherwiki"), SHA, [other], [])
    backend.clock[0] = 1002.0
    await store.pipeline.record_matches(upload(6, "b" * 40), "b" * 40, [M], [])
    cases, total = await store.review.review_cases(CaseFilter(state="todo"), 10, 0)
    assert total == 2 and [c.sha1 for c in cases] == ["b" * 40, SHA]
    assert await store.review.pending_by_category() == {"child-protection": 2, "terrorism": 1}
    case = cases[1]
    assert (case.state, case.categories, case.wikis, case.matchers, case.banks, case.uploads) == (
        "open", ("child-protection", "terrorism"), ("otherwiki", "testwiki"), ("pdq", "sha1"), ("b", "c"), 2)
    assert (case.first_seen, case.last_seen) == (1000.0, 1001.0)
    assert (await store.review.review_cases(CaseFilter(state="todo"), 1, 1))[0][0].sha1 == SHA
    assert [c.sha1 for c in (await store.review.review_cases(CaseFilter(matcher="sha1"), 10, 0))[0]] == [SHA]
    assert (await store.review.review_cases(CaseFilter(wiki="nowhere"), 10, 0)) == ([], 0)

    action = NewAction(key=f"takedown:testwiki:File:F4.jpg:{SHA}", kind="takedown")
    backend.clock[0] = 1010.0
    audit_id, items = await store.review.record_decision(Decision(
        sha1=SHA, state="dismissed", reviewer="rev", action="dismiss", note="fp", allowlist_banks=("b",),
        actions=(action,), title="File:F4.jpg", detail={"why": "test"}))
    assert [i.key for i in items] == [action.key]
    assert await store.review.allowlisted_banks(SHA) == frozenset({"b"})
    assert await store.review.allowlisted_banks("b" * 40) == frozenset()
    case2 = await store.review.review_case(SHA)
    assert case2 is not None and (case2.state, case2.decided_by, case2.decided_at) == ("dismissed", "rev", 1010.0)
    assert (await store.review.review_cases(CaseFilter(state="dismissed"), 10, 0))[1] == 1
    assert await store.review.pending_by_category() == {"child-protection": 1}  # dismissed cases are done
    [entry] = await store.review.list_audit(10)
    assert (entry.id, entry.actor, entry.action, entry.sha1, entry.title, entry.note, entry.detail) == (
        audit_id, "rev", "dismiss", SHA, "File:F4.jpg", "fp", {"why": "test"})
    assert await store.review.review_case("c" * 40) is None
    assert (await store.review.filter_values()) == {
        "category": ["child-protection", "terrorism"], "wiki": ["otherwiki", "testwiki"], "matcher": ["pdq", "sha1"],
        "bank": ["b", "c"]}
    assert await store.review.case_titles([SHA]) == {SHA: [("otherwiki", "File:F5.jpg"), ("testwiki", "File:F4.jpg")]}
    assert await store.review.case_titles([]) == {}
    assert [i.key for i in await store.review.case_actions(SHA)] == [action.key]
    rows = await store.review.case_matches(SHA)
    assert [r["wiki"] for r in rows] == ["otherwiki", "testwiki"] and rows[0]["details"] == {}


async def test_decisions_retry_failed_actions_and_later_uploads_reopen_a_case(store: Stores, backend: Backend
                                                                               ) -> None:
    key = f"takedown:testwiki:File:F1.jpg:{SHA}"
    [item] = await store.pipeline.record_matches(upload(1), SHA, [M], [NewAction(key=key, kind="takedown")])
    await store.outbox.mark_failed(item.id, "permission")
    backend.clock[0] = 1005.0
    _, items = await store.review.record_decision(Decision(sha1=SHA, state="confirmed", reviewer="rev",
                                                           action="confirm", retry_keys=(key, "missing")))
    assert [(i.id, i.state, i.next_attempt_at) for i in items] == [(item.id, "pending", 1005.0)]
    assert (await store.review.review_case(SHA) or pytest.fail()).state == "confirmed"
    assert await store.review.pending_by_category() == {}
    await store.review.mark_removed(SHA, 1006.0)  # a human decision stands ...
    assert (await store.review.review_case(SHA) or pytest.fail()).state == "confirmed"
    backend.clock[0] = 1010.0
    await store.pipeline.record_matches(upload(2), SHA, [M], [])  # ... until a newer upload reopens the case
    assert (await store.review.review_case(SHA) or pytest.fail()).state == "open"
    assert await store.review.pending_by_category() == {"child-protection": 1}
    await store.review.mark_removed(SHA, 1011.0)
    case = await store.review.review_case(SHA)
    assert case is not None and (case.state, case.decided_by) == ("removed", "system")
    assert await store.review.pending_by_category() == {}
    backend.clock[0] = 1012.0
    await store.review.record_decision(Decision(sha1=SHA, state="escalated", reviewer="rev", action="escalate"))
    assert await store.review.pending_by_category() == {"child-protection": 1}  # escalated is still to do


async def test_audit_log_pages_and_filters(store: Stores) -> None:
    ids = [await store.review.append_audit("rev", "login", note=f"n{i}", sha1=SHA if i % 2 else None)
           for i in range(5)]
    assert [e.id for e in await store.review.list_audit(2)] == ids[:-3:-1]
    assert [e.id for e in await store.review.list_audit(10, before_id=ids[2])] == ids[1::-1]
    assert [e.id for e in await store.review.list_audit(10, sha1=SHA)] == [ids[3], ids[1]]


async def test_audit_log_is_append_only(sql_backend: Backend) -> None:
    store = sql_backend.new()
    await store.open()
    await store.review.append_audit("rev", "login")
    db = store.db
    assert isinstance(db, Database)
    with pytest.raises(StoreError, match="append-only"):
        await db.write(lambda c: c.exec_driver_sql("DELETE FROM audit_log"))
    with pytest.raises(StoreError, match="append-only"):
        await db.write(lambda c: c.exec_driver_sql("UPDATE audit_log SET actor = 'x'"))
    assert len(await store.review.list_audit(10)) == 1
    await store.close()


async def test_review_sessions(store: Stores) -> None:
    s = ReviewSession(token_hash="t" * 64, reviewer="rev", csrf="c", created_at=10.0, last_seen=10.0, expires_at=100.0)
    await store.review.create_session(s)
    await store.review.create_session(ReviewSession("u" * 64, "rev", "d", 10.0, 10.0, 50.0))
    assert await store.review.get_session(s.token_hash) == s
    await store.review.touch_session(s.token_hash, 20.0)
    assert (await store.review.get_session(s.token_hash) or pytest.fail()).last_seen == 20.0
    assert await store.review.prune_sessions(60.0) == 1
    await store.review.delete_session(s.token_hash)
    assert await store.review.get_session(s.token_hash) is None
    assert await store.review.get_session("u" * 64) is None


# ------------------------------------------------------------------ many replicas on one database


async def test_replicas_open_together_and_act_on_a_match_once(sql_backend: Backend) -> None:
    stores = [sql_backend.new() for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))  # migrate once, under the lock
    try:
        action = NewAction(key=f"notify:testwiki:File:F1.jpg:{SHA}", kind="notify", payload={"x": 1})
        results = await asyncio.gather(*(s.pipeline.record_matches(upload(1), SHA, [M], [action])
                                         for s in stores for _ in range(5)))
        assert sum(len(r) for r in results) == 1  # exactly one caller created the action
        assert len(await stores[1].review.case_matches(SHA)) == 1
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_budget_is_never_overspent_by_concurrent_replicas(sql_backend: Backend) -> None:
    stores = [sql_backend.new() for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        grants = await asyncio.gather(*(s.budget.reserve_budget("photodna", "2024-01", 7, 50)
                                        for s in stores for _ in range(4)))
        assert sum(g for g, _ in grants) == 50
        assert await stores[2].budget.budget_used("photodna", "2024-01") == 50
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_outbox_items_are_claimed_by_one_replica_and_leased(sql_backend: Backend) -> None:
    a, b = sql_backend.new(outbox_lease=30), sql_backend.new(outbox_lease=30)
    await a.open()
    await b.open()
    try:
        await a.outbox.add_actions([NewAction(key=f"k{i}", kind="notify") for i in range(10)])
        got_a, got_b = await asyncio.gather(a.outbox.due_actions("notify", 1000.0, 6),
                                            b.outbox.due_actions("notify", 1000.0, 6))
        ids_a, ids_b = {i.id for i in got_a}, {i.id for i in got_b}
        assert not ids_a & ids_b and len(ids_a | ids_b) == 10
        # A dispatcher asks for "free + in flight": in-flight items are not claimed a second time.
        assert await a.outbox.due_actions("notify", 1000.0, len(ids_a)) == []
        # Finished and retried items leave the lease; a crashed replica's items come back after it.
        done, retry = sorted(ids_a)[:2]
        await a.outbox.mark_done(done, "sent")
        await a.outbox.mark_retry(retry, "smtp down", 1005.0)
        assert [i.id for i in await b.outbox.due_actions("notify", 1005.0, 10)] == [retry]
        late = await b.outbox.due_actions("notify", 1000.0 + 31, 20)
        assert {i.id for i in late} == (ids_a - {done, retry}) | ids_b
        assert await a.outbox.pending_count() == 9
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------ the review queue for a team (issue 13)


async def test_case_search_by_title_uploader_sha1_and_hash_id(store: Stores) -> None:
    other = dataclasses.replace(upload(2, "b" * 40), uploader="Mallory_99", title="File:Holiday_50%.jpg")
    await store.pipeline.record_matches(upload(1), SHA, [M], [])
    await store.pipeline.record_matches(other, "b" * 40, [dataclasses.replace(M, hash_id="x-1")], [])

    async def found(**kw: Any) -> list[str]:
        return [c.sha1 for c in (await store.review.review_cases(CaseFilter(**kw), 10, 0))[0]]

    assert await found(query="holiday_50%") == ["b" * 40]  # any case; LIKE wildcards are plain characters
    assert await found(query="day_5") == ["b" * 40] and await found(query="d%y") == []
    assert await found(query="mallory") == ["b" * 40]
    assert await found(uploader="Mallory_99") == ["b" * 40] and await found(uploader="mallory_99") == []
    assert await found(query="aaaaaa") == [SHA]  # the start of a SHA-1
    assert await found(query="x-1") == ["b" * 40] and await found(query="7") == [SHA]  # a hash id, exactly
    assert await found(query="f1.jpg") == [SHA]
    assert sorted(await found(query="  ")) == [SHA, "b" * 40]  # blank: no search


async def test_claims_expire_are_renewed_and_taken_over(store: Stores) -> None:
    first = await store.review.claim_case(SHA, "alice", 100.0, 60.0)
    assert (first.reviewer, first.claimed_at, first.expires_at) == ("alice", 100.0, 160.0)
    held = await store.review.claim_case(SHA, "bob", 110.0, 60.0)
    assert held == first  # alice's claim is still running
    renewed = await store.review.claim_case(SHA, "alice", 120.0, 60.0)
    assert (renewed.reviewer, renewed.claimed_at, renewed.expires_at) == ("alice", 100.0, 180.0)
    taken = await store.review.claim_case(SHA, "bob", 130.0, 60.0, take_over=True)
    assert (taken.reviewer, taken.claimed_at) == ("bob", 130.0)
    assert await store.review.case_claims([SHA, "b" * 40], 131.0) == {SHA: taken}
    assert await store.review.case_claims([SHA], 190.0) == {}  # expired
    after = await store.review.claim_case(SHA, "carol", 191.0, 60.0)
    assert after.reviewer == "carol"
    await store.review.release_claim(SHA, "bob")  # not bob's any more: stays
    assert (await store.review.case_claims([SHA], 192.0))[SHA].reviewer == "carol"
    await store.pipeline.record_matches(upload(1), SHA, [M], [])
    await store.review.record_decision(Decision(sha1=SHA, state="confirmed", reviewer="carol", action="confirm"))
    assert await store.review.case_claims([SHA], 192.0) == {}  # a decision ends the claim


async def test_allowlist_keeps_the_pdq_and_undo_is_audited(store: Stores, backend: Backend) -> None:
    pdq = "0f" * 32
    await store.pipeline.record_matches(upload(1), SHA, [M], [])
    await store.scans.put_scan(ScanRecord(sha1=SHA, outcome="match", bank_version="v", scanned_at=1.0, pdq=pdq))
    assert await store.review.content_pdq(SHA) == pdq and await store.review.content_pdq("c" * 40) is None
    v0 = await store.review.allowlist_version()
    await store.review.record_decision(Decision(sha1=SHA, state="dismissed", reviewer="rev", action="dismiss",
                                                allowlist_banks=("b",), allowlist_pdq=pdq))
    backend.clock[0] = 1001.0
    entry = AllowlistEntry(sha1="c" * 40, bank=ANY_BANK, added_by="admin", added_at=1001.0, note="logo")
    assert await store.review.add_allowlist(entry) is True
    assert await store.review.add_allowlist(entry) is False
    v1 = await store.review.allowlist_version()
    assert v1 != v0
    assert [(a.sha1, a.bank, a.pdq, a.added_by) for a in await store.review.list_allowlist()] == [
        ("c" * 40, ANY_BANK, None, "admin"), (SHA, "b", pdq, "rev")]
    assert [(a.sha1, a.pdq) for a in await store.review.allowlist_pdqs()] == [(SHA, pdq)]
    assert await store.review.allowlisted_banks("c" * 40) == frozenset({ANY_BANK})
    backend.clock[0] = 1002.0
    assert await store.review.remove_allowlist(SHA, "b", "admin", "was real") is True
    assert await store.review.remove_allowlist(SHA, "b", "admin") is False
    assert await store.review.allowlisted_banks(SHA) == frozenset()
    assert await store.review.allowlist_version() != v1
    audit = [(a.actor, a.action, a.sha1, a.note, a.detail.get("bank")) for a in await store.review.list_audit(10)]
    assert audit == [("admin", "allowlist-undo", SHA, "was real", "b"), ("admin", "allowlist-add", "c" * 40, "logo",
                                                                         ANY_BANK), ("rev", "dismiss", SHA, "", None)]


async def test_reviewers_are_added_changed_and_disabled(store: Stores, backend: Backend) -> None:
    assert await store.reviewers.add_reviewer("alice", "$argon2id$x", "reviewer") is True
    assert await store.reviewers.add_reviewer("alice", "$argon2id$y", "admin") is False
    await store.reviewers.add_reviewer("bob", "$argon2id$b", "admin")
    backend.clock[0] = 1005.0
    assert await store.reviewers.update_reviewer("alice", role="admin", password_hash="$argon2id$z") is True
    assert await store.reviewers.update_reviewer("nobody", role="admin") is False
    alice = await store.reviewers.get_reviewer("alice")
    assert alice is not None
    assert (alice.role, alice.password_hash, alice.active, alice.created_at, alice.updated_at) == (
        "admin", "$argon2id$z", True, 1000.0, 1005.0)
    await store.reviewers.update_reviewer("alice", disabled=True)
    assert (await store.reviewers.get_reviewer("alice") or pytest.fail()).disabled_at == 1005.0
    await store.reviewers.update_reviewer("alice", disabled=False)
    assert (await store.reviewers.get_reviewer("alice") or pytest.fail()).active
    assert [r.name for r in await store.reviewers.list_reviewers()] == ["alice", "bob"]
    assert await store.reviewers.get_reviewer("carol") is None


async def test_signins_are_logged_and_counted_for_the_throttle(store: Stores, backend: Backend) -> None:
    r = store.reviewers
    for at, name, address, result in [(1000.0, "alice", "a", "bad-password"), (1001.0, "alice", "a", "bad-password"),
                                      (1002.0, "alice", "b", "bad-password"), (1003.0, "bob", "a", "bad-password"),
                                      (1004.0, "alice", "a", "throttled"), (1005.0, "alice", "b", "ok"),
                                      (1005.0, "alice", "b", "bad-password")]:
        backend.clock[0] = at
        await r.record_signin(name, address, result)
    assert await r.signin_counts("alice", "a", 999.0) == SignInCounts(pair=2, address=3, name=4)
    assert await r.signin_counts("alice", "b", 999.0) == SignInCounts(pair=1, address=2, name=4)  # after its ok
    assert await r.signin_counts("alice", "a", 1000.5) == SignInCounts(pair=1, address=2, name=3)  # the window
    rows = await r.list_signins(3)
    assert [(x.name, x.address, x.result) for x in rows] == [("alice", "b", "bad-password"), ("alice", "b", "ok"),
                                                              ("alice", "a", "throttled")]
    older = await r.list_signins(10, before_id=rows[-1].id)
    assert [x.id for x in older] == [x.id for x in (await r.list_signins(10))[3:]]
async def test_bank_sync_deltas_replacement_checkpoint_and_status(store: Stores, backend: Backend) -> None:
    bs = store.banksync
    assert await bs.bank_sync_state("ncmec") is None and await bs.bank_hashes("ncmec") == []
    rows = [BankHash("42-1", "md5", "a" * 32, "child-protection", "ncmec", "42-1"),
            BankHash("42-1", "pdq", "b" * 64, "child-protection", "ncmec", "42-1"),
            BankHash("42-2", "sha1", "c" * 40, "exploitative", "ncmec", "42-2")]
    await bs.apply_bank_delta("ncmec", ["42-1", "42-2"], rows, {"get_entries_max_ts": 10, "paging_info": None})
    assert await bs.bank_hashes("ncmec") == sorted(rows, key=lambda r: (r.record, r.kind, r.hash))
    # An update replaces a record's rows; a deletion (a record without rows) removes them; other banks untouched.
    await bs.apply_bank_delta("other", ["x"], [BankHash("x", "md5", "d" * 32, "terrorism")], {"c": 1})
    await bs.apply_bank_delta("ncmec", ["42-1", "42-2"], [BankHash("42-1", "md5", "e" * 32, "child-protection",
                                                                    "ncmec", "42-1")], {"get_entries_max_ts": 20})
    assert [r.hash for r in await bs.bank_hashes("ncmec")] == ["e" * 32]
    state = await bs.bank_sync_state("ncmec")
    assert state is not None and state.checkpoint == {"get_entries_max_ts": 20} and state.errors == 0
    backend.clock[0] = 2000.0
    await bs.record_bank_sync("ncmec", error="HTTP 503")
    await bs.record_bank_sync("ncmec", error="HTTP 429")
    state = await bs.bank_sync_state("ncmec")
    assert state is not None and (state.errors, state.last_error, state.last_attempt) == (2, "HTTP 429", 2000.0)
    assert state.checkpoint == {"get_entries_max_ts": 20} and state.last_success is None
    backend.clock[0] = 3000.0
    await bs.record_bank_sync("ncmec", error=None)
    state = await bs.bank_sync_state("ncmec")
    assert state is not None and (state.errors, state.last_error, state.last_success) == (0, None, 3000.0)
    await bs.replace_bank("ncmec", rows[2:], {"get_entries_max_ts": 30})
    assert [r.record for r in await bs.bank_hashes("ncmec")] == ["42-2"]
    assert [s.bank for s in await bs.bank_sync_states()] == ["ncmec", "other"]
    assert [r.hash for r in await bs.bank_hashes("other")] == ["d" * 32]
