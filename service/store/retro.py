"""Retroactive matching's store concerns: the hashes of every scanned file and the bank deltas matched
against them (with their progress, so a restart resumes a delta instead of repeating it)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.models import UploadEvent
from service.store.base import FileHashes, NewAction, OutboxItem, RetroDelta, RetroDeltaStatus
from service.store.db import Database
from service.store.matches import SqlMatches
from service.store.outbox import insert_actions
from service.store.schema import file_hashes as f
from service.store.schema import retro_deltas as d

_LOOKUP_BATCH = 500  # values per IN (...) list
_REFRESHED = ("md5", "pdq", "pdq_quality", "pdq_variants", "event_id", "server_url", "page_url", "uploader",
              "upload_time", "log_action", "scanned_at")


def _put(db: Database) -> sa.Insert:
    ins = db.insert(f)
    return ins.on_conflict_do_update(index_elements=[f.c.wiki, f.c.title, f.c.sha1],
                                     set_={k: ins.excluded[k] for k in _REFRESHED})


def file_row(x: FileHashes) -> dict[str, Any]:
    e = x.event
    return {"wiki": e.wiki, "title": e.title, "sha1": x.sha1, "md5": x.md5, "pdq": x.pdq, "pdq_quality": x.pdq_quality,
            "pdq_variants": x.pdq_variants,
            "event_id": e.event_id, "server_url": e.server_url, "page_url": e.page_url, "uploader": e.uploader,
            "upload_time": e.upload_time.isoformat(), "log_action": e.log_action, "scanned_at": x.scanned_at}


def file_hashes(row: Mapping[Any, Any]) -> FileHashes:
    event = UploadEvent(event_id=row["event_id"], wiki=row["wiki"], title=row["title"], server_url=row["server_url"],
                        page_url=row["page_url"], uploader=row["uploader"],
                        upload_time=datetime.fromisoformat(row["upload_time"]), log_action=row["log_action"],
                        sha1=row["sha1"])
    return FileHashes(event=event, sha1=row["sha1"], md5=row["md5"], pdq=row["pdq"], pdq_quality=row["pdq_quality"],
                      scanned_at=row["scanned_at"], id=int(row["id"]), pdq_variants=row["pdq_variants"])


def retro_delta(row: Mapping[Any, Any]) -> RetroDelta:
    return RetroDelta(
        id=int(row["id"]), bank=row["bank"], added_at=row["added_at"],
        entries=tuple((str(a), str(b), str(c), str(e)) for a, b, c, e in json.loads(row["entries"])),
        state=row["state"], progress=int(row["progress"]),
        hits=tuple((int(i), int(j), None if k is None else int(k)) for i, j, k in json.loads(row["hits"])),
        note=row["note"], created_at=row["created_at"], updated_at=row["updated_at"])


class SqlFileHashes:
    """:class:`~service.store.base.FileHashStore`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def put_file_hashes(self, files: Sequence[FileHashes]) -> None:
        if not files:
            return
        rows = [file_row(x) for x in files]
        await self.db.write(lambda c: c.execute(self.db.prepared(_put), rows))

    async def count_file_hashes(self) -> int:
        stmt = sa.select(sa.func.count()).select_from(f)
        return await self.db.read(lambda c: int(c.execute(stmt).scalar_one()))

    async def file_pdqs(self, after_id: int, limit: int) -> list[tuple[int, str, int, bytes | None]]:
        stmt = (sa.select(f.c.id, f.c.pdq, f.c.pdq_quality, f.c.pdq_variants)
                .where(f.c.id > after_id, f.c.pdq.is_not(None)).order_by(f.c.id).limit(limit))
        return await self.db.read(
            lambda c: [(int(r[0]), r[1], int(r[2] or 0), None if r[3] is None else bytes(r[3]))
                       for r in c.execute(stmt).all()])

    async def files_by_hash(self, kind: str, values: Sequence[str]) -> list[FileHashes]:
        column = {"sha1": f.c.sha1, "md5": f.c.md5}[kind]
        wanted = sorted(set(values))

        def q(c: Connection) -> list[FileHashes]:
            out = []
            for i in range(0, len(wanted), _LOOKUP_BATCH):
                stmt = sa.select(f).where(column.in_(wanted[i:i + _LOOKUP_BATCH])).order_by(f.c.id)
                out += [file_hashes(r) for r in c.execute(stmt).mappings()]
            return out

        return await self.db.read(q) if wanted else []

    async def files_by_id(self, ids: Sequence[int]) -> list[FileHashes]:
        wanted = sorted(set(ids))

        def q(c: Connection) -> list[FileHashes]:
            out = []
            for i in range(0, len(wanted), _LOOKUP_BATCH):
                stmt = sa.select(f).where(f.c.id.in_(wanted[i:i + _LOOKUP_BATCH])).order_by(f.c.id)
                out += [file_hashes(r) for r in c.execute(stmt).mappings()]
            return out

        return await self.db.read(q) if wanted else []


class SqlRetroDeltas:
    """:class:`~service.store.base.RetroDeltaStore`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def add_retro_delta(self, bank: str, added_at: float, entries: Sequence[tuple[str, str, str, str]]) -> int:
        now = self.clock()

        def tx(c: Connection) -> int:  # encoded in the store's thread: a large delta never holds up the loop
            values = {"bank": bank, "added_at": added_at, "entries": json.dumps([list(e) for e in entries]),
                      "size": len(entries), "state": "matching", "progress": 0, "hits": "[]", "note": "",
                      "created_at": now, "updated_at": now}
            return int(c.execute(sa.insert(d).values(values).returning(d.c.id)).scalar_one())

        return await self.db.write(tx)

    async def get_retro_delta(self, delta_id: int) -> RetroDelta | None:
        stmt = sa.select(d).where(d.c.id == delta_id)

        def q(c: Connection) -> RetroDelta | None:
            row = c.execute(stmt).mappings().first()
            return None if row is None else retro_delta(row)

        return await self.db.read(q)

    async def list_retro_deltas(self, states: Sequence[str] = ()) -> list[RetroDelta]:
        stmt = sa.select(d).order_by(d.c.id)
        if states:
            stmt = stmt.where(d.c.state.in_(list(states)))
        return await self.db.read(lambda c: [retro_delta(r) for r in c.execute(stmt).mappings()])

    async def retro_delta_status(self, states: Sequence[str]) -> list[RetroDeltaStatus]:
        stmt = (sa.select(d.c.id, d.c.bank, d.c.state, d.c.progress, d.c.size, d.c.created_at)
                .where(d.c.state.in_(list(states))).order_by(d.c.id))
        return await self.db.read(lambda c: [RetroDeltaStatus(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), r[5])
                                             for r in c.execute(stmt).all()])

    async def update_retro_delta(self, delta_id: int, *, state: str, progress: int,
                                 hits: Sequence[tuple[int, int, int | None]] | None = None,
                                 note: str | None = None) -> None:
        values: dict[str, Any] = {"state": state, "progress": progress, "updated_at": self.clock()}
        if note is not None:
            values["note"] = note

        def tx(c: Connection) -> None:
            if hits is not None:
                values["hits"] = json.dumps([list(h) for h in hits])
            c.execute(sa.update(d).where(d.c.id == delta_id).values(values))

        await self.db.write(tx)


class SqlRetro(SqlFileHashes, SqlRetroDeltas, SqlMatches):
    """:class:`~service.store.base.RetroStore` (they share the database and the clock)."""

    async def add_actions(self, actions: Sequence[NewAction]) -> list[OutboxItem]:
        now = self.clock()
        return await self.db.write(lambda c: insert_actions(self.db, c, actions, now))
