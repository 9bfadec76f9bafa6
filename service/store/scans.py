"""Scan results per content (SHA-1): what was found against which version of the banks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.models import Match
from service.store.base import ScanRecord
from service.store.db import Database
from service.store.schema import scans as t

_UPDATED = ("outcome", "bank_version", "scanned_at", "pdq", "pdq_quality", "md5", "matches")
_GET = sa.select(t).where(t.c.sha1 == sa.bindparam("sha1"))


def _put(db: Database) -> sa.Insert:
    ins = db.insert(t)
    return ins.on_conflict_do_update(index_elements=[t.c.sha1], set_={k: ins.excluded[k] for k in _UPDATED})


def get_scan(conn: Connection, sha1: str) -> ScanRecord | None:
    row = conn.execute(_GET, {"sha1": sha1}).mappings().first()
    return None if row is None else scan_record(row)


def scan_record(row: Mapping[Any, Any]) -> ScanRecord:
    return ScanRecord(
        sha1=row["sha1"], outcome=row["outcome"], bank_version=row["bank_version"], scanned_at=row["scanned_at"],
        pdq=row["pdq"], pdq_quality=row["pdq_quality"], md5=row["md5"],
        matches=tuple(Match.from_dict(m) for m in json.loads(row["matches"])),
    )


def put_scan(db: Database, conn: Connection, r: ScanRecord) -> None:
    values: dict[str, Any] = {
        "sha1": r.sha1, "outcome": r.outcome, "bank_version": r.bank_version, "scanned_at": r.scanned_at,
        "pdq": r.pdq, "pdq_quality": r.pdq_quality, "md5": r.md5,
        "matches": json.dumps([m.to_dict() for m in r.matches]),
    }
    db.compiled(_put).run(conn, values)


class SqlScans:
    """:class:`~service.store.base.ScanStore`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def get_scan(self, sha1: str) -> ScanRecord | None:
        return await self.db.read(lambda c: get_scan(c, sha1))

    async def put_scan(self, record: ScanRecord) -> None:
        await self.db.write(lambda c: put_scan(self.db, c, record))
