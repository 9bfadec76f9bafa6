"""The action outbox: each effect (email, takedown, ...) performed once, keyed by ``key``.

Inserting is ``ON CONFLICT (key) DO NOTHING RETURNING``: only the caller whose insert created the row
gets it back, so a match is acted on once even with many replicas.  With a lease (``lease`` seconds,
PostgreSQL replicas), due items are claimed with ``FOR UPDATE SKIP LOCKED`` and their next attempt is
pushed past the lease until they are marked done, retried or failed: two replicas never perform one
item at the same time, and the items of a replica that died come back when the lease runs out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from service.store.base import NewAction, OutboxItem
from service.store.db import Database
from service.store.schema import outbox as t

# Kinds whose items are written ahead of their time (``NewAction.not_before``): not a backlog until due.
SCHEDULED_KINDS = ("digest", "summary", "reminder")


def outbox_item(row: RowMapping) -> OutboxItem:
    return OutboxItem(
        id=int(row["id"]), key=row["key"], kind=row["kind"], payload=json.loads(row["payload"]),
        attempts=row["attempts"], state=row["state"], next_attempt_at=float(row["next_attempt_at"]),
        created_at=float(row["created_at"]), last_error=row["last_error"], result=row["result"],
    )


def _insert(db: Database) -> sa.Insert:
    return db.insert(t).on_conflict_do_nothing(index_elements=[t.c.key]).returning(*t.c)


def insert_actions(db: Database, conn: Connection, actions: Sequence[NewAction], now: float) -> list[OutboxItem]:
    """Add the actions whose key is new; the items this call created."""
    created: list[OutboxItem] = []
    for a in actions:
        row = conn.execute(db.prepared(_insert), {"key": a.key, "kind": a.kind, "payload": json.dumps(a.payload),
                                                  "created_at": now, "updated_at": now,
                                                  "next_attempt_at": a.not_before}).mappings().first()
        if row is not None:
            created.append(outbox_item(row))
    return created


def retry_failed(conn: Connection, keys: Sequence[str], now: float) -> list[OutboxItem]:
    """Make the failed items with these keys pending and due now; the items changed."""
    out: list[OutboxItem] = []
    for key in keys:
        stmt = (sa.update(t).where(t.c.key == key, t.c.state == "failed")
                .values(state="pending", next_attempt_at=now, updated_at=now).returning(*t.c))
        row = conn.execute(stmt).mappings().first()
        if row is not None:
            out.append(outbox_item(row))
    return out


def items_about(conn: Connection, sha1: str) -> list[OutboxItem]:
    """Every item about one content (keys end with ``:<sha1>`` or start with ``escalate:<sha1>:``)."""
    stmt = sa.select(t).where(sa.or_(t.c.key.like(f"%:{sha1}"), t.c.key.like(f"escalate:{sha1}:%"))).order_by(t.c.id)
    return [outbox_item(r) for r in conn.execute(stmt).mappings()]


class SqlOutbox:
    """:class:`~service.store.base.Outbox`; ``lease`` (seconds) makes due items leased claims."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time, *, lease: float | None = None) -> None:
        self.db = db
        self.clock = clock
        self.lease = lease
        # Items this process claimed and has not finished, per kind: a dispatcher asks for
        # ``free + in flight`` items, so only ``limit - claimed`` new ones are claimed.
        self._claimed: dict[str, set[int]] = {}

    async def add_actions(self, actions: Sequence[NewAction]) -> list[OutboxItem]:
        now = self.clock()
        return await self.db.write(lambda c: insert_actions(self.db, c, actions, now))

    async def due_actions(self, kind: str, now: float, limit: int) -> list[OutboxItem]:
        due = (t.c.state == "pending", t.c.kind == kind, t.c.next_attempt_at <= now)
        order = (t.c.next_attempt_at, t.c.id)
        if self.lease is None:
            query = sa.select(t).where(*due).order_by(*order).limit(limit)
            return [outbox_item(r) for r in await self.db.read(lambda c: list(c.execute(query).mappings()))]
        claimed = self._claimed.setdefault(kind, set())
        want = limit - len(claimed)
        if want <= 0:
            return []
        ids = (sa.select(t.c.id).where(*due).order_by(*order).limit(want).with_for_update(skip_locked=True))
        stmt = (sa.update(t).where(t.c.id.in_(ids.scalar_subquery()))
                .values(next_attempt_at=now + self.lease, updated_at=now).returning(*t.c))
        rows = await self.db.write(lambda c: list(c.execute(stmt).mappings()))
        items = sorted((outbox_item(r) for r in rows), key=lambda i: i.id)
        claimed.update(i.id for i in items)
        return items

    def _release(self, item_id: int) -> None:
        for claimed in self._claimed.values():
            claimed.discard(item_id)

    async def next_due_time(self) -> float | None:
        stmt = sa.select(sa.func.min(t.c.next_attempt_at)).where(t.c.state == "pending")
        value = await self.db.read(lambda c: c.execute(stmt).scalar())
        return None if value is None else float(value)

    async def get_action(self, item_id: int) -> OutboxItem | None:
        row = await self.db.read(lambda c: c.execute(sa.select(t).where(t.c.id == item_id)).mappings().first())
        return None if row is None else outbox_item(row)

    async def list_actions(self, state: str | None = None) -> list[OutboxItem]:
        stmt = sa.select(t).order_by(t.c.id)
        if state is not None:
            stmt = stmt.where(t.c.state == state)
        return [outbox_item(r) for r in await self.db.read(lambda c: list(c.execute(stmt).mappings()))]

    async def _update(self, item_id: int, **values: Any) -> None:
        stmt = sa.update(t).where(t.c.id == item_id).values(attempts=t.c.attempts + 1, updated_at=self.clock(),
                                                             **values)
        await self.db.write(lambda c: c.execute(stmt))
        self._release(item_id)

    async def mark_done(self, item_id: int, result: str) -> None:
        await self._update(item_id, state="done", result=result, last_error=None)

    async def mark_retry(self, item_id: int, error: str, next_attempt_at: float) -> None:
        await self._update(item_id, last_error=error, next_attempt_at=next_attempt_at)

    async def mark_failed(self, item_id: int, error: str) -> None:
        await self._update(item_id, state="failed", last_error=error)

    async def pending_count(self) -> int:
        """Pending items, not counting those scheduled for later and never attempted (a digest waiting for its
        window to end, a preservation reminder)."""
        scheduled = sa.and_(t.c.kind.in_(SCHEDULED_KINDS), t.c.attempts == 0, t.c.next_attempt_at > self.clock())
        stmt = sa.select(sa.func.count()).select_from(t).where(t.c.state == "pending", sa.not_(scheduled))
        return int(await self.db.read(lambda c: c.execute(stmt).scalar_one()))
