"""Remote matchers' (PhotoDNA's) per-content states: what the rescanner retries and scans again.

The state change rule is :meth:`RemoteScan.transition`; here it is applied to the stored row, which
is read ``FOR UPDATE`` (PostgreSQL) inside the caller's write transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from service.models import UploadEvent
from service.store.base import REMOTE_CLEAN, REMOTE_FAILED, REMOTE_SEEN, RemoteScan, RemoteScanRow
from service.store.db import Database
from service.store.schema import remote_scans as t


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


def remote_row(row: RowMapping) -> RemoteScanRow:
    return RemoteScanRow(
        sha1=row["sha1"], matcher=row["matcher"], state=row["state"], scanned_at=row["scanned_at"],
        clean_at=row["clean_at"], failures=row["failures"], next_attempt_at=row["next_attempt_at"],
        upload=upload_from_json(row["upload"]), last_error=row["last_error"],
    )


_KEY = (t.c.sha1 == sa.bindparam("k_sha1"), t.c.matcher == sa.bindparam("k_matcher"))


def _old(db: Database) -> sa.Select[tuple[int, float | None]]:
    return sa.select(t.c.failures, t.c.clean_at).where(*_KEY).with_for_update()


def _move_upload(db: Database) -> sa.Update:
    return sa.update(t).where(*_KEY).values(upload=sa.bindparam("upload"))


def _put(db: Database) -> sa.Insert:
    ins = db.insert(t)
    return ins.on_conflict_do_update(index_elements=[t.c.sha1, t.c.matcher], set_={
        "state": ins.excluded.state, "scanned_at": ins.excluded.scanned_at, "clean_at": ins.excluded.clean_at,
        "failures": ins.excluded.failures, "next_attempt_at": ins.excluded.next_attempt_at,
        "upload": sa.func.coalesce(ins.excluded.upload, t.c.upload), "last_error": ins.excluded.last_error,
    })


def put_remote(db: Database, conn: Connection, r: RemoteScan) -> None:
    """Upsert one remote state (inside the caller's write transaction)."""
    upload = upload_to_json(r.upload) if r.upload is not None else None
    key = {"k_sha1": r.sha1, "k_matcher": r.matcher}
    rows = db.compiled(_old).run(conn, key)
    old = rows[0] if rows else None
    if r.state == REMOTE_SEEN:
        if old is not None and upload is not None:
            db.compiled(_move_upload).run(conn, {**key, "upload": upload})
        return
    failures, next_at, clean_at = r.transition(old["failures"] if old is not None else None,
                                               old["clean_at"] if old is not None else None)
    db.compiled(_put).run(conn, {
        "sha1": r.sha1, "matcher": r.matcher, "state": r.state, "scanned_at": r.at, "clean_at": clean_at,
        "failures": failures, "next_attempt_at": next_at, "upload": upload, "last_error": r.error})


class SqlRemoteScans:
    """:class:`~service.store.base.RemoteScanStore`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def put_remote_scans(self, scans: Sequence[RemoteScan]) -> None:
        def tx(c: Connection) -> None:
            for r in scans:
                put_remote(self.db, c, r)

        await self.db.write(tx)

    async def _rows(self, stmt: sa.Select[tuple[object, ...]]) -> list[RemoteScanRow]:
        return [remote_row(r) for r in await self.db.read(lambda c: list(c.execute(stmt).mappings()))]

    async def get_remote_scan(self, sha1: str, matcher: str) -> RemoteScanRow | None:
        rows = await self._rows(sa.select(t).where(t.c.sha1 == sha1, t.c.matcher == matcher))
        return rows[0] if rows else None

    async def list_remote_scans(self, matcher: str) -> list[RemoteScanRow]:
        return await self._rows(sa.select(t).where(t.c.matcher == matcher).order_by(t.c.scanned_at))

    async def due_remote_retries(self, matcher: str, now: float, limit: int) -> list[RemoteScanRow]:
        return await self._rows(
            sa.select(t).where(t.c.matcher == matcher, t.c.state == REMOTE_FAILED, t.c.next_attempt_at <= now)
            .order_by(t.c.next_attempt_at, t.c.scanned_at).limit(limit))

    async def stale_remote_scans(self, matcher: str, clean_before: float, limit: int) -> list[RemoteScanRow]:
        return await self._rows(
            sa.select(t).where(t.c.matcher == matcher, t.c.state == REMOTE_CLEAN, t.c.clean_at < clean_before)
            .order_by(t.c.clean_at, t.c.sha1).limit(limit))

    async def retry_remote_failures_now(self, matcher: str, now: float) -> int:
        stmt = (sa.update(t).where(t.c.matcher == matcher, t.c.state == REMOTE_FAILED,
                                   sa.or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at > now))
                .values(next_attempt_at=now))
        return await self.db.write(lambda c: c.execute(stmt).rowcount)
