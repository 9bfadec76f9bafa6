"""The review queue's part of the SQLite store: audit log, allowlist, decisions, sessions, queue queries.

A mixin of :class:`service.store.sqlite.SqliteStore` (its schema is migration 3 in
:mod:`.sqlite_schema`), kept apart so each file has one reason to change.  The audit log is
append-only: triggers refuse UPDATE and DELETE.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from service.store.base import (
    AuditEntry,
    CaseFilter,
    Decision,
    OutboxItem,
    ReviewCase,
    ReviewSession,
)
from service.store.sqlite_common import fetch_outbox_items, insert_actions, outbox_item, transaction

T = TypeVar("T")

# The state a case shows: a decision holds until a newer upload of the same content matched again
# (then it needs a look again), except a dismissal, which holds for good.
_CASES = """
SELECT m.sha1 AS sha1, MIN(m.created_at) AS first_seen, MAX(m.created_at) AS last_seen,
       group_concat(DISTINCT m.category) AS categories, group_concat(DISTINCT m.wiki) AS wikis,
       group_concat(DISTINCT m.matcher) AS matchers, group_concat(DISTINCT m.bank) AS banks,
       COUNT(DISTINCT m.wiki || '|' || m.title) AS uploads,
       r.reviewer AS decided_by, r.decided_at AS decided_at,
       CASE WHEN r.state = 'dismissed' THEN 'dismissed'
            WHEN r.state IS NULL OR r.decided_at < MAX(m.created_at) THEN 'open'
            ELSE r.state END AS state
