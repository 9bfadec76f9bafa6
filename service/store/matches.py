"""Matches: every (upload, matcher, bank, hash) found, recorded with its actions in one transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.models import Match, UploadEvent
from service.store.base import NewAction, OutboxItem
from service.store.db import Database
from service.store.outbox import insert_actions
from service.store.schema import matches as t


def _insert(db: Database) -> sa.Insert:
    return db.insert(t).on_conflict_do_nothing()


def insert_matches(db: Database, conn: Connection, event: UploadEvent, sha1: str, matches: Sequence[Match],
                   actions: Sequence[NewAction], now: float) -> list[OutboxItem]:
    """The matches (one already there is left alone) and their new outbox items."""
    if matches:
        rows = [{
            "event_id": event.event_id, "wiki": event.wiki, "title": event.title, "sha1": sha1,
            "uploader": event.uploader, "upload_time": event.upload_time.isoformat(), "log_action": event.log_action,
            "page_url": event.page_url, "matcher": m.matcher, "bank": m.bank, "category": m.category,
            "hash_id": m.hash_id, "hash_value": m.hash_value, "distance": m.distance, "source": m.source,
            "details": json.dumps(dict(m.details)), "created_at": now,
        } for m in matches]
        conn.execute(db.prepared(_insert), rows)
    return insert_actions(db, conn, actions, now)


class SqlMatches:
    """:class:`~service.store.base.MatchStore`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def record_matches(
        self, event: UploadEvent, sha1: str, matches: Sequence[Match], actions: Sequence[NewAction]
    ) -> list[OutboxItem]:
        now = self.clock()
        return await self.db.write(lambda c: insert_matches(self.db, c, event, sha1, matches, actions, now))

    async def list_matches(self, limit: int = 100) -> list[dict[str, Any]]:
        stmt = sa.select(t).order_by(t.c.id.desc()).limit(limit)
        return await self.db.read(lambda c: [dict(r) for r in c.execute(stmt).mappings()])
