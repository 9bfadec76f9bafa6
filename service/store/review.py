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

from service.store.base import (
    SEARCH_HEX_RE,
    AllowlistEntry,
    AuditEntry,
    CaseFilter,
    Claim,
    Decision,
    OutboxItem,
    ReviewCase,
    ReviewSession,
)
from service.store.db import Database
from service.store.outbox import insert_actions, items_about, retry_failed
from service.store.schema import allowlist, audit_log, matches, review_claims, review_sessions, review_state, scans

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


def _entry(row: RowMapping) -> AllowlistEntry:
    return AllowlistEntry(sha1=row["sha1"], bank=row["bank"], added_by=row["added_by"], added_at=row["added_at"],
                          note=row["note"], pdq=row["pdq"])


def _claim(row: RowMapping) -> Claim:
    return Claim(sha1=row["sha1"], reviewer=row["reviewer"], claimed_at=row["claimed_at"],
                 expires_at=row["expires_at"])


def like_pattern(text: str) -> str:
    """``%text%`` for LIKE with ``\\`` as the escape character, lower-cased (compared with ``lower(column)``)."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _search(query: str) -> sa.ColumnElement[bool]:
    """Matches rows whose title or uploader contains ``query`` (any case), whose hash id is it, or whose SHA-1
    starts with it (6+ hex digits)."""
    q = query.strip()
    pattern = like_pattern(q)
    terms: list[sa.ColumnElement[bool]] = [
        sa.func.lower(m.c.title).like(pattern, escape="\\"),
        sa.func.lower(sa.func.coalesce(m.c.uploader, "")).like(pattern, escape="\\"),
        m.c.hash_id == q,
    ]
    if SEARCH_HEX_RE.match(q.lower()):
        terms.append(m.c.sha1.like(f"{q.lower()}%"))
    return sa.or_(*terms)


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

    async def list_allowlist(self, limit: int = 500) -> list[AllowlistEntry]:
        stmt = sa.select(allowlist).order_by(allowlist.c.added_at.desc(), allowlist.c.sha1).limit(limit)
        return await self.db.read(lambda c: [_entry(row) for row in c.execute(stmt).mappings()])

    async def allowlist_pdqs(self) -> list[AllowlistEntry]:
        stmt = sa.select(allowlist).where(allowlist.c.pdq.is_not(None))
        return await self.db.read(lambda c: [_entry(row) for row in c.execute(stmt).mappings()])

    async def allowlist_version(self) -> tuple[int, float]:
        stmt = sa.select(sa.func.count(), sa.func.max(allowlist.c.added_at))
        row = await self.db.read(lambda c: c.execute(stmt).one())
        return int(row[0]), float(row[1] or 0.0)

    async def content_pdq(self, sha1: str) -> str | None:
        stmt = sa.select(scans.c.pdq).where(scans.c.sha1 == sha1)
        return await self.db.read(lambda c: c.execute(stmt).scalar())

    async def add_allowlist(self, entry: AllowlistEntry) -> bool:
        e = entry

        def tx(c: Connection) -> bool:
            stmt = self.db.insert(allowlist).values(bank=e.bank, sha1=e.sha1, added_by=e.added_by,
                                                    added_at=e.added_at, note=e.note, pdq=e.pdq)
            if c.execute(stmt.on_conflict_do_nothing().returning(allowlist.c.sha1)).first() is None:
                return False
            _insert_audit(c, e.added_at, e.added_by, "allowlist-add", e.sha1, None, None, e.note,
                          {"bank": e.bank, "pdq": e.pdq})
            return True

        return await self.db.write(tx)

    async def remove_allowlist(self, sha1: str, bank: str, actor: str, note: str = "") -> bool:
        now = self.clock()

        def tx(c: Connection) -> bool:
            where = (allowlist.c.sha1 == sha1, allowlist.c.bank == bank)
            row = c.execute(sa.select(allowlist).where(*where)).mappings().first()
            if row is None:
                return False
            c.execute(sa.delete(allowlist).where(*where))
            _insert_audit(c, now, actor, "allowlist-undo", sha1, None, None, note,
                          {"bank": bank, "pdq": row["pdq"], "added_by": row["added_by"], "added_at": row["added_at"],
                           "added_note": row["note"]})
            return True

        return await self.db.write(tx)

    # ------------------------------------------------------------------ claims

    async def claim_case(self, sha1: str, reviewer: str, now: float, ttl: float, *, take_over: bool = False) -> Claim:
        ins = self.db.insert(review_claims).values(sha1=sha1, reviewer=reviewer, claimed_at=now, expires_at=now + ttl)
        free = sa.or_(review_claims.c.reviewer == reviewer, review_claims.c.expires_at <= now)
        # one's own claim is renewed from its first claim time; a taken-over or expired one starts again
        claimed_at = sa.case((review_claims.c.reviewer == reviewer, review_claims.c.claimed_at),
                             else_=ins.excluded.claimed_at)
        stmt = ins.on_conflict_do_update(
            index_elements=[review_claims.c.sha1],
            set_={"reviewer": ins.excluded.reviewer, "claimed_at": claimed_at, "expires_at": ins.excluded.expires_at},
            where=None if take_over else free)
        get = sa.select(review_claims).where(review_claims.c.sha1 == sha1)

        def tx(c: Connection) -> Claim:
            c.execute(stmt)
            return _claim(c.execute(get).mappings().one())

        return await self.db.write(tx)

    async def case_claims(self, sha1s: Sequence[str], now: float) -> dict[str, Claim]:
        if not sha1s:
            return {}
        stmt = sa.select(review_claims).where(review_claims.c.sha1.in_(list(sha1s)), review_claims.c.expires_at > now)
        return await self.db.read(lambda c: {row["sha1"]: _claim(row) for row in c.execute(stmt).mappings()})

    async def release_claim(self, sha1: str, reviewer: str) -> None:
        stmt = sa.delete(review_claims).where(review_claims.c.sha1 == sha1, review_claims.c.reviewer == reviewer)
        await self.db.write(lambda c: c.execute(stmt))

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
                                                           note=d.note, pdq=d.allowlist_pdq).on_conflict_do_nothing())
            c.execute(sa.delete(review_claims).where(review_claims.c.sha1 == d.sha1))
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
        if filt.uploader:
            inner.append(m.c.sha1.in_(sa.select(m.c.sha1).where(m.c.uploader == filt.uploader)))
        if filt.query and filt.query.strip():
            inner.append(m.c.sha1.in_(sa.select(m.c.sha1).where(_search(filt.query))))
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
                    for col in ("category", "wiki", "matcher", "bank")}

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

