"""The event ledger: which events were handled, with which outcome (de-duplication across restarts)."""

from __future__ import annotations

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
        "log_action": event.log_action, "outcome": outcome, "finished_at": now})


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

    async def prune_events(self, older_than: float) -> int:
        return await self.db.write(lambda c: c.execute(sa.delete(t).where(t.c.finished_at < older_than)).rowcount)
