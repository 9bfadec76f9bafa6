"""Alembic migrations: databases made by the previous release upgrade in place, on SQLite and PostgreSQL.

The previous release's DDL is in :mod:`tests.store.legacy_schema` (generated from commit 0ba7908);
rows are written as that release wrote them, then read and changed through the current store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.store import Database, StoreError, Stores, postgres_stores, sqlite_stores
from service.store.base import REMOTE_FAILED, CaseFilter, Decision, NewAction
from service.store.migrate import script_directory
from service.store.schema import metadata
from tests.infra.postgres import TestDatabase
from tests.store import legacy_schema

SHA = "a" * 40
UPLOAD = json.dumps({"event_id": "ev-1", "wiki": "w", "title": "File:A.jpg", "server_url": "https://w.example",
                     "page_url": "https://w.example/wiki/File:A.jpg", "uploader": "U",
                     "upload_time": "2024-01-01T00:00:00+00:00", "log_action": "upload", "sha1": SHA})
# One row per table, as the previous release wrote them.
LEGACY_ROWS: dict[str, list[dict[str, Any]]] = {
    "checkpoints": [{"name": "es", "value": '"[{\\"topic\\":\\"t\\"}]"', "updated_at": 5.0}],
    "events": [{"event_id": "ev-1", "wiki": "w", "title": "File:A.jpg", "sha1": SHA, "log_action": "upload",
                "outcome": "match", "finished_at": 10.0}],
    "scans": [{"sha1": SHA, "outcome": "match", "bank_version": "v1", "scanned_at": 9.0, "pdq": "f" * 64,
               "pdq_quality": 90, "md5": None, "matches": "[]"}],
    "matches": [{"event_id": "ev-1", "wiki": "w", "title": "File:A.jpg", "sha1": SHA, "uploader": "U",
                 "upload_time": "2024-01-01T00:00:00+00:00", "log_action": "upload",
                 "page_url": "https://w.example/wiki/File:A.jpg", "matcher": "pdq", "bank": "b",
                 "category": "child-protection", "hash_id": "7", "hash_value": "f" * 64, "distance": 3,
                 "source": None, "details": "{}", "created_at": 10.0}],
    "outbox": [{"key": f"notify:w:File:A.jpg:{SHA}", "kind": "notify", "payload": '{"to": "ts"}',
                "created_at": 10.0, "updated_at": 10.0}],
    "remote_scans": [{"sha1": SHA, "matcher": "photodna", "state": "failed", "scanned_at": 10.0, "clean_at": None,
                      "failures": 1, "next_attempt_at": 70.0, "upload": UPLOAD, "last_error": "timeout"}],
    "budgets": [{"name": "photodna", "period": "2024-01", "used": 12, "updated_at": 10.0}],
    "audit_log": [{"at": 11.0, "actor": "rev", "action": "login", "note": "", "detail": "{}"}],
    "review_sessions": [{"token_hash": "t" * 64, "reviewer": "rev", "csrf": "c", "created_at": 11.0,
                         "last_seen": 11.0, "expires_at": 9e9}],
}


def legacy_sqlite(path: Path, version: int = len(legacy_schema.SQLITE)) -> None:
    """A database as the previous release's ``SqliteStore.open()`` left it, with rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    for n in range(version):
        conn.executescript(legacy_schema.SQLITE[n])
        conn.execute(f"PRAGMA user_version = {n + 1}")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table, rows in LEGACY_ROWS.items():
        for row in rows if table in tables else []:
            conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         list(row.values()))
    conn.close()


def legacy_postgres(url: str) -> None:
    """A database as the previous release's ``PostgresStore.open()`` left it, with rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for ddl in legacy_schema.POSTGRES:
            conn.execute(ddl)  # type: ignore[call-overload]
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (len(legacy_schema.POSTGRES),))
        for table, rows in LEGACY_ROWS.items():
            for row in rows:
                conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
                             list(row.values()))  # type: ignore[call-overload]


def schema_drift(db: Database) -> list[Any]:
    """What Alembic's autogenerate would change between the migrated database and :mod:`service.store.schema`."""
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata)
    return [d for d in diff if not _known(d)]


def _known(d: Any) -> bool:
    """Differences that are not drift: the legacy version marker, and the previous release's SQLite primary
    keys declared inline (``name TEXT PRIMARY KEY``), which SQLite reports as nullable."""
    if isinstance(d, tuple):
        return d[0] == "remove_table" and d[1].name == "schema_version"
    return all(op == "modify_nullable" and metadata.tables[table].c[column].primary_key
               for op, _, table, column, *_ in d)


