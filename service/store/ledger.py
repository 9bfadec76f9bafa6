"""The event ledger: which events were handled, with which outcome (de-duplication across restarts)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.models import UploadEvent
from service.store.db import Database
from service.store.schema import events as t

SEEN = sa.select(sa.literal(1)).where(t.c.event_id == sa.bindparam("event_id"), t.c.outcome.not_like("error:%"))


def _put(db: Database) -> sa.Insert:
    ins = db.insert(t)
    return ins.on_conflict_do_update(index_elements=[t.c.event_id],
                                     set_={"outcome": ins.excluded.outcome, "finished_at": ins.excluded.finished_at})


def seen(conn: Connection, event_id: str) -> bool:
    """Handled with a non-error outcome (an event that ended in ``error:...`` is processed again)."""
    return conn.execute(SEEN, {"event_id": event_id}).first() is not None


def put_event(db: Database, conn: Connection, event: UploadEvent, outcome: str, now: float) -> None:
    db.compiled(_put).run(conn, {
        "event_id": event.event_id, "wiki": event.wiki, "title": event.title, "sha1": event.sha1,
        "log_action": event.log_action, "outcome": outcome, "finished_at": now,
        "history": "[]"})  # a new row's; an existing row keeps its own (the upsert sets only outcome and time)


def superseded_history(history: str | None, outcome: str, finished_at: float, now: float) -> str:
    """An event's ``history`` (a JSON list, oldest first) with ``outcome``, replaced at ``now``, appended."""
    entries = json.loads(history or "[]")
    entries.append({"outcome": outcome, "finished_at": finished_at, "superseded_at": now})
    return json.dumps(entries, separators=(",", ":"))


def supersede(conn: Connection, sha1: str, event_id: str | None, prefix: str, outcome: str, now: float) -> list[str]:
    """:meth:`~service.store.base.OutcomeLedger.supersede_outcomes` inside the caller's transaction."""
    of_content = t.c.sha1 == sha1 if event_id is None else sa.or_(t.c.sha1 == sha1, t.c.event_id == event_id)
    rows = conn.execute(
        sa.select(t.c.event_id, t.c.outcome, t.c.finished_at, t.c.history)
        .where(of_content, sa.func.substr(t.c.outcome, 1, len(prefix)) == prefix)
        .order_by(t.c.event_id).with_for_update()
    ).all()
    for row in rows:
        conn.execute(sa.update(t).where(t.c.event_id == row.event_id).values(
            outcome=outcome, history=superseded_history(row.history, row.outcome, row.finished_at, now)))
    return [str(row.outcome) for row in rows]


class SqlLedger:
    """:class:`~service.store.base.EventLedger`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def event_seen(self, event_id: str) -> bool:
        return await self.db.read(lambda c: seen(c, event_id))

    async def record_event(self, event: UploadEvent, outcome: str) -> None:
        now = self.clock()
        await self.db.write(lambda c: put_event(self.db, c, event, outcome, now))

    async def event_outcome(self, event_id: str) -> str | None:
        return await self.db.read(lambda c: c.execute(sa.select(t.c.outcome).where(t.c.event_id == event_id)).scalar())

    async def supersede_outcomes(self, sha1: str, event_id: str | None, prefix: str, outcome: str) -> list[str]:
        now = self.clock()
        return await self.db.write(lambda c: supersede(c, sha1, event_id, prefix, outcome, now))

    async def prune_events(self, older_than: float) -> int:
        return await self.db.write(lambda c: c.execute(sa.delete(t).where(t.c.finished_at < older_than)).rowcount)
