"""Banks filled by syncs: each one's checkpoint and sync status (``bank_sync``) and content (``bank_hashes``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.store.base import BankHash, BankSyncState
from service.store.db import Database
from service.store.schema import bank_hashes as h
from service.store.schema import bank_sync as t

_CHUNK = 5000  # rows per INSERT statement


def _state(row: Any) -> BankSyncState:
    return BankSyncState(bank=row.bank, checkpoint=None if row.checkpoint is None else json.loads(row.checkpoint),
                         last_success=row.last_success, last_attempt=row.last_attempt, last_error=row.last_error,
                         errors=row.errors)


class SqlBankSync:
    """:class:`~service.store.base.BankSyncStore`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def bank_sync_states(self) -> list[BankSyncState]:
        rows = await self.db.read(lambda c: c.execute(sa.select(t).order_by(t.c.bank)).all())
        return [_state(r) for r in rows]

    async def bank_sync_state(self, bank: str) -> BankSyncState | None:
        row = await self.db.read(lambda c: c.execute(sa.select(t).where(t.c.bank == bank)).first())
        return None if row is None else _state(row)

    async def bank_hashes(self, bank: str) -> list[BankHash]:
        stmt = sa.select(h.c.record, h.c.kind, h.c.hash, h.c.category, h.c.source, h.c.entry_id).where(
            h.c.bank == bank).order_by(h.c.record, h.c.kind, h.c.hash)
        rows = await self.db.read(lambda c: c.execute(stmt).all())
        return [BankHash(*r) for r in rows]

    def _insert(self, c: Connection, bank: str, rows: Sequence[BankHash]) -> None:
        values = [{"bank": bank, "record": r.record, "kind": r.kind, "hash": r.hash, "category": r.category,
                   "source": r.source, "entry_id": r.entry_id} for r in rows]
        for i in range(0, len(values), _CHUNK):
            c.execute(self.db.insert(h).on_conflict_do_nothing(), values[i:i + _CHUNK])

    def _checkpoint(self, c: Connection, bank: str, checkpoint: Any) -> None:
        ins = self.db.insert(t).values(bank=bank, checkpoint=json.dumps(checkpoint, separators=(",", ":")),
                                       errors=0)
        c.execute(ins.on_conflict_do_update(index_elements=[t.c.bank],
                                            set_={"checkpoint": ins.excluded.checkpoint}))

    async def apply_bank_delta(self, bank: str, records: Sequence[str], rows: Sequence[BankHash],
                               checkpoint: Any) -> None:
        keys = list(dict.fromkeys(records))

        def tx(c: Connection) -> None:
            for i in range(0, len(keys), _CHUNK):
                c.execute(sa.delete(h).where(h.c.bank == bank, h.c.record.in_(keys[i:i + _CHUNK])))
            self._insert(c, bank, rows)
            self._checkpoint(c, bank, checkpoint)

        await self.db.write(tx)

    async def replace_bank(self, bank: str, rows: Sequence[BankHash], checkpoint: Any) -> None:
        def tx(c: Connection) -> None:
            c.execute(sa.delete(h).where(h.c.bank == bank))
            self._insert(c, bank, rows)
            self._checkpoint(c, bank, checkpoint)

        await self.db.write(tx)

    async def record_bank_sync(self, bank: str, *, error: str | None) -> None:
        now = self.clock()
        ins = self.db.insert(t).values(bank=bank, last_attempt=now, last_error=error,
                                       last_success=None if error else now, errors=1 if error else 0)
        if error is None:
            update: dict[str, Any] = {"last_attempt": now, "last_error": None, "last_success": now, "errors": 0}
        else:
            update = {"last_attempt": now, "last_error": error, "errors": t.c.errors + 1}
        await self.db.write(lambda c: c.execute(ins.on_conflict_do_update(index_elements=[t.c.bank], set_=update)))