FROM matches m LEFT JOIN review_state r ON r.sha1 = m.sha1
{where}
GROUP BY m.sha1
"""


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(sorted(v for v in (value or "").split(",") if v))


def _case(row: sqlite3.Row) -> ReviewCase:
    return ReviewCase(
        sha1=row["sha1"], first_seen=row["first_seen"], last_seen=row["last_seen"], state=row["state"],
        categories=_split(row["categories"]), wikis=_split(row["wikis"]), matchers=_split(row["matchers"]),
        banks=_split(row["banks"]), uploads=int(row["uploads"]), decided_by=row["decided_by"],
        decided_at=row["decided_at"],
    )


def _audit(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"], at=row["at"], actor=row["actor"], action=row["action"], sha1=row["sha1"],
        wiki=row["wiki"], title=row["title"], note=row["note"], detail=json.loads(row["detail"]),
    )


def _session(row: sqlite3.Row) -> ReviewSession:
    return ReviewSession(
        token_hash=row["token_hash"], reviewer=row["reviewer"], csrf=row["csrf"], created_at=row["created_at"],
        last_seen=row["last_seen"], expires_at=row["expires_at"],
    )


def _insert_audit(c: sqlite3.Connection, at: float, actor: str, action: str, sha1: str | None,
                  wiki: str | None, title: str | None, note: str, detail: dict[str, Any]) -> int:
    cur = c.execute(
        "INSERT INTO audit_log (at, actor, action, sha1, wiki, title, note, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (at, actor, action, sha1, wiki, title, note, json.dumps(detail, sort_keys=True)),
    )
    return int(cur.lastrowid or 0)


class ReviewSqliteMixin:
    """Review-queue queries; relies on ``SqliteStore._run`` and ``SqliteStore._clock``."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]

        async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    # ------------------------------------------------------------------ allowlist (used by the pipeline)

    async def allowlisted_banks(self, sha1: str) -> frozenset[str]:
        rows = await self._run(lambda c: c.execute("SELECT bank FROM allowlist WHERE sha1 = ?", (sha1,)).fetchall())
        return frozenset(r[0] for r in rows)

    async def list_allowlist(self, limit: int = 500) -> list[dict[str, Any]]:
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM allowlist ORDER BY added_at DESC LIMIT ?", (limit,)).fetchall())
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ audit log and decisions

    async def append_audit(
        self, actor: str, action: str, *, sha1: str | None = None, wiki: str | None = None,
        title: str | None = None, note: str = "", detail: dict[str, Any] | None = None,
    ) -> int:
        now = self._clock()
        return await self._run(lambda c: _insert_audit(c, now, actor, action, sha1, wiki, title, note, detail or {}))

    async def list_audit(self, limit: int, before_id: int | None = None, sha1: str | None = None) -> list[AuditEntry]:
        clauses: list[str] = []
        params: list[object] = []
        if before_id is not None:
            clauses.append("id < ?")
            params.append(before_id)
        if sha1 is not None:
            clauses.append("sha1 = ?")
            params.append(sha1)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = await self._run(lambda c: c.execute(
            f"SELECT * FROM audit_log {where} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall())
        return [_audit(r) for r in rows]

    async def record_decision(self, decision: Decision) -> tuple[int, list[OutboxItem]]:
        """The decision, its audit line, its allowlist rows and its outbox items, in one transaction."""
        now = self._clock()
        d = decision

        def tx(c: sqlite3.Connection) -> tuple[int, list[OutboxItem]]:
            with transaction(c):
                audit_id = _insert_audit(c, now, d.reviewer, d.action, d.sha1, None, d.title, d.note, dict(d.detail))
                c.execute(
                    "INSERT INTO review_state (sha1, state, reviewer, decided_at, note) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (sha1) DO UPDATE SET state = excluded.state, reviewer = excluded.reviewer, "
                    "decided_at = excluded.decided_at, note = excluded.note",
                    (d.sha1, d.state, d.reviewer, now, d.note),
                )
                for bank in d.allowlist_banks:
                    c.execute(
                        "INSERT INTO allowlist (bank, sha1, added_by, added_at, note) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT DO NOTHING", (bank, d.sha1, d.reviewer, now, d.note),
                    )
                ids = insert_actions(c, d.actions, now)
                for key in d.retry_keys:
                    row = c.execute(
                        "UPDATE outbox SET state = 'pending', next_attempt_at = ?, updated_at = ? "
                        "WHERE key = ? AND state = 'failed' RETURNING id", (now, now, key)).fetchone()
                    if row is not None:
                        ids.append(int(row[0]))
            return audit_id, fetch_outbox_items(c, ids)

        return await self._run(tx)

    async def mark_removed(self, sha1: str, at: float) -> None:
        # A human decision stands unless a newer upload reopened the case.
        await self._run(lambda c: c.execute(
            "INSERT INTO review_state (sha1, state, reviewer, decided_at) VALUES (?, 'removed', 'system', ?) "
            "ON CONFLICT (sha1) DO UPDATE SET state = 'removed', reviewer = 'system', decided_at = excluded.decided_at "
            "WHERE review_state.state = 'removed' OR review_state.decided_at < "
            "(SELECT MAX(created_at) FROM matches WHERE sha1 = excluded.sha1)",
            (sha1, at)))

    # ------------------------------------------------------------------ queue

    async def review_cases(self, filt: CaseFilter, limit: int, offset: int) -> tuple[list[ReviewCase], int]:
        inner, params = [], []
        for column, value in (("category", filt.category), ("wiki", filt.wiki), ("matcher", filt.matcher)):
            if value:
                inner.append(f"m.sha1 IN (SELECT sha1 FROM matches WHERE {column} = ?)")
                params.append(value)
        where = ("WHERE " + " AND ".join(inner)) if inner else ""
        outer, outer_params = "", []
        if filt.state == "todo":
            outer = "WHERE state IN ('open', 'escalated')"
        elif filt.state:
            outer, outer_params = "WHERE state = ?", [filt.state]
        base = f"SELECT * FROM ({_CASES.format(where=where)}) {outer}"

        def q(c: sqlite3.Connection) -> tuple[list[ReviewCase], int]:
            total = c.execute(f"SELECT COUNT(*) FROM ({base})", (*params, *outer_params)).fetchone()[0]
            rows = c.execute(f"{base} ORDER BY last_seen DESC, sha1 LIMIT ? OFFSET ?",
                             (*params, *outer_params, limit, offset)).fetchall()
            return [_case(r) for r in rows], int(total)

        return await self._run(q)

    async def review_case(self, sha1: str) -> ReviewCase | None:
        row = await self._run(lambda c: c.execute(_CASES.format(where="WHERE m.sha1 = ?"), (sha1,)).fetchone())
        return None if row is None else _case(row)

    async def case_matches(self, sha1: str) -> list[dict[str, Any]]:
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM matches WHERE sha1 = ? ORDER BY created_at DESC, id", (sha1,)).fetchall())
        out = []
        for r in rows:
            d = dict(r)
            d["details"] = json.loads(d["details"] or "{}")
            out.append(d)
        return out

    async def case_actions(self, sha1: str) -> list[OutboxItem]:
        """Every outbox item about this content (keys end with ``:<sha1>`` or start with ``escalate:<sha1>``)."""
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM outbox WHERE key LIKE ? OR key LIKE ? ORDER BY id",
            (f"%:{sha1}", f"escalate:{sha1}:%")).fetchall())
        return [outbox_item(r) for r in rows]

    async def case_titles(self, sha1s: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """The uploads (wiki, title) of each content, most recently matched first."""
        if not sha1s:
            return {}
        marks = ",".join("?" * len(sha1s))
        rows = await self._run(lambda c: c.execute(
            f"SELECT sha1, wiki, title FROM matches WHERE sha1 IN ({marks}) GROUP BY sha1, wiki, title "
            "ORDER BY MAX(created_at) DESC", list(sha1s)).fetchall())
        out: dict[str, list[tuple[str, str]]] = {}
        for r in rows:
            out.setdefault(r["sha1"], []).append((r["wiki"], r["title"]))
        return out

    async def filter_values(self) -> dict[str, list[str]]:
        def q(c: sqlite3.Connection) -> dict[str, list[str]]:
            return {col: [r[0] for r in c.execute(f"SELECT DISTINCT {col} FROM matches ORDER BY 1").fetchall()]
                    for col in ("category", "wiki", "matcher")}

        return await self._run(q)

    # ------------------------------------------------------------------ sessions

    async def create_session(self, session: ReviewSession) -> None:
        s = session
        await self._run(lambda c: c.execute(
            "INSERT INTO review_sessions (token_hash, reviewer, csrf, created_at, last_seen, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", (s.token_hash, s.reviewer, s.csrf, s.created_at, s.last_seen, s.expires_at)))

    async def get_session(self, token_hash: str) -> ReviewSession | None:
        row = await self._run(lambda c: c.execute(
            "SELECT * FROM review_sessions WHERE token_hash = ?", (token_hash,)).fetchone())
        return None if row is None else _session(row)

    async def touch_session(self, token_hash: str, now: float) -> None:
        await self._run(lambda c: c.execute(
            "UPDATE review_sessions SET last_seen = ? WHERE token_hash = ?", (now, token_hash)))

    async def delete_session(self, token_hash: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM review_sessions WHERE token_hash = ?", (token_hash,)))

    async def prune_sessions(self, now: float) -> int:
        cur = await self._run(lambda c: c.execute("DELETE FROM review_sessions WHERE expires_at < ?", (now,)))
        return int(cur.rowcount)


def keys_for(sha1: str, uploads: Sequence[tuple[str, str]], kind: str) -> list[str]:
    """Outbox keys of one kind for the uploads (wiki, title) of a content, as the planners write them."""
    return [f"{kind}:{wiki}:{title}:{sha1}" for wiki, title in uploads]
