"""Per-period request counters (a paid API's monthly budget) that survive restarts and replicas."""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.store.db import Database
from service.store.schema import budgets as t


class SqlBudget:
    """:class:`~service.store.base.BudgetStore`.  The counter row is read ``FOR UPDATE``."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def reserve_budget(self, name: str, period: str, want: int, limit: int) -> tuple[int, int]:
        now = self.clock()
        key = (t.c.name == name, t.c.period == period)

        def tx(c: Connection) -> tuple[int, int]:
            c.execute(self.db.insert(t).values(name=name, period=period, used=0, updated_at=now)
                      .on_conflict_do_nothing())
            used = int(c.execute(sa.select(t.c.used).where(*key).with_for_update()).scalar_one())
            granted = max(0, min(want, limit - used))
            if granted:
                c.execute(sa.update(t).where(*key).values(used=t.c.used + granted, updated_at=now))
            return granted, used + granted

        return await self.db.write(tx)

    async def release_budget(self, name: str, period: str, count: int) -> None:
        left = t.c.used - count
        stmt = (sa.update(t).where(t.c.name == name, t.c.period == period)
                .values(used=sa.case((left < 0, 0), else_=left), updated_at=self.clock()))
        await self.db.write(lambda c: c.execute(stmt))

    async def budget_used(self, name: str, period: str) -> int:
        stmt = sa.select(t.c.used).where(t.c.name == name, t.c.period == period)
        return int(await self.db.read(lambda c: c.execute(stmt).scalar() or 0))
