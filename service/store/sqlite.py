"""SQLite store: scans, handled events, matches, the action outbox and checkpoints.

One connection, used from one dedicated thread, so the event loop never blocks on disk and SQLite
never sees two threads.  WAL journal; every write is its own transaction (or one transaction for
matches plus their actions).  The schema is versioned with ``PRAGMA user_version``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from service.errors import ServiceError
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
from service.store.sqlite_common import fetch_outbox_items, insert_actions, outbox_item, transaction
from service.store.sqlite_review import ReviewSqliteMixin

T = TypeVar("T")

MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE checkpoints (
        name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL
    );
    CREATE TABLE events (
        event_id TEXT PRIMARY KEY, wiki TEXT NOT NULL, title TEXT NOT NULL, sha1 TEXT,
        log_action TEXT NOT NULL, outcome TEXT NOT NULL, finished_at REAL NOT NULL
    );
    CREATE INDEX events_finished_at ON events (finished_at);
    CREATE TABLE scans (
        sha1 TEXT PRIMARY KEY, outcome TEXT NOT NULL, bank_version TEXT NOT NULL, scanned_at REAL NOT NULL,
        pdq TEXT, pdq_quality INTEGER, md5 TEXT, matches TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE matches (
        id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, wiki TEXT NOT NULL, title TEXT NOT NULL,
        sha1 TEXT NOT NULL, uploader TEXT, upload_time TEXT NOT NULL, log_action TEXT NOT NULL,
        page_url TEXT NOT NULL, matcher TEXT NOT NULL, bank TEXT NOT NULL, category TEXT NOT NULL,
        hash_id TEXT NOT NULL, hash_value TEXT NOT NULL, distance INTEGER, source TEXT,
        details TEXT NOT NULL, created_at REAL NOT NULL,
        UNIQUE (wiki, title, sha1, matcher, bank, hash_id)
    );
    CREATE INDEX matches_created_at ON matches (created_at);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        last_error TEXT, result TEXT
    );
    CREATE INDEX outbox_due ON outbox (state, kind, next_attempt_at);
    """,
    # 2: remote matchers' per-content states (rescan, retry schedule) and request budgets
    """
    CREATE TABLE remote_scans (
        sha1 TEXT NOT NULL, matcher TEXT NOT NULL, state TEXT NOT NULL, scanned_at REAL NOT NULL,
        clean_at REAL, failures INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL, upload TEXT,
        last_error TEXT,
        PRIMARY KEY (sha1, matcher)
    );
    CREATE INDEX remote_scans_retry ON remote_scans (matcher, state, next_attempt_at);
    CREATE INDEX remote_scans_clean ON remote_scans (matcher, state, clean_at);
    CREATE TABLE budgets (
        name TEXT NOT NULL, period TEXT NOT NULL, used INTEGER NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (name, period)
    );
    """,
    # 3: review queue: append-only audit log, per-bank allowlist, review decisions, reviewer sessions
    """
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        sha1 TEXT, wiki TEXT, title TEXT, note TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_log_sha1 ON audit_log (sha1, id);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TABLE allowlist (
        bank TEXT NOT NULL, sha1 TEXT NOT NULL, added_by TEXT NOT NULL, added_at REAL NOT NULL,
        note TEXT NOT NULL DEFAULT '', PRIMARY KEY (sha1, bank)
    );
    CREATE TABLE review_state (
        sha1 TEXT PRIMARY KEY, state TEXT NOT NULL, reviewer TEXT NOT NULL, decided_at REAL NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE review_sessions (
        token_hash TEXT PRIMARY KEY, reviewer TEXT NOT NULL, csrf TEXT NOT NULL, created_at REAL NOT NULL,
        last_seen REAL NOT NULL, expires_at REAL NOT NULL
    );
    CREATE INDEX matches_sha1 ON matches (sha1);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(ServiceError):
    """The store cannot be opened or used."""

    retriable = True


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; refuse a database written by a newer version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise StoreError(f"database schema version {current} is newer than this program's ({SCHEMA_VERSION})")
    for version in range(current, SCHEMA_VERSION):
        with conn:
            conn.executescript(MIGRATIONS[version])
            conn.execute(f"PRAGMA user_version = {version + 1}")
    return SCHEMA_VERSION


_PUT_EVENT = (
    "INSERT INTO events (event_id, wiki, title, sha1, log_action, outcome, finished_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE SET "
    "outcome = excluded.outcome, finished_at = excluded.finished_at"
)
_PUT_SCAN = (
    "INSERT INTO scans (sha1, outcome, bank_version, scanned_at, pdq, pdq_quality, md5, matches) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha1) DO UPDATE SET outcome = excluded.outcome, "
    "bank_version = excluded.bank_version, scanned_at = excluded.scanned_at, pdq = excluded.pdq, "
    "pdq_quality = excluded.pdq_quality, md5 = excluded.md5, matches = excluded.matches"
)


def _scan_params(r: ScanRecord) -> tuple[Any, ...]:
    matches = json.dumps([m.to_dict() for m in r.matches])
    return (r.sha1, r.outcome, r.bank_version, r.scanned_at, r.pdq, r.pdq_quality, r.md5, matches)


def _scan(row: sqlite3.Row) -> ScanRecord:
    return ScanRecord(
        sha1=row["sha1"],
        outcome=row["outcome"],
        bank_version=row["bank_version"],
        scanned_at=row["scanned_at"],
        pdq=row["pdq"],
        pdq_quality=row["pdq_quality"],
        md5=row["md5"],
        matches=tuple(Match.from_dict(m) for m in json.loads(row["matches"])),
    )


def upload_to_json(event: UploadEvent) -> str:
    return json.dumps({
        "event_id": event.event_id, "wiki": event.wiki, "title": event.title, "server_url": event.server_url,
        "page_url": event.page_url, "uploader": event.uploader, "upload_time": event.upload_time.isoformat(),
        "log_action": event.log_action, "sha1": event.sha1,
    }, separators=(",", ":"))


def upload_from_json(text: str | None) -> UploadEvent | None:
    if not text:
        return None
    d = json.loads(text)
    return UploadEvent(
        event_id=d["event_id"], wiki=d["wiki"], title=d["title"], server_url=d.get("server_url", ""),
        page_url=d.get("page_url", ""), uploader=d.get("uploader"),
        upload_time=datetime.fromisoformat(d["upload_time"]), log_action=d.get("log_action", "upload"),
        sha1=d.get("sha1"),
    )


def _remote_row(row: sqlite3.Row) -> RemoteScanRow:
    return RemoteScanRow(
        sha1=row["sha1"], matcher=row["matcher"], state=row["state"], scanned_at=row["scanned_at"],
        clean_at=row["clean_at"], failures=row["failures"], next_attempt_at=row["next_attempt_at"],
        upload=upload_from_json(row["upload"]), last_error=row["last_error"],
    )


def _put_remote(c: sqlite3.Connection, r: RemoteScan) -> None:
    """Upsert one remote state (inside the caller's transaction)."""
    upload = upload_to_json(r.upload) if r.upload is not None else None
    old = c.execute("SELECT failures, clean_at FROM remote_scans WHERE sha1 = ? AND matcher = ?",
                    (r.sha1, r.matcher)).fetchone()
    if r.state == REMOTE_SEEN:
        if old is not None and upload is not None:
            c.execute("UPDATE remote_scans SET upload = ? WHERE sha1 = ? AND matcher = ?", (upload, r.sha1, r.matcher))
        return
    failures = 0
    next_at: float | None = None
    clean_at = old["clean_at"] if old is not None else None
    if r.state == REMOTE_FAILED:
        failures = (old["failures"] if old is not None else 0) + 1
        if r.retry_delays:
            next_at = r.at + r.retry_delays[min(failures, len(r.retry_delays)) - 1]
    elif r.state == REMOTE_CLEAN:
        clean_at = r.at
    c.execute(
        "INSERT INTO remote_scans (sha1, matcher, state, scanned_at, clean_at, failures, next_attempt_at, upload, "
        "last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha1, matcher) DO UPDATE SET "
        "state = excluded.state, scanned_at = excluded.scanned_at, clean_at = excluded.clean_at, "
        "failures = excluded.failures, next_attempt_at = excluded.next_attempt_at, "
        "upload = COALESCE(excluded.upload, remote_scans.upload), last_error = excluded.last_error",
        (r.sha1, r.matcher, r.state, r.at, clean_at, failures, next_at, upload, r.error),
    )


class SqliteStore(ReviewSqliteMixin):
    """Implements every protocol in :mod:`service.store.base`."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ plumbing

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        try:
            self._conn = await self._run_raw(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            migrate(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
        return conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._run_raw(conn.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _run_raw(self, fn: Callable[[], T]) -> T:
        assert self._executor is not None, "store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("store is not open")

        def call() -> T:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite error: {exc}") from exc

        return await self._run_raw(call)

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    # ------------------------------------------------------------------ checkpoints

    async def get_checkpoint(self, name: str) -> Any | None:
        row = await self._run(
            lambda c: c.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else json.loads(row[0])

    async def set_checkpoint(self, name: str, value: Any) -> None:
        text = json.dumps(value, separators=(",", ":"))
        now = self._clock()
        await self._run(
            lambda c: c.execute(
                "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (name, text, now),
            )
        )

    async def delete_checkpoint(self, name: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM checkpoints WHERE name = ?", (name,)))

    # ------------------------------------------------------------------ event ledger

    async def event_seen(self, event_id: str) -> bool:
        row = await self._run(
            lambda c: c.execute(
                "SELECT 1 FROM events WHERE event_id = ? AND outcome NOT LIKE 'error:%'", (event_id,)
            ).fetchone()
        )
        return row is not None

    async def record_event(self, event: UploadEvent, outcome: str) -> None:
        now = self._clock()
        await self._run(
            lambda c: c.execute(
                _PUT_EVENT, (event.event_id, event.wiki, event.title, event.sha1, event.log_action, outcome, now)
            )
        )

    # ------------------------------------------------------------------ pipeline fast path

    async def admit(self, event_id: str, sha1: str | None) -> tuple[bool, ScanRecord | None]:
        """One round trip at intake: was this event handled already, and what is known of its SHA-1."""

        def q(c: sqlite3.Connection) -> tuple[bool, ScanRecord | None]:
            seen = c.execute(
                "SELECT 1 FROM events WHERE event_id = ? AND outcome NOT LIKE 'error:%'", (event_id,)
            ).fetchone()
            if seen is not None or sha1 is None:
                return seen is not None, None
            row = c.execute("SELECT * FROM scans WHERE sha1 = ?", (sha1,)).fetchone()
            return False, None if row is None else _scan(row)

        return await self._run(q)

    async def finish(
        self, event: UploadEvent, outcome: str, scan: ScanRecord | None, remote: Sequence[RemoteScan] = ()
    ) -> None:
        """Record an event's outcome (and the scan result, when there is a new one, and remote matchers'
        states) in one transaction."""
        now = self._clock()

        def tx(c: sqlite3.Connection) -> None:
            with transaction(c):
                if scan is not None:
                    c.execute(_PUT_SCAN, _scan_params(scan))
                for r in remote:
                    _put_remote(c, r)
                c.execute(_PUT_EVENT, (event.event_id, event.wiki, event.title, event.sha1, event.log_action,
                                       outcome, now))

        await self._run(tx)

    async def event_outcome(self, event_id: str) -> str | None:
        row = await self._run(
            lambda c: c.execute("SELECT outcome FROM events WHERE event_id = ?", (event_id,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def prune_events(self, older_than: float) -> int:
        cur = await self._run(lambda c: c.execute("DELETE FROM events WHERE finished_at < ?", (older_than,)))
        return cur.rowcount

    # ------------------------------------------------------------------ scans

    async def get_scan(self, sha1: str) -> ScanRecord | None:
        row = await self._run(lambda c: c.execute("SELECT * FROM scans WHERE sha1 = ?", (sha1,)).fetchone())
        return None if row is None else _scan(row)

    async def put_scan(self, record: ScanRecord) -> None:
        await self._run(lambda c: c.execute(_PUT_SCAN, _scan_params(record)))

    # ------------------------------------------------------------------ matches + outbox

    async def record_matches(
        self, event: UploadEvent, sha1: str, matches: Sequence[Match], actions: Sequence[NewAction]
    ) -> list[OutboxItem]:
        now = self._clock()

        def tx(c: sqlite3.Connection) -> list[OutboxItem]:
            with transaction(c):
                for m in matches:
                    c.execute(
                        "INSERT INTO matches (event_id, wiki, title, sha1, uploader, upload_time, log_action, "
                        "page_url, matcher, bank, category, hash_id, hash_value, distance, source, details, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT DO NOTHING",
                        (
                            event.event_id, event.wiki, event.title, sha1, event.uploader,
                            event.upload_time.isoformat(), event.log_action, event.page_url, m.matcher,
                            m.bank, m.category, m.hash_id, m.hash_value, m.distance, m.source,
                            json.dumps(dict(m.details)), now,
                        ),
                    )
                ids = insert_actions(c, actions, now)
            return fetch_outbox_items(c, ids)

        return await self._run(tx)

    async def list_matches(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._run(
            lambda c: c.execute("SELECT * FROM matches ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        )
        return [dict(r) for r in rows]

    async def add_actions(self, actions: Sequence[NewAction]) -> list[OutboxItem]:
        now = self._clock()

        def tx(c: sqlite3.Connection) -> list[OutboxItem]:
            with transaction(c):
                ids = insert_actions(c, actions, now)
            return fetch_outbox_items(c, ids)

        return await self._run(tx)

    async def due_actions(self, kind: str, now: float, limit: int) -> list[OutboxItem]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT * FROM outbox WHERE state = 'pending' AND kind = ? AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at, id LIMIT ?",
                (kind, now, limit),
            ).fetchall()
        )
        return [outbox_item(r) for r in rows]

    async def next_due_time(self) -> float | None:
        row = await self._run(
            lambda c: c.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'").fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def get_action(self, item_id: int) -> OutboxItem | None:
        row = await self._run(lambda c: c.execute("SELECT * FROM outbox WHERE id = ?", (item_id,)).fetchone())
        return None if row is None else outbox_item(row)

    async def list_actions(self, state: str | None = None) -> list[OutboxItem]:
        if state is None:
            rows = await self._run(lambda c: c.execute("SELECT * FROM outbox ORDER BY id").fetchall())
        else:
            rows = await self._run(
                lambda c: c.execute("SELECT * FROM outbox WHERE state = ? ORDER BY id", (state,)).fetchall()
            )
        return [outbox_item(r) for r in rows]

    async def mark_done(self, item_id: int, result: str) -> None:
        now = self._clock()
        await self._run(
            lambda c: c.execute(
                "UPDATE outbox SET state = 'done', result = ?, attempts = attempts + 1, updated_at = ?, "
                "last_error = NULL WHERE id = ?",
                (result, now, item_id),
            )
        )

    async def mark_retry(self, item_id: int, error: str, next_attempt_at: float) -> None:
        now = self._clock()
        await self._run(
            lambda c: c.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, updated_at = ? "
                "WHERE id = ?",
                (error, next_attempt_at, now, item_id),
            )
        )

    async def mark_failed(self, item_id: int, error: str) -> None:
        now = self._clock()
        await self._run(
            lambda c: c.execute(
                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?, updated_at = ? "
                "WHERE id = ?",
                (error, now, item_id),
            )
        )

    async def pending_count(self) -> int:
        row = await self._run(lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone())
        return int(row[0])

    # ------------------------------------------------------------------ remote scans

    async def put_remote_scans(self, scans: Sequence[RemoteScan]) -> None:
        def tx(c: sqlite3.Connection) -> None:
            with transaction(c):
                for r in scans:
                    _put_remote(c, r)

        await self._run(tx)

    async def get_remote_scan(self, sha1: str, matcher: str) -> RemoteScanRow | None:
        row = await self._run(lambda c: c.execute(
            "SELECT * FROM remote_scans WHERE sha1 = ? AND matcher = ?", (sha1, matcher)).fetchone())
        return None if row is None else _remote_row(row)

    async def list_remote_scans(self, matcher: str) -> list[RemoteScanRow]:
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM remote_scans WHERE matcher = ? ORDER BY scanned_at", (matcher,)).fetchall())
        return [_remote_row(r) for r in rows]

    async def due_remote_retries(self, matcher: str, now: float, limit: int) -> list[RemoteScanRow]:
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM remote_scans WHERE matcher = ? AND state = ? AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at, scanned_at LIMIT ?", (matcher, REMOTE_FAILED, now, limit)).fetchall())
        return [_remote_row(r) for r in rows]

    async def stale_remote_scans(self, matcher: str, clean_before: float, limit: int) -> list[RemoteScanRow]:
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM remote_scans WHERE matcher = ? AND state = ? AND clean_at < ? "
            "ORDER BY clean_at, sha1 LIMIT ?", (matcher, REMOTE_CLEAN, clean_before, limit)).fetchall())
        return [_remote_row(r) for r in rows]

    async def retry_remote_failures_now(self, matcher: str, now: float) -> int:
        cur = await self._run(lambda c: c.execute(
            "UPDATE remote_scans SET next_attempt_at = ? WHERE matcher = ? AND state = ? AND "
            "(next_attempt_at IS NULL OR next_attempt_at > ?)", (now, matcher, REMOTE_FAILED, now)))
        return cur.rowcount

    # ------------------------------------------------------------------ budgets

    async def reserve_budget(self, name: str, period: str, want: int, limit: int) -> tuple[int, int]:
        now = self._clock()

        def tx(c: sqlite3.Connection) -> tuple[int, int]:
            with transaction(c):
                row = c.execute("SELECT used FROM budgets WHERE name = ? AND period = ?", (name, period)).fetchone()
                used = int(row[0]) if row is not None else 0
                granted = max(0, min(want, limit - used))
                if granted:
                    c.execute(
                        "INSERT INTO budgets (name, period, used, updated_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (name, period) DO UPDATE SET used = budgets.used + ?, updated_at = ?",
                        (name, period, granted, now, granted, now),
                    )
            return granted, used + granted

        return await self._run(tx)

    async def release_budget(self, name: str, period: str, count: int) -> None:
        now = self._clock()
        await self._run(lambda c: c.execute(
            "UPDATE budgets SET used = MAX(0, used - ?), updated_at = ? WHERE name = ? AND period = ?",
            (count, now, name, period)))

    async def budget_used(self, name: str, period: str) -> int:
        row = await self._run(lambda c: c.execute(
            "SELECT used FROM budgets WHERE name = ? AND period = ?", (name, period)).fetchone())
        return 0 if row is None else int(row[0])
