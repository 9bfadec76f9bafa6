"""Helpers shared by the parts of the SQLite store (:mod:`.sqlite`, its schema and its mixins)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from service.errors import ServiceError
from service.models import UploadEvent
from service.store.base import NewAction, OutboxItem, RemoteScanRow


class StoreError(ServiceError):
    """The store cannot be opened or used."""

    retriable = True


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


def upload_to_json(event: UploadEvent) -> str:
    return json.dumps({
        "event_id": event.event_id, "wiki": event.wiki, "title": event.title, "server_url": event.server_url,
        "page_url": event.page_url, "uploader": event.uploader, "upload_time": event.upload_time.isoformat(),
        "log_action": event.log_action, "sha1": event.sha1,
    }, separators=(",", ":"))


def upload_from_json(text: str | None) -> UploadEvent | None:
    if not text:
        return None
    d = json.loads(text)
    return UploadEvent(
        event_id=d["event_id"], wiki=d["wiki"], title=d["title"], server_url=d.get("server_url", ""),
        page_url=d.get("page_url", ""), uploader=d.get("uploader"),
        upload_time=datetime.fromisoformat(d["upload_time"]), log_action=d.get("log_action", "upload"),
        sha1=d.get("sha1"),
    )


def remote_row(row: Mapping[str, Any]) -> RemoteScanRow:
    """A ``remote_scans`` row (SQLite or PostgreSQL: same columns) as a :class:`RemoteScanRow`."""
    return RemoteScanRow(
        sha1=row["sha1"], matcher=row["matcher"], state=row["state"], scanned_at=row["scanned_at"],
        clean_at=row["clean_at"], failures=row["failures"], next_attempt_at=row["next_attempt_at"],
        upload=upload_from_json(row["upload"]), last_error=row["last_error"],
    )
