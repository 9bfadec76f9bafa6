"""The database layer: clear errors for bad locations, all-or-nothing transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.store import Database, StoreError, postgres_stores, sqlite_stores


async def test_bad_locations_are_clear_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1:1/nothing"):
        await postgres_stores("postgresql://postgres@127.0.0.1:1/nothing").open()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="SQLite"):
        await sqlite_stores(str(blocker / "db.sqlite3")).open()


async def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    stores = sqlite_stores(str(tmp_path / "db.sqlite3"))
    await stores.open()
    db = stores.db
    assert isinstance(db, Database)

    def half(c: sa.Connection) -> None:
        c.exec_driver_sql("INSERT INTO checkpoints (name, value, updated_at) VALUES ('x', '1', 1)")
        c.exec_driver_sql("INSERT INTO checkpoints (name, value, updated_at) VALUES ('x', '2', 2)")  # duplicate

    try:
        with pytest.raises(StoreError, match="UNIQUE"):
            await db.write(half)
        assert await stores.checkpoints.get_checkpoint("x") is None
        await stores.checkpoints.set_checkpoint("x", 3)  # the connection is usable again
        assert await stores.checkpoints.get_checkpoint("x") == 3
    finally:
        await stores.close()


async def test_a_store_that_is_not_open_says_so(tmp_path: Path) -> None:
    stores = sqlite_stores(str(tmp_path / "db.sqlite3"))
    with pytest.raises(StoreError, match="not open"):
        await stores.ledger.event_seen("e")
    await stores.open()
    await stores.close()
    with pytest.raises(StoreError, match="not open"):
        await stores.ping()


async def test_a_database_locked_by_another_process_is_a_store_error(tmp_path: Path) -> None:
    """SQLite: a writer that cannot get the lock within the timeout gets a StoreError, not sqlite3's own."""
    path = tmp_path / "db.sqlite3"
    stores = sqlite_stores(str(path))
    await stores.open()
    db = stores.db
    assert isinstance(db, Database)
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        def short_timeout(c: sa.Connection) -> None:
            c.exec_driver_sql("PRAGMA busy_timeout = 50")

        await db.read(short_timeout)
        with pytest.raises(StoreError, match="locked"):
            await stores.checkpoints.set_checkpoint("x", 1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await stores.checkpoints.set_checkpoint("x", 2)
    assert await stores.checkpoints.get_checkpoint("x") == 2
    await stores.close()
