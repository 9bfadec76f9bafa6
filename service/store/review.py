"""The review queue: cases per matched content, decisions, the allowlist, the audit log, reviewer sessions.

A case's state: a decision holds until a newer upload of the same content matched again (then it
needs a look again), except a dismissal, which holds for good.  The audit log is append-only
(triggers refuse UPDATE and DELETE, see :mod:`.schema`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from service.store.base import AuditEntry, CaseFilter, Decision, OutboxItem, ReviewCase, ReviewSession
from service.store.db import Database
from service.store.outbox import insert_actions, items_about, retry_failed
from service.store.schema import allowlist, audit_log, matches, review_sessions, review_state

m, r = matches, review_state


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(sorted(v for v in (value or "").split(",") if v))


def _case(row: RowMapping) -> ReviewCase:
    return ReviewCase(
        sha1=row["sha1"], first_seen=row["first_seen"], last_seen=row["last_seen"], state=row["state"],
        categories=_split(row["categories"]), wikis=_split(row["wikis"]), matchers=_split(row["matchers"]),
        banks=_split(row["banks"]), uploads=int(row["uploads"]), decided_by=row["decided_by"],
        decided_at=row["decided_at"],
    )


def _audit(row: RowMapping) -> AuditEntry:
    return AuditEntry(
        id=int(row["id"]), at=row["at"], actor=row["actor"], action=row["action"], sha1=row["sha1"],
        wiki=row["wiki"], title=row["title"], note=row["note"], detail=json.loads(row["detail"]),
    )


def _session(row: RowMapping) -> ReviewSession:
    return ReviewSession(
        token_hash=row["token_hash"], reviewer=row["reviewer"], csrf=row["csrf"], created_at=row["created_at"],
        last_seen=row["last_seen"], expires_at=row["expires_at"],
    )


def _insert_audit(conn: Connection, at: float, actor: str, action: str, sha1: str | None, wiki: str | None,
                  title: str | None, note: str, detail: dict[str, Any]) -> int:
    stmt = sa.insert(audit_log).values(at=at, actor=actor, action=action, sha1=sha1, wiki=wiki, title=title,
                                       note=note, detail=json.dumps(detail, sort_keys=True)).returning(audit_log.c.id)
    return int(conn.execute(stmt).scalar_one())


class SqlReview:
    """:class:`~service.store.base.ReviewStore`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def _cases(self, *where: sa.ColumnElement[bool]) -> sa.Select[Any]:
        last = sa.func.max(m.c.created_at)
        decided = sa.func.max(r.c.state)
        state = sa.case((decided == "dismissed", "dismissed"),
                        (sa.or_(decided.is_(None), sa.func.max(r.c.decided_at) < last), "open"), else_=decided)
        agg = self.db.string_agg
        return (sa.select(m.c.sha1.label("sha1"), sa.func.min(m.c.created_at).label("first_seen"),
                          last.label("last_seen"), agg(m.c.category).label("categories"),
                          agg(m.c.wiki).label("wikis"), agg(m.c.matcher).label("matchers"),
                          agg(m.c.bank).label("banks"),
                          sa.func.count(sa.distinct(m.c.wiki + "|" + m.c.title)).label("uploads"),
                          sa.func.max(r.c.reviewer).label("decided_by"),
                          sa.func.max(r.c.decided_at).label("decided_at"), state.label("state"))
                .select_from(m.outerjoin(r, r.c.sha1 == m.c.sha1)).where(*where).group_by(m.c.sha1))

    # ------------------------------------------------------------------ allowlist (used by the pipeline)

    async def allowlisted_banks(self, sha1: str) -> frozenset[str]:
        stmt = sa.select(allowlist.c.bank).where(allowlist.c.sha1 == sha1)
        return await self.db.read(lambda c: frozenset(c.execute(stmt).scalars()))

    async def list_allowlist(self, limit: int = 500) -> list[dict[str, Any]]:
        stmt = sa.select(allowlist).order_by(allowlist.c.added_at.desc()).limit(limit)
        return await self.db.read(lambda c: [dict(row) for row in c.execute(stmt).mappings()])

    # ------------------------------------------------------------------ audit log and decisions

    async def append_audit(
        self, actor: str, action: str, *, sha1: str | None = None, wiki: str | None = None,
        title: str | None = None, note: str = "", detail: dict[str, Any] | None = None,
    ) -> int:
        now = self.clock()
        return await self.db.write(lambda c: _insert_audit(c, now, actor, action, sha1, wiki, title, note,
                                                           detail or {}))

    async def list_audit(self, limit: int, before_id: int | None = None, sha1: str | None = None) -> list[AuditEntry]:
        stmt = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(audit_log.c.id < before_id)
        if sha1 is not None:
            stmt = stmt.where(audit_log.c.sha1 == sha1)
        return [_audit(row) for row in await self.db.read(lambda c: list(c.execute(stmt).mappings()))]

    async def record_decision(self, decision: Decision) -> tuple[int, list[OutboxItem]]:
        """The decision, its audit line, its allowlist rows and its outbox items, in one transaction."""
        now = self.clock()
        d = decision

        def tx(c: Connection) -> tuple[int, list[OutboxItem]]:
            audit_id = _insert_audit(c, now, d.reviewer, d.action, d.sha1, None, d.title, d.note, dict(d.detail))
            ins = self.db.insert(review_state).values(sha1=d.sha1, state=d.state, reviewer=d.reviewer,
                                                      decided_at=now, note=d.note)
            c.execute(ins.on_conflict_do_update(index_elements=[review_state.c.sha1], set_={
                "state": ins.excluded.state, "reviewer": ins.excluded.reviewer,
                "decided_at": ins.excluded.decided_at, "note": ins.excluded.note}))
            for bank in d.allowlist_banks:
                c.execute(self.db.insert(allowlist).values(bank=bank, sha1=d.sha1, added_by=d.reviewer, added_at=now,
                                                           note=d.note).on_conflict_do_nothing())
            items = insert_actions(self.db, c, d.actions, now) + retry_failed(c, d.retry_keys, now)
            return audit_id, sorted(items, key=lambda i: i.id)

        return await self.db.write(tx)

    async def mark_removed(self, sha1: str, at: float) -> None:
        # A human decision stands unless a newer upload reopened the case.
        ins = self.db.insert(review_state).values(sha1=sha1, state="removed", reviewer="system", decided_at=at)
        newest = sa.select(sa.func.max(m.c.created_at)).where(m.c.sha1 == ins.excluded.sha1).scalar_subquery()
        stmt = ins.on_conflict_do_update(
            index_elements=[review_state.c.sha1],
            set_={"state": "removed", "reviewer": "system", "decided_at": ins.excluded.decided_at},
            where=sa.or_(review_state.c.state == "removed", review_state.c.decided_at < newest))
        await self.db.write(lambda c: c.execute(stmt))

    # ------------------------------------------------------------------ queue

    async def review_cases(self, filt: CaseFilter, limit: int, offset: int) -> tuple[list[ReviewCase], int]:
        inner = [m.c.sha1.in_(sa.select(m.c.sha1).where(m.c[column] == value))
                 for column, value in (("category", filt.category), ("wiki", filt.wiki), ("matcher", filt.matcher))
                 if value]
        cases = self._cases(*inner).subquery("cases")
        outer: list[sa.ColumnElement[bool]] = []
        if filt.state == "todo":
            outer.append(cases.c.state.in_(("open", "escalated")))
        elif filt.state:
            outer.append(cases.c.state == filt.state)
        count = sa.select(sa.func.count()).select_from(cases).where(*outer)
        page = (sa.select(cases).where(*outer).order_by(cases.c.last_seen.desc(), cases.c.sha1)
                .limit(limit).offset(offset))

        def q(c: Connection) -> tuple[list[ReviewCase], int]:
            total = int(c.execute(count).scalar_one())
            return [_case(row) for row in c.execute(page).mappings()], total

        return await self.db.read(q)

    async def pending_by_category(self) -> dict[str, int]:
        cases = self._cases().subquery("cases")
        todo = sa.select(cases.c.sha1).where(cases.c.state.in_(("open", "escalated")))
        stmt = (sa.select(m.c.category, sa.func.count(sa.distinct(m.c.sha1)))
                .where(m.c.sha1.in_(todo)).group_by(m.c.category))
        return await self.db.read(lambda c: {str(cat): int(n) for cat, n in c.execute(stmt)})

    async def review_case(self, sha1: str) -> ReviewCase | None:
        stmt = self._cases(m.c.sha1 == sha1)
        row = await self.db.read(lambda c: c.execute(stmt).mappings().first())
        return None if row is None else _case(row)

    async def case_matches(self, sha1: str) -> list[dict[str, Any]]:
        stmt = sa.select(m).where(m.c.sha1 == sha1).order_by(m.c.created_at.desc(), m.c.id)
        rows = await self.db.read(lambda c: [dict(row) for row in c.execute(stmt).mappings()])
        for row in rows:
            row["details"] = json.loads(row["details"] or "{}")
        return rows

    async def case_actions(self, sha1: str) -> list[OutboxItem]:
        return await self.db.read(lambda c: items_about(c, sha1))

    async def case_titles(self, sha1s: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """The uploads (wiki, title) of each content, most recently matched first."""
        if not sha1s:
            return {}
        stmt = (sa.select(m.c.sha1, m.c.wiki, m.c.title).where(m.c.sha1.in_(list(sha1s)))
                .group_by(m.c.sha1, m.c.wiki, m.c.title).order_by(sa.func.max(m.c.created_at).desc()))
        out: dict[str, list[tuple[str, str]]] = {}
        for row in await self.db.read(lambda c: list(c.execute(stmt))):
            out.setdefault(row.sha1, []).append((row.wiki, row.title))
        return out

    async def filter_values(self) -> dict[str, list[str]]:
        def q(c: Connection) -> dict[str, list[str]]:
            return {col: list(c.execute(sa.select(m.c[col]).distinct().order_by(m.c[col])).scalars())
                    for col in ("category", "wiki", "matcher")}

        return await self.db.read(q)

    # ------------------------------------------------------------------ sessions

    async def create_session(self, session: ReviewSession) -> None:
        s = session
        stmt = sa.insert(review_sessions).values(token_hash=s.token_hash, reviewer=s.reviewer, csrf=s.csrf,
                                                 created_at=s.created_at, last_seen=s.last_seen,
                                                 expires_at=s.expires_at)
        await self.db.write(lambda c: c.execute(stmt))

    async def get_session(self, token_hash: str) -> ReviewSession | None:
        stmt = sa.select(review_sessions).where(review_sessions.c.token_hash == token_hash)
        row = await self.db.read(lambda c: c.execute(stmt).mappings().first())
        return None if row is None else _session(row)

    async def touch_session(self, token_hash: str, now: float) -> None:
        stmt = sa.update(review_sessions).where(review_sessions.c.token_hash == token_hash).values(last_seen=now)
        await self.db.write(lambda c: c.execute(stmt))

    async def delete_session(self, token_hash: str) -> None:
        stmt = sa.delete(review_sessions).where(review_sessions.c.token_hash == token_hash)
        await self.db.write(lambda c: c.execute(stmt))

    async def prune_sessions(self, now: float) -> int:
        stmt = sa.delete(review_sessions).where(review_sessions.c.expires_at < now)
        return await self.db.write(lambda c: int(c.execute(stmt).rowcount))

