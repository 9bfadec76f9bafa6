"""The review queue's part of the PostgreSQL store (the SQLite one is :mod:`service.store.sqlite_review`).

The same queries in PostgreSQL's dialect; the audit log is append-only through a trigger.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from service.store.base import AuditEntry, CaseFilter, Decision, OutboxItem, ReviewCase, ReviewSession

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

_CASES = """
SELECT m.sha1 AS sha1, MIN(m.created_at) AS first_seen, MAX(m.created_at) AS last_seen,
       string_agg(DISTINCT m.category, ',') AS categories, string_agg(DISTINCT m.wiki, ',') AS wikis,
       string_agg(DISTINCT m.matcher, ',') AS matchers, string_agg(DISTINCT m.bank, ',') AS banks,
       COUNT(DISTINCT m.wiki || '|' || m.title) AS uploads,
       MAX(r.reviewer) AS decided_by, MAX(r.decided_at) AS decided_at,
       CASE WHEN MAX(r.state) = 'dismissed' THEN 'dismissed'
            WHEN MAX(r.state) IS NULL OR MAX(r.decided_at) < MAX(m.created_at) THEN 'open'
            ELSE MAX(r.state) END AS state
FROM matches m LEFT JOIN review_state r ON r.sha1 = m.sha1
{where}
GROUP BY m.sha1
"""


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(sorted(v for v in (value or "").split(",") if v))


def _case(row: dict[str, Any]) -> ReviewCase:
    return ReviewCase(
        sha1=row["sha1"], first_seen=row["first_seen"], last_seen=row["last_seen"], state=row["state"],
        categories=_split(row["categories"]), wikis=_split(row["wikis"]), matchers=_split(row["matchers"]),
        banks=_split(row["banks"]), uploads=int(row["uploads"]), decided_by=row["decided_by"],
        decided_at=row["decided_at"],
    )


def _audit(row: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        id=row["id"], at=row["at"], actor=row["actor"], action=row["action"], sha1=row["sha1"],
        wiki=row["wiki"], title=row["title"], note=row["note"], detail=json.loads(row["detail"]),
    )


def _session(row: dict[str, Any]) -> ReviewSession:
    return ReviewSession(
        token_hash=row["token_hash"], reviewer=row["reviewer"], csrf=row["csrf"], created_at=row["created_at"],
        last_seen=row["last_seen"], expires_at=row["expires_at"],
    )


async def _insert_audit(c: Any, at: float, actor: str, action: str, sha1: str | None, wiki: str | None,
                        title: str | None, note: str, detail: dict[str, Any]) -> int:
    cur = await c.execute(
        "INSERT INTO audit_log (at, actor, action, sha1, wiki, title, note, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (at, actor, action, sha1, wiki, title, note, json.dumps(detail, sort_keys=True)))
    row = await cur.fetchone()
    return int(row["id"])


class ReviewPostgresMixin:
    """Review-queue queries; relies on ``PostgresStore._tx/_one/_all/_exec`` and ``_clock``."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]

        async def _tx(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T: ...
        async def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None: ...
        async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
        async def _exec(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    # ------------------------------------------------------------------ allowlist (used by the pipeline)

    async def allowlisted_banks(self, sha1: str) -> frozenset[str]:
        rows = await self._all("SELECT bank FROM allowlist WHERE sha1 = %s", (sha1,))
        return frozenset(r["bank"] for r in rows)

    async def list_allowlist(self, limit: int = 500) -> list[dict[str, Any]]:
        return await self._all("SELECT * FROM allowlist ORDER BY added_at DESC LIMIT %s", (limit,))

    # ------------------------------------------------------------------ audit log and decisions

    async def append_audit(
        self, actor: str, action: str, *, sha1: str | None = None, wiki: str | None = None,
        title: str | None = None, note: str = "", detail: dict[str, Any] | None = None,
    ) -> int:
        now = self._clock()
        return await self._tx(lambda c: _insert_audit(c, now, actor, action, sha1, wiki, title, note, detail or {}))

    async def list_audit(self, limit: int, before_id: int | None = None, sha1: str | None = None) -> list[AuditEntry]:
        clauses: list[str] = []
        params: list[Any] = []
        if before_id is not None:
            clauses.append("id < %s")
            params.append(before_id)
        if sha1 is not None:
            clauses.append("sha1 = %s")
            params.append(sha1)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = await self._all(f"SELECT * FROM audit_log {where} ORDER BY id DESC LIMIT %s", (*params, limit))
        return [_audit(r) for r in rows]

    async def record_decision(self, decision: Decision) -> tuple[int, list[OutboxItem]]:
        from service.store.postgres import insert_actions, item_from_row

        now = self._clock()
        d = decision

        async def tx(c: Any) -> tuple[int, list[OutboxItem]]:
            audit_id = await _insert_audit(c, now, d.reviewer, d.action, d.sha1, None, getattr(d, "title", None),
                                           d.note, dict(d.detail))
            await c.execute(
                "INSERT INTO review_state (sha1, state, reviewer, decided_at, note) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (sha1) DO UPDATE SET state = excluded.state, reviewer = excluded.reviewer, "
                "decided_at = excluded.decided_at, note = excluded.note", (d.sha1, d.state, d.reviewer, now, d.note))
            for bank in d.allowlist_banks:
                await c.execute("INSERT INTO allowlist (bank, sha1, added_by, added_at, note) "
                                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                                (bank, d.sha1, d.reviewer, now, d.note))
            items = await insert_actions(c, d.actions, now)
            for key in d.retry_keys:
                cur = await c.execute("UPDATE outbox SET state = 'pending', next_attempt_at = %s, updated_at = %s "
                                      "WHERE key = %s AND state = 'failed' RETURNING *", (now, now, key))
                row = await cur.fetchone()
                if row is not None:
                    items.append(item_from_row(row))
            return audit_id, sorted(items, key=lambda i: i.id)

        return await self._tx(tx)

    async def mark_removed(self, sha1: str, at: float) -> None:
        await self._exec(
            "INSERT INTO review_state (sha1, state, reviewer, decided_at) VALUES (%s, 'removed', 'system', %s) "
            "ON CONFLICT (sha1) DO UPDATE SET state = 'removed', reviewer = 'system', decided_at = excluded.decided_at "
            "WHERE review_state.state = 'removed' OR review_state.decided_at < "
            "(SELECT MAX(created_at) FROM matches WHERE sha1 = excluded.sha1)", (sha1, at))

    # ------------------------------------------------------------------ queue

    async def review_cases(self, filt: CaseFilter, limit: int, offset: int) -> tuple[list[ReviewCase], int]:
        inner: list[str] = []
        params: list[Any] = []
        for column, value in (("category", filt.category), ("wiki", filt.wiki), ("matcher", filt.matcher)):
            if value:
                inner.append(f"m.sha1 IN (SELECT sha1 FROM matches WHERE {column} = %s)")
                params.append(value)
        where = ("WHERE " + " AND ".join(inner)) if inner else ""
        outer, outer_params = "", []
        if filt.state == "todo":
            outer = "WHERE state IN ('open', 'escalated')"
        elif filt.state:
            outer, outer_params = "WHERE state = %s", [filt.state]
        base = f"SELECT * FROM ({_CASES.format(where=where)}) AS cases {outer}"

        async def q(c: Any) -> tuple[list[ReviewCase], int]:
            cur = await c.execute(f"SELECT COUNT(*) AS n FROM ({base}) AS counted", (*params, *outer_params))
            total = (await cur.fetchone())["n"]
            cur = await c.execute(f"{base} ORDER BY last_seen DESC, sha1 LIMIT %s OFFSET %s",
                                  (*params, *outer_params, limit, offset))
            return [_case(r) for r in await cur.fetchall()], int(total)

        return await self._tx(q)

    async def review_case(self, sha1: str) -> ReviewCase | None:
        row = await self._one(_CASES.format(where="WHERE m.sha1 = %s"), (sha1,))
        return None if row is None else _case(row)

    async def case_matches(self, sha1: str) -> list[dict[str, Any]]:
        rows = await self._all("SELECT * FROM matches WHERE sha1 = %s ORDER BY created_at DESC, id", (sha1,))
        for r in rows:
            r["details"] = json.loads(r["details"] or "{}")
        return rows

    async def case_actions(self, sha1: str) -> list[OutboxItem]:
        from service.store.postgres import item_from_row

        rows = await self._all("SELECT * FROM outbox WHERE key LIKE %s OR key LIKE %s ORDER BY id",
                               (f"%:{sha1}", f"escalate:{sha1}:%"))
        return [item_from_row(r) for r in rows]

    async def case_titles(self, sha1s: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        if not sha1s:
            return {}
        rows = await self._all(
            "SELECT sha1, wiki, title FROM matches WHERE sha1 = ANY(%s) GROUP BY sha1, wiki, title "
            "ORDER BY MAX(created_at) DESC", (list(sha1s),))
        out: dict[str, list[tuple[str, str]]] = {}
        for r in rows:
            out.setdefault(r["sha1"], []).append((r["wiki"], r["title"]))
        return out

    async def filter_values(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for col in ("category", "wiki", "matcher"):
            rows = await self._all(f"SELECT DISTINCT {col} AS v FROM matches ORDER BY 1")
            out[col] = [r["v"] for r in rows]
        return out

    # ------------------------------------------------------------------ sessions

    async def create_session(self, session: ReviewSession) -> None:
        s = session
        await self._exec(
            "INSERT INTO review_sessions (token_hash, reviewer, csrf, created_at, last_seen, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)", (s.token_hash, s.reviewer, s.csrf, s.created_at, s.last_seen,
                                                s.expires_at))

    async def get_session(self, token_hash: str) -> ReviewSession | None:
        row = await self._one("SELECT * FROM review_sessions WHERE token_hash = %s", (token_hash,))
        return None if row is None else _session(row)

    async def touch_session(self, token_hash: str, now: float) -> None:
        await self._exec("UPDATE review_sessions SET last_seen = %s WHERE token_hash = %s", (now, token_hash))

    async def delete_session(self, token_hash: str) -> None:
        await self._exec("DELETE FROM review_sessions WHERE token_hash = %s", (token_hash,))

    async def prune_sessions(self, now: float) -> int:
        return await self._exec("DELETE FROM review_sessions WHERE expires_at < %s", (now,))
