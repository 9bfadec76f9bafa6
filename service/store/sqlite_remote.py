"""Remote matchers' part of the SQLite store: per-content remote scan states and request budgets.

A mixin of :class:`service.store.sqlite.SqliteStore` (its schema is migration 2 in
:mod:`.sqlite_schema`), kept apart so each file has one reason to change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from service.store.base import REMOTE_CLEAN, REMOTE_FAILED, REMOTE_SEEN, RemoteScan, RemoteScanRow
from service.store.sqlite_common import remote_row, transaction, upload_to_json

T = TypeVar("T")




def _put_remote(c: sqlite3.Connection, r: RemoteScan) -> None:
    """Upsert one remote state (inside the caller's transaction)."""
    upload = upload_to_json(r.upload) if r.upload is not None else None
    old = c.execute("SELECT failures, clean_at FROM remote_scans WHERE sha1 = ? AND matcher = ?",
                    (r.sha1, r.matcher)).fetchone()
    if r.state == REMOTE_SEEN:
        if old is not None and upload is not None:
            c.execute("UPDATE remote_scans SET upload = ? WHERE sha1 = ? AND matcher = ?", (upload, r.sha1, r.matcher))
        return
    failures, next_at, clean_at = r.transition(
        old["failures"] if old is not None else None, old["clean_at"] if old is not None else None
    )
    c.execute(
        "INSERT INTO remote_scans (sha1, matcher, state, scanned_at, clean_at, failures, next_attempt_at, upload, "
        "last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha1, matcher) DO UPDATE SET "
        "state = excluded.state, scanned_at = excluded.scanned_at, clean_at = excluded.clean_at, "
        "failures = excluded.failures, next_attempt_at = excluded.next_attempt_at, "
        "upload = COALESCE(excluded.upload, remote_scans.upload), last_error = excluded.last_error",
        (r.sha1, r.matcher, r.state, r.at, clean_at, failures, next_at, upload, r.error),
    )


class RemoteSqliteMixin:
    """Remote scan and budget queries; relies on ``SqliteStore._run`` and ``SqliteStore._clock``."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]

        async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

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
        return None if row is None else remote_row(row)

    async def list_remote_scans(self, matcher: str) -> list[RemoteScanRow]:
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM remote_scans WHERE matcher = ? ORDER BY scanned_at", (matcher,)).fetchall())
        return [remote_row(r) for r in rows]

    async def due_remote_retries(self, matcher: str, now: float, limit: int) -> list[RemoteScanRow]:
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM remote_scans WHERE matcher = ? AND state = ? AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at, scanned_at LIMIT ?", (matcher, REMOTE_FAILED, now, limit)).fetchall())
        return [remote_row(r) for r in rows]

    async def stale_remote_scans(self, matcher: str, clean_before: float, limit: int) -> list[RemoteScanRow]:
        rows = await self._run(lambda c: c.execute(
            "SELECT * FROM remote_scans WHERE matcher = ? AND state = ? AND clean_at < ? "
            "ORDER BY clean_at, sha1 LIMIT ?", (matcher, REMOTE_CLEAN, clean_before, limit)).fetchall())
        return [remote_row(r) for r in rows]

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
