"""SQLite store: scans, handled events, matches, the action outbox and checkpoints.

One connection, used from one dedicated thread, so the event loop never blocks on disk and SQLite
never sees two threads.  WAL journal; every write is its own transaction (or one transaction for
matches plus their actions).  The schema is versioned with ``PRAGMA user_version``
(:mod:`.sqlite_schema`); the review queue's and the remote matchers' queries are mixins
(:mod:`.sqlite_review`, :mod:`.sqlite_remote`).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from service.models import Match, UploadEvent
from service.store.base import NewAction, OutboxItem, RemoteScan, ScanRecord

# Re-exported so ``from service.store.sqlite import X`` keeps working after the split.
from service.store.sqlite_common import StoreError as StoreError
from service.store.sqlite_common import fetch_outbox_items, insert_actions, outbox_item, transaction
from service.store.sqlite_common import upload_from_json as upload_from_json
from service.store.sqlite_common import upload_to_json as upload_to_json
from service.store.sqlite_remote import RemoteSqliteMixin, _put_remote
from service.store.sqlite_review import ReviewSqliteMixin
from service.store.sqlite_schema import MIGRATIONS as MIGRATIONS
from service.store.sqlite_schema import SCHEMA_VERSION as SCHEMA_VERSION
from service.store.sqlite_schema import migrate as migrate

T = TypeVar("T")

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


class SqliteStore(ReviewSqliteMixin, RemoteSqliteMixin):
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
