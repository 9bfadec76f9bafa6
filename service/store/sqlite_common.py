"""Helpers shared by the two halves of the SQLite store (:mod:`.sqlite` and its review mixin)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from service.store.base import NewAction, OutboxItem


@contextmanager
def transaction(c: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (one writer at a time, across processes too) … ``COMMIT``.

    Anything raised in the block, or by the COMMIT itself, rolls back and propagates.
    """
    c.execute("BEGIN IMMEDIATE")
    try:
        yield
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise


def outbox_item(row: sqlite3.Row) -> OutboxItem:
    return OutboxItem(
        id=row["id"], key=row["key"], kind=row["kind"], payload=json.loads(row["payload"]),
        attempts=row["attempts"], state=row["state"], next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"], last_error=row["last_error"], result=row["result"],
    )


def insert_actions(c: sqlite3.Connection, actions: Sequence[NewAction], now: float) -> list[int]:
    """Add outbox items (a key already there is left alone); the ids of the new ones."""
    ids: list[int] = []
    for action in actions:
        cur = c.execute(
            "INSERT INTO outbox (key, kind, payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO NOTHING",
            (action.key, action.kind, json.dumps(action.payload), now, now),
        )
        if cur.rowcount:
            ids.append(int(cur.lastrowid or 0))
    return ids


def fetch_outbox_items(c: sqlite3.Connection, ids: list[int]) -> list[OutboxItem]:
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = c.execute(f"SELECT * FROM outbox WHERE id IN ({marks}) ORDER BY id", ids).fetchall()
    return [outbox_item(r) for r in rows]
