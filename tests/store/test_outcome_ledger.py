"""The events ledger's superseded outcomes, on every store: an upload's remote-matcher error takes the
verdict a rescan got for its content, and the ledger keeps the error in the event's history."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.models import UploadEvent
from service.store import MemoryStore, Stores, memory_stores, postgres_stores, sqlite_stores
from tests.infra.postgres import TestDatabase

SHA = "a" * 40
OTHER = "b" * 40


def upload(n: int, sha1: str | None) -> UploadEvent:
    return UploadEvent(event_id=f"ev-{n}", wiki="testwiki", title=f"File:F{n}.jpg", server_url="https://w.example",
                       page_url=f"https://w.example/wiki/File:F{n}.jpg", uploader="U",
                       upload_time=datetime(2026, 1, 1, tzinfo=UTC), log_action="upload", sha1=sha1)


@dataclass
class Ledger:
    stores: Stores
    history: Callable[[str], list[dict[str, Any]]]  # event id -> the stored history, read around the store


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    ticks = iter(float(t) for t in range(1000, 2000))

    def clock() -> float:
        return next(ticks)

    if request.param == "memory":
        memory = MemoryStore(clock=clock)
        stores = memory_stores(memory)

        def history(event_id: str) -> list[dict[str, Any]]:
            return memory.event_history.get(event_id, [])
    elif request.param == "sqlite":
        path = tmp_path / "db.sqlite3"
        stores = sqlite_stores(str(path), clock=clock)

        def history(event_id: str) -> list[dict[str, Any]]:
            with sqlite3.connect(path) as conn:
                return json.loads(conn.execute("SELECT history FROM events WHERE event_id = ?",
                                               (event_id,)).fetchone()[0])
    else:
        db = request.getfixturevalue("pg_database")
        assert isinstance(db, TestDatabase)
        stores = postgres_stores(db.url, clock=clock)

        def history(event_id: str) -> list[dict[str, Any]]:
            with psycopg.connect(db.url) as conn:
                row = conn.execute("SELECT history FROM events WHERE event_id = %s", (event_id,)).fetchone()
                assert row is not None
                return json.loads(row[0])
    await stores.open()
    yield Ledger(stores, history)
    await stores.close()


async def test_errors_of_the_content_take_the_final_outcome_and_keep_their_history(ledger: Ledger) -> None:
    store = ledger.stores.ledger
    await store.record_event(upload(1, SHA), "error:photodna-unauthorized")  # finished at 1000
    await store.record_event(upload(2, SHA), "error:photodna")
    await store.record_event(upload(3, None), "error:photodna-unavailable")  # recorded without a SHA-1
    await store.record_event(upload(4, SHA), "error:fetch-timeout")  # not the matcher's error: untouched
    await store.record_event(upload(5, SHA), "match")  # already final
    await store.record_event(upload(6, OTHER), "error:photodna-unauthorized")  # other content
    assert not await store.event_seen("ev-1")  # an error: a replay of it would be scanned again

    # What the rescanner is given: the store's RescanStore concern.
    replaced = await ledger.stores.rescan.supersede_outcomes(SHA, "ev-3", "error:photodna", "clean")
    assert sorted(replaced) == ["error:photodna", "error:photodna-unauthorized", "error:photodna-unavailable"]
    outcomes = {f"ev-{n}": await store.event_outcome(f"ev-{n}") for n in range(1, 7)}  # type: ignore[attr-defined]
    assert outcomes == {"ev-1": "clean", "ev-2": "clean", "ev-3": "clean", "ev-4": "error:fetch-timeout",
                        "ev-5": "match", "ev-6": "error:photodna-unauthorized"}
    assert await store.event_seen("ev-1")  # final now: a replay skips it
    assert ledger.history("ev-1") == [{"outcome": "error:photodna-unauthorized", "finished_at": 1000.0,
                                       "superseded_at": 1006.0}]
    assert ledger.history("ev-4") == [] and ledger.history("ev-5") == []

    # Settled once: asking again changes and returns nothing; the history is not rewritten.
    assert await store.supersede_outcomes(SHA, "ev-3", "error:photodna", "match") == []
    assert len(ledger.history("ev-1")) == 1

    # The same upload can fail again later (a replay) and be settled again: the history grows.
    await store.record_event(upload(1, SHA), "error:photodna")
    assert await store.supersede_outcomes(SHA, None, "error:photodna", "unscannable:photodna-not-an-image") == [
        "error:photodna"]
    assert [h["outcome"] for h in ledger.history("ev-1")] == ["error:photodna-unauthorized", "error:photodna"]


async def test_a_prefix_is_matched_literally(ledger: Ledger) -> None:
    store = ledger.stores.ledger
    await store.record_event(upload(1, SHA), "error:photodnaXunauthorized")
    await store.record_event(upload(2, SHA), "error:photo%")
    assert await store.supersede_outcomes(SHA, None, "error:photo_na", "clean") == []
    assert await store.supersede_outcomes(SHA, None, "error:photo%", "clean") == ["error:photo%"]
