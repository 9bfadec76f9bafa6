from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.models import Match, UploadEvent
from service.store.base import NewAction, ScanRecord
from service.store.sqlite import SCHEMA_VERSION, SqliteStore, StoreError


def event(eid: str = "e1", title: str = "File:A.jpg") -> UploadEvent:
    return UploadEvent(
        event_id=eid, wiki="w", title=title, server_url="http://x", page_url="http://x/wiki/" + title,
        uploader="U", upload_time=datetime(2026, 1, 1, tzinfo=UTC), log_action="upload", sha1="a" * 40,
    )


M = Match(matcher="pdq", bank="b", category="child-protection", hash_id="7", hash_value="f" * 64, distance=3)


@pytest.fixture
async def store(tmp_path: Path):
    s = SqliteStore(str(tmp_path / "s.sqlite3"))
    await s.open()
    yield s
    await s.close()


async def test_checkpoint_round_trip_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "db.sqlite3")
    s = SqliteStore(path)
    await s.open()
    assert await s.get_checkpoint("es") is None
    await s.set_checkpoint("es", '[{"topic":"t","partition":0,"timestamp":5}]')
    await s.close()
    s2 = SqliteStore(path)
    await s2.open()
    assert await s2.get_checkpoint("es") == '[{"topic":"t","partition":0,"timestamp":5}]'
    await s2.close()


async def test_events_ledger_ignores_errors(store: SqliteStore) -> None:
    await store.record_event(event("e1"), "clean")
    await store.record_event(event("e2"), "error:fetcherror")
    assert await store.event_seen("e1")
    assert not await store.event_seen("e2")  # failed events are processed again when seen again
    assert not await store.event_seen("e3")
    assert await store.prune_events(older_than=1e12) == 2


async def test_scan_round_trip(store: SqliteStore) -> None:
    rec = ScanRecord(sha1="a" * 40, outcome="match", bank_version="v1", scanned_at=1.0, pdq="f" * 64,
                     pdq_quality=90, matches=(M,))
    await store.put_scan(rec)
    assert await store.get_scan("a" * 40) == rec
    assert await store.get_scan("b" * 40) is None


async def test_record_matches_is_idempotent(store: SqliteStore) -> None:
    act = NewAction(key="notify:w:File:A.jpg:" + "a" * 40, kind="notify", payload={"x": 1})
    first = await store.record_matches(event(), "a" * 40, [M], [act])
    assert [i.key for i in first] == [act.key]
    again = await store.record_matches(event("e-dup"), "a" * 40, [M], [act])
    assert again == []
    assert len(await store.list_matches()) == 1
    assert await store.pending_count() == 1


async def test_outbox_lifecycle(store: SqliteStore) -> None:
    [item] = await store.add_actions([NewAction(key="k", kind="notify", payload={"a": 1})])
    assert (await store.due_actions("notify", now=0, limit=10))[0].payload == {"a": 1}
    await store.mark_retry(item.id, "smtp down", next_attempt_at=100)
    assert await store.due_actions("notify", now=50, limit=10) == []
    assert [i.id for i in await store.due_actions("notify", now=100, limit=10)] == [item.id]
    await store.mark_done(item.id, "sent")
    done = await store.get_action(item.id)
    assert done is not None and done.state == "done" and done.attempts == 2 and done.result == "sent"
    assert await store.pending_count() == 0


async def test_schema_versioned_and_newer_db_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    s = SqliteStore(str(path))
    await s.open()
    await s.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore(str(path)).open()


async def test_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((StoreError, OSError)):
        await SqliteStore(str(blocker / "db.sqlite3")).open()