async def check_upgraded(stores: Stores) -> None:
    """Every row the previous release wrote reads back, and the store goes on working."""
    assert await stores.checkpoints.get_checkpoint("es") == '[{"topic":"t"}]'
    assert await stores.ledger.event_seen("ev-1")
    scan = await stores.scans.get_scan(SHA)
    assert scan is not None and (scan.outcome, scan.bank_version, scan.pdq_quality) == ("match", "v1", 90)
    [item] = await stores.outbox.due_actions("notify", 100.0, 10)
    assert item.payload == {"to": "ts"} and item.state == "pending"
    [retry] = await stores.remote.due_remote_retries("photodna", 100.0, 10)
    assert retry.state == REMOTE_FAILED and retry.upload is not None and retry.upload.title == "File:A.jpg"
    assert await stores.budget.reserve_budget("photodna", "2024-01", 10, 20) == (8, 20)
    case = await stores.review.review_case(SHA)
    assert case is not None and case.state == "open" and case.matchers == ("pdq",)
    session = await stores.review.get_session("t" * 64)
    assert session is not None and session.reviewer == "rev"
    _, items = await stores.review.record_decision(Decision(
        sha1=SHA, state="confirmed", reviewer="rev", action="confirm", allowlist_banks=("b",),
        actions=(NewAction(key=f"takedown:w:File:A.jpg:{SHA}", kind="takedown"),)))
    assert [i.id for i in items] > [item.id]  # new rows are numbered after the old ones
    assert [e.action for e in await stores.review.list_audit(10)] == ["confirm", "login"]
    assert (await stores.review.review_cases(CaseFilter(state="confirmed"), 10, 0))[1] == 1
    db = stores.db
    assert isinstance(db, Database)
    with pytest.raises(StoreError, match="append-only"):
        await db.write(lambda c: c.exec_driver_sql("DELETE FROM audit_log"))
    assert schema_drift(db) == []
    head = script_directory().get_current_head()
    assert await db.read(lambda c: MigrationContext.configure(c).get_current_heads()) == (head,)


async def open_twice(make: Callable[[], Stores], check: Callable[[Stores], Any]) -> None:
    for _ in range(2):  # the second open finds nothing to migrate
        stores = make()
        await stores.open()
        try:
            await check(stores)
        finally:
            await stores.close()


async def test_a_sqlite_database_of_the_previous_release_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    legacy_sqlite(path)
    stores = sqlite_stores(str(path))
    await stores.open()
    try:
        await check_upgraded(stores)
    finally:
        await stores.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] > len(legacy_schema.SQLITE)  # the old code refuses it
    conn.close()


async def test_a_postgres_database_of_the_previous_release_upgrades_in_place(pg_database: TestDatabase) -> None:
    legacy_postgres(pg_database.url)
    stores = postgres_stores(pg_database.url)
    await stores.open()
    try:
        await check_upgraded(stores)
    finally:
        await stores.close()
    with psycopg.connect(pg_database.url) as conn:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        assert row is not None and row[0] > len(legacy_schema.POSTGRES)


async def test_an_older_sqlite_database_gets_the_tables_it_lacks(tmp_path: Path) -> None:
    path = tmp_path / "older.sqlite3"
    legacy_sqlite(path, version=2)  # before the review queue
    stores = sqlite_stores(str(path))
    await stores.open()
    try:
        case = await stores.review.review_case(SHA)
        assert case is not None and case.state == "open"
        await stores.review.append_audit("rev", "login")
        assert isinstance(stores.db, Database) and schema_drift(stores.db) == []
    finally:
        await stores.close()


async def test_new_databases_match_the_schema_and_reopen_without_migrating(tmp_path: Path,
                                                                           pg_database: TestDatabase) -> None:
    async def check(stores: Stores) -> None:
        assert isinstance(stores.db, Database) and schema_drift(stores.db) == []
        await stores.checkpoints.set_checkpoint("x", 1)

    await open_twice(lambda: sqlite_stores(str(tmp_path / "new.sqlite3")), check)
    await open_twice(lambda: postgres_stores(pg_database.url), check)


async def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    stores = sqlite_stores(str(path))
    await stores.open()
    await stores.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    conn.close()
    with pytest.raises(StoreError, match="ffff_from_the_future is newer"):
        await sqlite_stores(str(path)).open()

    legacy = tmp_path / "legacy.sqlite3"
    legacy_sqlite(legacy)
    conn = sqlite3.connect(legacy, isolation_level=None)
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    with pytest.raises(StoreError, match="version 4 is newer"):
        await sqlite_stores(str(legacy)).open()
