"""PostgreSQL store: the same interface as the SQLite store, safe for many replicas at once.

Selected by ``store.url: postgresql://...``.  psycopg 3 with its connection pool; every method is one
transaction.  What keeps concurrent workers from doing anything twice is the database's own
machinery, never a lock of ours:

* an action (email, takedown) is inserted with ``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING``:
  only the replica whose insert created the row gets it back, so a match is acted on once;
* outbox items are claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` and leased (``next_attempt_at``
  pushed ``store.outbox_lease`` seconds ahead) until marked done, retried or failed: two replicas never
  perform one item at the same time, and a replica that died mid-way gives its items back when the
  lease runs out;
* scans, events, matches and checkpoints are upserts on their keys; read-modify-write rows (remote
  scan failures, budgets) are read ``FOR UPDATE``.  A SHA-1 is routed to one worker at a time by the
  work topic's key, and every later upload of it reuses the stored scan.

The schema is versioned in ``schema_version``; migrations run under a transaction-level advisory
lock, so replicas starting together migrate once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from service.models import Match, UploadEvent
from service.store.base import (
    REMOTE_CLEAN,
    REMOTE_FAILED,
    REMOTE_SEEN,
    NewAction,
    OutboxItem,
    RemoteScan,
    RemoteScanRow,
    ScanRecord,
)
from service.store.postgres_review import ReviewPostgresMixin
from service.store.sqlite import StoreError, upload_to_json
from service.store.sqlite_common import remote_row

T = TypeVar("T")
Conn = psycopg.AsyncConnection[dict[str, Any]]

_MIGRATION_LOCK = 0x6D6D5F73636865  # pg_advisory_xact_lock key for schema migrations

MIGRATIONS: tuple[str, ...] = (
    # 1: the pipeline, the outbox, checkpoints, remote scans and budgets
    """
    CREATE TABLE checkpoints (
        name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE events (
        event_id TEXT PRIMARY KEY, wiki TEXT NOT NULL, title TEXT NOT NULL, sha1 TEXT,
        log_action TEXT NOT NULL, outcome TEXT NOT NULL, finished_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX events_finished_at ON events (finished_at);
    CREATE TABLE scans (
        sha1 TEXT PRIMARY KEY, outcome TEXT NOT NULL, bank_version TEXT NOT NULL,
        scanned_at DOUBLE PRECISION NOT NULL, pdq TEXT, pdq_quality INTEGER, md5 TEXT,
        matches TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE matches (
        id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, wiki TEXT NOT NULL, title TEXT NOT NULL,
        sha1 TEXT NOT NULL, uploader TEXT, upload_time TEXT NOT NULL, log_action TEXT NOT NULL,
        page_url TEXT NOT NULL, matcher TEXT NOT NULL, bank TEXT NOT NULL, category TEXT NOT NULL,
        hash_id TEXT NOT NULL, hash_value TEXT NOT NULL, distance INTEGER, source TEXT,
        details TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (wiki, title, sha1, matcher, bank, hash_id)
    );
    CREATE INDEX matches_created_at ON matches (created_at);
    CREATE INDEX matches_sha1 ON matches (sha1);
    CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0, created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, last_error TEXT, result TEXT
    );
    CREATE INDEX outbox_due ON outbox (state, kind, next_attempt_at);
    CREATE TABLE remote_scans (
        sha1 TEXT NOT NULL, matcher TEXT NOT NULL, state TEXT NOT NULL, scanned_at DOUBLE PRECISION NOT NULL,
        clean_at DOUBLE PRECISION, failures INTEGER NOT NULL DEFAULT 0, next_attempt_at DOUBLE PRECISION,
        upload TEXT, last_error TEXT,
        PRIMARY KEY (sha1, matcher)
    );
    CREATE INDEX remote_scans_retry ON remote_scans (matcher, state, next_attempt_at);
    CREATE INDEX remote_scans_clean ON remote_scans (matcher, state, clean_at);
    CREATE TABLE budgets (
        name TEXT NOT NULL, period TEXT NOT NULL, used INTEGER NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, period)
    );
    """,
    # 2: review queue: append-only audit log, per-bank allowlist, review decisions, reviewer sessions
    """
    CREATE TABLE audit_log (
        id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        sha1 TEXT, wiki TEXT, title TEXT, note TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_log_sha1 ON audit_log (sha1, id);
    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
    CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
    CREATE TABLE allowlist (
        bank TEXT NOT NULL, sha1 TEXT NOT NULL, added_by TEXT NOT NULL, added_at DOUBLE PRECISION NOT NULL,
        note TEXT NOT NULL DEFAULT '', PRIMARY KEY (sha1, bank)
    );
    CREATE TABLE review_state (
        sha1 TEXT PRIMARY KEY, state TEXT NOT NULL, reviewer TEXT NOT NULL, decided_at DOUBLE PRECISION NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE review_sessions (
        token_hash TEXT PRIMARY KEY, reviewer TEXT NOT NULL, csrf TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_PUT_EVENT = (
    "INSERT INTO events (event_id, wiki, title, sha1, log_action, outcome, finished_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO UPDATE SET "
    "outcome = excluded.outcome, finished_at = excluded.finished_at"
)
_PUT_SCAN = (
    "INSERT INTO scans (sha1, outcome, bank_version, scanned_at, pdq, pdq_quality, md5, matches) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sha1) DO UPDATE SET outcome = excluded.outcome, "
    "bank_version = excluded.bank_version, scanned_at = excluded.scanned_at, pdq = excluded.pdq, "
    "pdq_quality = excluded.pdq_quality, md5 = excluded.md5, matches = excluded.matches"
)
_SEEN = "SELECT 1 FROM events WHERE event_id = %s AND outcome NOT LIKE 'error:%%'"


def _scan_params(r: ScanRecord) -> tuple[Any, ...]:
    matches = json.dumps([m.to_dict() for m in r.matches])
    return (r.sha1, r.outcome, r.bank_version, r.scanned_at, r.pdq, r.pdq_quality, r.md5, matches)


def _scan(row: dict[str, Any]) -> ScanRecord:
    return ScanRecord(
        sha1=row["sha1"], outcome=row["outcome"], bank_version=row["bank_version"], scanned_at=row["scanned_at"],
        pdq=row["pdq"], pdq_quality=row["pdq_quality"], md5=row["md5"],
        matches=tuple(Match.from_dict(m) for m in json.loads(row["matches"])),
    )


def item_from_row(row: dict[str, Any]) -> OutboxItem:
    return OutboxItem(
        id=row["id"], key=row["key"], kind=row["kind"], payload=json.loads(row["payload"]),
        attempts=row["attempts"], state=row["state"], next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"], last_error=row["last_error"], result=row["result"],
    )




async def _put_remote(c: Conn, r: RemoteScan) -> None:
    """Upsert one remote state inside the caller's transaction (the old row is read FOR UPDATE)."""
    upload = upload_to_json(r.upload) if r.upload is not None else None
    cur = await c.execute("SELECT failures, clean_at FROM remote_scans WHERE sha1 = %s AND matcher = %s FOR UPDATE",
                          (r.sha1, r.matcher))
    old = await cur.fetchone()
    if r.state == REMOTE_SEEN:
        if old is not None and upload is not None:
            await c.execute("UPDATE remote_scans SET upload = %s WHERE sha1 = %s AND matcher = %s",
                            (upload, r.sha1, r.matcher))
        return
    failures, next_at, clean_at = r.transition(
        old["failures"] if old is not None else None, old["clean_at"] if old is not None else None
    )
    await c.execute(
        "INSERT INTO remote_scans (sha1, matcher, state, scanned_at, clean_at, failures, next_attempt_at, upload, "
        "last_error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sha1, matcher) DO UPDATE SET "
        "state = excluded.state, scanned_at = excluded.scanned_at, clean_at = excluded.clean_at, "
        "failures = excluded.failures, next_attempt_at = excluded.next_attempt_at, "
        "upload = COALESCE(excluded.upload, remote_scans.upload), last_error = excluded.last_error",
        (r.sha1, r.matcher, r.state, r.at, clean_at, failures, next_at, upload, r.error),
    )


async def insert_actions(c: Conn, actions: Sequence[NewAction], now: float) -> list[OutboxItem]:
    """Insert actions whose key is new; returns only the rows this call created."""
    created: list[OutboxItem] = []
    for a in actions:
        cur = await c.execute(
            "INSERT INTO outbox (key, kind, payload, created_at, updated_at) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (key) DO NOTHING RETURNING *", (a.key, a.kind, json.dumps(a.payload), now, now))
        row = await cur.fetchone()
        if row is not None:
            created.append(item_from_row(row))
    return created


class PostgresStore(ReviewPostgresMixin):
    """Implements every protocol in :mod:`service.store.base` on PostgreSQL."""

    def __init__(self, url: str, *, outbox_lease: float = 300.0, pool_size: int = 8,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.outbox_lease = outbox_lease
        self.pool_size = pool_size
        self._clock = clock
        self._pool: AsyncConnectionPool[Conn] | None = None
        # Outbox items this process claimed and has not finished, per kind: a dispatcher asks for
        # ``free + in flight`` items, so only ``limit - claimed`` new ones are claimed.
        self._claimed: dict[str, set[int]] = {}

    # ------------------------------------------------------------------ plumbing

    @property
    def where(self) -> str:
        """The URL without credentials, for error messages."""
        return self.url.split("@")[-1]

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:  # one direct connection first: a wrong URL or a server that is down fails at once, clearly
            probe = await psycopg.AsyncConnection.connect(self.url, connect_timeout=10)
            await probe.close()
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.where}: {exc}") from exc
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.url, min_size=1, max_size=self.pool_size, open=False, timeout=30,
            kwargs={"row_factory": dict_row, "autocommit": False},
        )
        try:
            await pool.open(wait=True, timeout=30)
        except Exception as exc:
            await pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {self.where}: {exc}") from exc
        self._pool = pool
        try:
            await self._tx(self._migrate)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _migrate(self, c: Conn) -> None:
        await c.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        cur = await c.execute("SELECT version FROM schema_version")
        row = await cur.fetchone()
        current = int(row["version"]) if row is not None else 0
        if row is None:
            await c.execute("INSERT INTO schema_version (version) VALUES (0)")
        if current > SCHEMA_VERSION:
            raise StoreError(f"database schema version {current} is newer than this program's ({SCHEMA_VERSION})")
        for version in range(current, SCHEMA_VERSION):
            await c.execute(MIGRATIONS[version])  # type: ignore[arg-type]
            await c.execute("UPDATE schema_version SET version = %s", (version + 1,))

    async def _tx(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction on a pooled connection; database errors become StoreError."""
        pool = self._pool
        if pool is None:
            raise StoreError("store is not open")
        try:
            async with pool.connection() as conn, conn.transaction():
                return await fn(conn)
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error: {exc}") from exc

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        async def q(c: Conn) -> dict[str, Any] | None:
            cur = await c.execute(sql, params)  # type: ignore[arg-type]
            return await cur.fetchone()

        return await self._tx(q)

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async def q(c: Conn) -> list[dict[str, Any]]:
            cur = await c.execute(sql, params)  # type: ignore[arg-type]
            return await cur.fetchall()

        return await self._tx(q)

    async def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        async def q(c: Conn) -> int:
            cur = await c.execute(sql, params)  # type: ignore[arg-type]
            return cur.rowcount

        return await self._tx(q)

    async def ping(self) -> None:
        await self._one("SELECT 1")

    # ------------------------------------------------------------------ checkpoints

    async def get_checkpoint(self, name: str) -> Any | None:
        row = await self._one("SELECT value FROM checkpoints WHERE name = %s", (name,))
        return None if row is None else json.loads(row["value"])

    async def set_checkpoint(self, name: str, value: Any) -> None:
        await self._exec(
            "INSERT INTO checkpoints (name, value, updated_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (name, json.dumps(value, separators=(",", ":")), self._clock()))

    async def delete_checkpoint(self, name: str) -> None:
        await self._exec("DELETE FROM checkpoints WHERE name = %s", (name,))

    # ------------------------------------------------------------------ event ledger

    async def event_seen(self, event_id: str) -> bool:
        return await self._one(_SEEN, (event_id,)) is not None

    async def record_event(self, event: UploadEvent, outcome: str) -> None:
        await self._exec(_PUT_EVENT, (event.event_id, event.wiki, event.title, event.sha1, event.log_action, outcome,
                                      self._clock()))

    async def admit(self, event_id: str, sha1: str | None) -> tuple[bool, ScanRecord | None]:
        async def q(c: Conn) -> tuple[bool, ScanRecord | None]:
            cur = await c.execute(_SEEN, (event_id,))
            seen = await cur.fetchone() is not None
            if seen or sha1 is None:
                return seen, None
            cur = await c.execute("SELECT * FROM scans WHERE sha1 = %s", (sha1,))
            row = await cur.fetchone()
            return False, None if row is None else _scan(row)

        return await self._tx(q)

    async def finish(
        self, event: UploadEvent, outcome: str, scan: ScanRecord | None, remote: Sequence[RemoteScan] = ()
    ) -> None:
        now = self._clock()

        async def tx(c: Conn) -> None:
            if scan is not None:
                await c.execute(_PUT_SCAN, _scan_params(scan))
            for r in remote:
                await _put_remote(c, r)
            await c.execute(_PUT_EVENT, (event.event_id, event.wiki, event.title, event.sha1, event.log_action,
                                         outcome, now))

        await self._tx(tx)

    async def event_outcome(self, event_id: str) -> str | None:
        row = await self._one("SELECT outcome FROM events WHERE event_id = %s", (event_id,))
        return None if row is None else str(row["outcome"])

    async def prune_events(self, older_than: float) -> int:
        return await self._exec("DELETE FROM events WHERE finished_at < %s", (older_than,))

    # ------------------------------------------------------------------ scans

    async def get_scan(self, sha1: str) -> ScanRecord | None:
        row = await self._one("SELECT * FROM scans WHERE sha1 = %s", (sha1,))
        return None if row is None else _scan(row)

    async def put_scan(self, record: ScanRecord) -> None:
        await self._exec(_PUT_SCAN, _scan_params(record))

    # ------------------------------------------------------------------ matches + outbox

    async def record_matches(
        self, event: UploadEvent, sha1: str, matches: Sequence[Match], actions: Sequence[NewAction]
    ) -> list[OutboxItem]:
        now = self._clock()

        async def tx(c: Conn) -> list[OutboxItem]:
            for m in matches:
                await c.execute(
                    "INSERT INTO matches (event_id, wiki, title, sha1, uploader, upload_time, log_action, page_url, "
                    "matcher, bank, category, hash_id, hash_value, distance, source, details, created_at) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (event.event_id, event.wiki, event.title, sha1, event.uploader, event.upload_time.isoformat(),
                     event.log_action, event.page_url, m.matcher, m.bank, m.category, m.hash_id, m.hash_value,
                     m.distance, m.source, json.dumps(dict(m.details)), now),
                )
            return await insert_actions(c, actions, now)

        return await self._tx(tx)

    async def list_matches(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._all("SELECT * FROM matches ORDER BY id DESC LIMIT %s", (limit,))

    async def add_actions(self, actions: Sequence[NewAction]) -> list[OutboxItem]:
        now = self._clock()
        return await self._tx(lambda c: insert_actions(c, actions, now))

    async def due_actions(self, kind: str, now: float, limit: int) -> list[OutboxItem]:
        """Claim due items (``FOR UPDATE SKIP LOCKED``) and lease them to this process."""
        claimed = self._claimed.setdefault(kind, set())
        want = limit - len(claimed)
        if want <= 0:
            return []
        rows = await self._all(
            "UPDATE outbox SET next_attempt_at = %s, updated_at = %s WHERE id IN ("
            "  SELECT id FROM outbox WHERE state = 'pending' AND kind = %s AND next_attempt_at <= %s"
            "  ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING *",
            (now + self.outbox_lease, now, kind, now, want))
        items = sorted((item_from_row(r) for r in rows), key=lambda i: i.id)
        claimed.update(i.id for i in items)
        return items

    def _release(self, item_id: int) -> None:
        for claimed in self._claimed.values():
            claimed.discard(item_id)

    async def next_due_time(self) -> float | None:
        row = await self._one("SELECT MIN(next_attempt_at) AS t FROM outbox WHERE state = 'pending'")
        return None if row is None or row["t"] is None else float(row["t"])

    async def get_action(self, item_id: int) -> OutboxItem | None:
        row = await self._one("SELECT * FROM outbox WHERE id = %s", (item_id,))
        return None if row is None else item_from_row(row)

    async def list_actions(self, state: str | None = None) -> list[OutboxItem]:
        if state is None:
            rows = await self._all("SELECT * FROM outbox ORDER BY id")
        else:
            rows = await self._all("SELECT * FROM outbox WHERE state = %s ORDER BY id", (state,))
        return [item_from_row(r) for r in rows]

    async def mark_done(self, item_id: int, result: str) -> None:
        await self._exec(
            "UPDATE outbox SET state = 'done', result = %s, attempts = attempts + 1, updated_at = %s, "
            "last_error = NULL WHERE id = %s", (result, self._clock(), item_id))
        self._release(item_id)

    async def mark_retry(self, item_id: int, error: str, next_attempt_at: float) -> None:
        await self._exec(
            "UPDATE outbox SET attempts = attempts + 1, last_error = %s, next_attempt_at = %s, updated_at = %s "
            "WHERE id = %s", (error, next_attempt_at, self._clock(), item_id))
        self._release(item_id)

    async def mark_failed(self, item_id: int, error: str) -> None:
        await self._exec(
            "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = %s, updated_at = %s "
            "WHERE id = %s", (error, self._clock(), item_id))
        self._release(item_id)

    async def pending_count(self) -> int:
        row = await self._one("SELECT COUNT(*) AS n FROM outbox WHERE state = 'pending'")
        return int(row["n"]) if row else 0

    # ------------------------------------------------------------------ remote scans

    async def put_remote_scans(self, scans: Sequence[RemoteScan]) -> None:
        async def tx(c: Conn) -> None:
            for r in scans:
                await _put_remote(c, r)

        await self._tx(tx)

    async def get_remote_scan(self, sha1: str, matcher: str) -> RemoteScanRow | None:
        row = await self._one("SELECT * FROM remote_scans WHERE sha1 = %s AND matcher = %s", (sha1, matcher))
        return None if row is None else remote_row(row)

    async def list_remote_scans(self, matcher: str) -> list[RemoteScanRow]:
        rows = await self._all("SELECT * FROM remote_scans WHERE matcher = %s ORDER BY scanned_at", (matcher,))
        return [remote_row(r) for r in rows]

    async def due_remote_retries(self, matcher: str, now: float, limit: int) -> list[RemoteScanRow]:
        rows = await self._all(
            "SELECT * FROM remote_scans WHERE matcher = %s AND state = %s AND next_attempt_at <= %s "
            "ORDER BY next_attempt_at, scanned_at LIMIT %s", (matcher, REMOTE_FAILED, now, limit))
        return [remote_row(r) for r in rows]

    async def stale_remote_scans(self, matcher: str, clean_before: float, limit: int) -> list[RemoteScanRow]:
        rows = await self._all(
            "SELECT * FROM remote_scans WHERE matcher = %s AND state = %s AND clean_at < %s "
            "ORDER BY clean_at, sha1 LIMIT %s", (matcher, REMOTE_CLEAN, clean_before, limit))
        return [remote_row(r) for r in rows]

    async def retry_remote_failures_now(self, matcher: str, now: float) -> int:
        return await self._exec(
            "UPDATE remote_scans SET next_attempt_at = %s WHERE matcher = %s AND state = %s AND "
            "(next_attempt_at IS NULL OR next_attempt_at > %s)", (now, matcher, REMOTE_FAILED, now))

    # ------------------------------------------------------------------ budgets

    async def reserve_budget(self, name: str, period: str, want: int, limit: int) -> tuple[int, int]:
        now = self._clock()

        async def tx(c: Conn) -> tuple[int, int]:
            await c.execute("INSERT INTO budgets (name, period, used, updated_at) VALUES (%s, %s, 0, %s) "
                            "ON CONFLICT DO NOTHING", (name, period, now))
            cur = await c.execute("SELECT used FROM budgets WHERE name = %s AND period = %s FOR UPDATE",
                                  (name, period))
            row = await cur.fetchone()
            used = int(row["used"]) if row is not None else 0
            granted = max(0, min(want, limit - used))
            if granted:
                await c.execute("UPDATE budgets SET used = used + %s, updated_at = %s WHERE name = %s AND period = %s",
                                (granted, now, name, period))
            return granted, used + granted

        return await self._tx(tx)

    async def release_budget(self, name: str, period: str, count: int) -> None:
        await self._exec("UPDATE budgets SET used = GREATEST(0, used - %s), updated_at = %s "
                         "WHERE name = %s AND period = %s", (count, self._clock(), name, period))

    async def budget_used(self, name: str, period: str) -> int:
        row = await self._one("SELECT used FROM budgets WHERE name = %s AND period = %s", (name, period))
        return 0 if row is None else int(row["used"])
