"""The Trust & Safety workflow's tables: grouped notifications, unscannable cases, preservation, case statistics.

Grouped notifications are exactly-once across restarts: folding an item into a digest and creating the
digest's outbox item (due when the group's window ends) happen in one transaction, keyed by the item's
own key, so performing the same notification item again gives the same answer and adds nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from service.models import UploadEvent
from service.store.base import CaseStats, NewAction, Preservation, UnscannableCase
from service.store.db import Database
from service.store.outbox import insert_actions
from service.store.review import SqlReview, _insert_audit
from service.store.schema import digest_entries, events, matches, notify_groups, outbox, preservation, unscannable_cases

u, g, d, p = unscannable_cases, notify_groups, digest_entries, preservation

DIGEST_KIND = "digest"


def digest_key(group_key: str, first_at: float) -> str:
    return f"digest:{group_key}:{int(first_at)}"


def put_unscannable(db: Database, conn: Connection, event: UploadEvent, outcome: str, now: float) -> bool:
    """Open the unscannable case of one event; False when it already exists."""
    stmt = db.insert(u).values(
        event_id=event.event_id, wiki=event.wiki, title=event.title, sha1=event.sha1, uploader=event.uploader,
        upload_time=event.upload_time.isoformat(), reason=outcome.split(":", 1)[1] or "unknown", created_at=now,
    ).on_conflict_do_nothing(index_elements=[u.c.event_id])
    return bool(conn.execute(stmt).rowcount)


def _unscannable(row: RowMapping) -> UnscannableCase:
    return UnscannableCase(
        event_id=row["event_id"], wiki=row["wiki"], title=row["title"], sha1=row["sha1"], uploader=row["uploader"],
        upload_time=row["upload_time"], reason=row["reason"], created_at=row["created_at"], state=row["state"],
        decided_by=row["decided_by"], decided_at=row["decided_at"],
    )


def _preservation(row: RowMapping) -> Preservation:
    return Preservation(
        wiki=row["wiki"], title=row["title"], sha1=row["sha1"],
        filearchive_ids=tuple(int(i) for i in json.loads(row["filearchive_ids"])), suppressed=bool(row["suppressed"]),
        removed_at=row["removed_at"], preserve_until=row["preserve_until"],
    )


class SqlWorkflow(SqlReview):
    """:class:`~service.store.base.WorkflowStore` (open-case statistics read the review queue's cases)."""

    # ------------------------------------------------------------------ grouped notifications

    async def fold_notification(self, item_key: str, group_keys: Sequence[str], payload: dict[str, Any],
                                now: float, window: float) -> str | None:
        keys = sorted(set(group_keys))

        def tx(c: Connection) -> str | None:
            if not self.db.sqlite:
                # Replicas folding into the same group at the same instant would each see no group row and
                # each lead (two "first" emails): one transaction per group key at a time.  SQLite's writes are
                # serialised already.  Sorted keys: no lock-order deadlock.
                for key in keys:
                    c.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                              {"key": f"notify-group:{key}"})
            # Already folded (a retry after a crash): the same answer.
            done = c.execute(sa.select(d.c.digest_key).where(d.c.item_key == item_key)).scalar()
            if done is not None:
                return str(done)
            rows = list(c.execute(sa.select(g).where(g.c.group_key.in_(keys))).mappings()) if keys else []
            for row in sorted(rows, key=lambda r: (r["first_at"], r["group_key"])):
                if row["lead_key"] == item_key:
                    return None  # this item leads: send it (again, after a crash)
                live = row["first_at"] > now - window
                sent = c.execute(sa.select(outbox.c.state).where(outbox.c.key == row["digest_key"])).scalar()
                if live and sent in (None, "pending"):
                    dkey = str(row["digest_key"])
                    c.execute(self.db.insert(d).values(digest_key=dkey, item_key=item_key,
                                                       payload=json.dumps(payload), created_at=now)
                              .on_conflict_do_nothing(index_elements=[d.c.item_key]))
                    insert_actions(self.db, c, [NewAction(
                        key=dkey, kind=DIGEST_KIND, payload={"group": row["group_key"], "first_at": row["first_at"]},
                        not_before=row["first_at"] + window)], now)
                    return dkey
            for key in keys:
                ins = self.db.insert(g).values(group_key=key, lead_key=item_key, first_at=now,
                                               digest_key=digest_key(key, now))
                c.execute(ins.on_conflict_do_update(index_elements=[g.c.group_key], set_={
                    "lead_key": ins.excluded.lead_key, "first_at": ins.excluded.first_at,
                    "digest_key": ins.excluded.digest_key}))
            return None

        return await self.db.write(tx)

    async def digest_entries(self, digest_key: str) -> list[dict[str, Any]]:
        stmt = sa.select(d.c.payload).where(d.c.digest_key == digest_key).order_by(d.c.id)
        return [json.loads(v) for v in await self.db.read(lambda c: list(c.execute(stmt).scalars()))]

    # ------------------------------------------------------------------ unscannable cases

    async def unscannable_cases(self, state: str | None, limit: int, offset: int = 0) -> list[UnscannableCase]:
        stmt = sa.select(u).order_by(u.c.created_at.desc(), u.c.event_id).limit(limit).offset(offset)
        if state is not None:
            stmt = stmt.where(u.c.state == state)
        return [_unscannable(r) for r in await self.db.read(lambda c: list(c.execute(stmt).mappings()))]

    async def unscannable_case(self, event_id: str) -> UnscannableCase | None:
        stmt = sa.select(u).where(u.c.event_id == event_id)
        row = await self.db.read(lambda c: c.execute(stmt).mappings().first())
        return None if row is None else _unscannable(row)

    async def decide_unscannable(self, event_id: str, state: str, reviewer: str, note: str = "") -> bool:
        now = self.clock()

        def tx(c: Connection) -> bool:
            changed = c.execute(sa.update(u).where(u.c.event_id == event_id)
                                .values(state=state, decided_by=reviewer, decided_at=now)).rowcount
            if changed:
                row = c.execute(sa.select(u).where(u.c.event_id == event_id)).mappings().one()
                _insert_audit(c, now, reviewer, f"unscannable-{state}", row["sha1"], row["wiki"], row["title"],
                              note, {"event_id": event_id, "reason": row["reason"]})
            return bool(changed)

        return await self.db.write(tx)

    # ------------------------------------------------------------------ preservation

    async def record_preservation(self, record: Preservation) -> None:
        r = record
        ins = self.db.insert(p).values(wiki=r.wiki, title=r.title, sha1=r.sha1,
                                       filearchive_ids=json.dumps(list(r.filearchive_ids)),
                                       suppressed=int(r.suppressed), removed_at=r.removed_at,
                                       preserve_until=r.preserve_until)
        stmt = ins.on_conflict_do_update(index_elements=[p.c.wiki, p.c.title, p.c.sha1], set_={
            "filearchive_ids": ins.excluded.filearchive_ids, "suppressed": ins.excluded.suppressed})
        await self.db.write(lambda c: c.execute(stmt))

    async def preservation(self, sha1: str) -> list[Preservation]:
        stmt = sa.select(p).where(p.c.sha1 == sha1).order_by(p.c.removed_at)
        return [_preservation(r) for r in await self.db.read(lambda c: list(c.execute(stmt).mappings()))]

    # ------------------------------------------------------------------ statistics

    async def case_stats(self) -> CaseStats:
        cases = self._cases().subquery("cases")
        todo = sa.select(cases.c.categories, cases.c.first_seen).where(cases.c.state.in_(("open", "escalated")))
        unscannable = (sa.select(u.c.reason, sa.func.count(), sa.func.min(u.c.created_at))
                       .where(u.c.state == "open").group_by(u.c.reason))

        def q(c: Connection) -> CaseStats:
            counts: dict[tuple[str, str], int] = {}
            oldest: float | None = None
            for row in c.execute(todo):
                for category in sorted({v for v in (row.categories or "").split(",") if v}) or ["unknown"]:
                    counts[("match", category)] = counts.get(("match", category), 0) + 1
                oldest = row.first_seen if oldest is None else min(oldest, row.first_seen)
            for reason, n, first in c.execute(unscannable):
                counts[("unscannable", str(reason))] = int(n)
                oldest = first if oldest is None else min(oldest, first)
            return CaseStats(counts, oldest)

        return await self.db.read(q)

    async def activity(self, since: float) -> dict[str, dict[str, int]]:
        outcomes = (sa.select(events.c.outcome, sa.func.count()).where(events.c.finished_at >= since)
                    .group_by(events.c.outcome))
        uploads = sa.distinct(matches.c.wiki + "|" + matches.c.title + "|" + matches.c.sha1)
        categories = (sa.select(matches.c.category, sa.func.count(uploads)).where(matches.c.created_at >= since)
                      .group_by(matches.c.category))

        def q(c: Connection) -> dict[str, dict[str, int]]:
            return {"outcomes": {str(k): int(n) for k, n in c.execute(outcomes)},
                    "categories": {str(k): int(n) for k, n in c.execute(categories)}}

        return await self.db.read(q)
