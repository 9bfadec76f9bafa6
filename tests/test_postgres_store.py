"""The PostgreSQL store against a real server: same behaviour as SQLite, and safe with many replicas."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from service.models import Match, UploadEvent
from service.store.base import REMOTE_CLEAN, REMOTE_FAILED, NewAction, RemoteScan, ScanRecord
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore, StoreError
from tests.infra.postgres import PostgresUnavailable, TestDatabase


@pytest.fixture
def database() -> Iterator[TestDatabase]:
    db = TestDatabase()
    try:
        db.create()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield db
    db.drop()


@pytest.fixture
async def store(database: TestDatabase) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(database.url, outbox_lease=60)
    await s.open()
    yield s
    await s.close()


def upload(n: int = 1, sha1: str = "a" * 40) -> UploadEvent:
    return UploadEvent(event_id=f"ev-{n}", wiki="testwiki", title=f"File:F{n}.jpg", server_url="https://w.example",
                       page_url=f"https://w.example/wiki/File:F{n}.jpg", uploader="U",
                       upload_time=datetime(2024, 1, 1, tzinfo=UTC), log_action="upload", sha1=sha1)


MATCH = Match(matcher="sha1", bank="b", category="child-protection", hash_id="h1", hash_value="a" * 40)


def test_implements_every_method_of_the_sqlite_store() -> None:
    wanted = {n for n, f in inspect.getmembers(SqliteStore, inspect.iscoroutinefunction) if not n.startswith("_")}
    have = {n for n, f in inspect.getmembers(PostgresStore, inspect.iscoroutinefunction) if not n.startswith("_")}
    assert wanted <= have, sorted(wanted - have)


async def test_replicas_starting_together_migrate_once(database: TestDatabase) -> None:
    stores = [PostgresStore(database.url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await stores[0].set_checkpoint("x", [1, {"a": 2}])
        assert await stores[3].get_checkpoint("x") == [1, {"a": 2}]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_bad_url_is_a_clear_store_error() -> None:
    s = PostgresStore("postgresql://postgres@127.0.0.1:1/nothing")
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1:1/nothing"):
        await s.open()


async def test_admit_finish_and_scan_cache(store: PostgresStore) -> None:
    ev = upload(1)
    assert await store.admit(ev.event_id, ev.sha1) == (False, None)
    scan = ScanRecord(sha1=ev.sha1 or "", outcome="match", bank_version="v1", scanned_at=1.0, pdq="0" * 64,
                      pdq_quality=90, matches=(MATCH,))
    await store.finish(ev, "match", scan)
    seen, cached = await store.admit(ev.event_id, ev.sha1)
    assert seen and cached is None
    seen, cached = await store.admit("another", ev.sha1)
    assert not seen and cached == scan
    await store.finish(upload(2), "error:timeout", None)
    assert not await store.event_seen("ev-2")  # failed events are processed again
    assert await store.event_outcome("ev-2") == "error:timeout"
    assert await store.prune_events(float("inf")) == 2


async def test_a_match_is_acted_on_once_under_concurrent_workers(database: TestDatabase) -> None:
    stores = [PostgresStore(database.url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        action = NewAction(key="notify:testwiki:File:F1.jpg:" + "a" * 40, kind="notify", payload={"x": 1})
        results = await asyncio.gather(*(s.record_matches(upload(1), "a" * 40, [MATCH], [action])
                                         for s in stores for _ in range(5)))
        assert sum(len(r) for r in results) == 1  # exactly one caller created the action
        assert len(await stores[0].list_matches()) == 1
        assert [i.key for i in await stores[1].list_actions()] == [action.key]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_outbox_items_are_claimed_by_one_replica_and_leased(database: TestDatabase) -> None:
    clock = [1000.0]
    a = PostgresStore(database.url, outbox_lease=30, clock=lambda: clock[0])
    b = PostgresStore(database.url, outbox_lease=30, clock=lambda: clock[0])
    await a.open()
    await b.open()
    try:
        await a.add_actions([NewAction(key=f"k{i}", kind="notify") for i in range(10)])
        got_a, got_b = await asyncio.gather(a.due_actions("notify", 1000.0, 6), b.due_actions("notify", 1000.0, 6))
        ids_a, ids_b = {i.id for i in got_a}, {i.id for i in got_b}
        assert not ids_a & ids_b and len(ids_a | ids_b) == 10
        # A dispatcher asks for "free + in flight": in-flight items are not claimed a second time.
        assert await a.due_actions("notify", 1000.0, len(ids_a)) == []
        # Finished and retried items leave the lease; a crashed replica's items come back after it.
        done, retry = sorted(ids_a)[:2]
        await a.mark_done(done, "sent")
        await a.mark_retry(retry, "smtp down", 1005.0)
        assert [i.id for i in await b.due_actions("notify", 1005.0, 10)] == [retry]
        leftover = ids_a - {done, retry}
        late = await b.due_actions("notify", 1000.0 + 31, 20)
        assert {i.id for i in late} == leftover | ids_b
        assert await a.pending_count() == 9
    finally:
        await a.close()
        await b.close()


async def test_budget_is_never_overspent_by_concurrent_replicas(database: TestDatabase) -> None:
    stores = [PostgresStore(database.url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        grants = await asyncio.gather(*(s.reserve_budget("photodna", "2024-01", 7, 50)
                                        for s in stores for _ in range(4)))
        assert sum(g for g, _ in grants) == 50
        assert await stores[0].budget_used("photodna", "2024-01") == 50
        await stores[1].release_budget("photodna", "2024-01", 60)
        assert await stores[2].budget_used("photodna", "2024-01") == 0
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_remote_scan_failures_count_up_and_schedule_retries(store: PostgresStore) -> None:
    sha1 = "b" * 40
    for at in (100.0, 200.0):
        await store.put_remote_scans([RemoteScan(sha1, "photodna", REMOTE_FAILED, at, upload=upload(3, sha1),
                                                 error="timeout", retry_delays=(10.0, 60.0))])
    row = await store.get_remote_scan(sha1, "photodna")
    assert row is not None and row.failures == 2 and row.next_attempt_at == 260.0
    assert row.upload is not None and row.upload.title == "File:F3.jpg"
    assert [r.sha1 for r in await store.due_remote_retries("photodna", 300.0, 10)] == [sha1]
    await store.put_remote_scans([RemoteScan(sha1, "photodna", REMOTE_CLEAN, 400.0)])
    assert [r.sha1 for r in await store.stale_remote_scans("photodna", 500.0, 10)] == [sha1]


async def test_review_queue_decisions_allowlist_and_append_only_audit(store: PostgresStore) -> None:
    from service.store.base import CaseFilter, Decision

    await store.record_matches(upload(4), "a" * 40, [MATCH], [])
    cases, total = await store.review_cases(CaseFilter(state="todo"), 10, 0)
    assert total == 1 and cases[0].sha1 == "a" * 40 and cases[0].state == "open"
    assert cases[0].categories == ("child-protection",) and cases[0].uploads == 1
    action = NewAction(key="takedown:testwiki:File:F4.jpg:" + "a" * 40, kind="takedown")
    audit_id, items = await store.record_decision(Decision(
        sha1="a" * 40, state="dismissed", reviewer="rev", action="dismiss", allowlist_banks=("b",),
        actions=(action,), title="File:F4.jpg"))
    assert [i.key for i in items] == [action.key]
    assert await store.allowlisted_banks("a" * 40) == frozenset({"b"})
    case = await store.review_case("a" * 40)
    assert case is not None and case.state == "dismissed" and case.decided_by == "rev"
    assert [e.id for e in await store.list_audit(10)] == [audit_id]
    with pytest.raises(StoreError, match="append-only"):
        await store._exec("DELETE FROM audit_log")
    assert (await store.filter_values())["matcher"] == ["sha1"]
    assert await store.case_titles(["a" * 40]) == {"a" * 40: [("testwiki", "File:F4.jpg")]}
