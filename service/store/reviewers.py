"""Reviewers managed in the store (``mediamoderation reviewer ...``), their sign-ins and the sign-in throttle's counts.

Every sign-in attempt is one ``review_signins`` row: the admins' sign-in log, and the throttle's state
shared by every replica (failures are counted over a recent window, see
:class:`~service.store.base.SignInCounts`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from service.store.base import Reviewer, SignIn, SignInCounts
from service.store.db import Database
from service.store.schema import review_signins, reviewers

FAILED = "bad-password"
s = review_signins


def _reviewer(row: RowMapping) -> Reviewer:
    return Reviewer(name=row["name"], password_hash=row["password_hash"], role=row["role"],
                    disabled_at=row["disabled_at"], created_at=row["created_at"], updated_at=row["updated_at"])


def _signin(row: RowMapping) -> SignIn:
    return SignIn(id=int(row["id"]), at=row["at"], name=row["name"], address=row["address"], result=row["result"])


class SqlReviewers:
    """:class:`~service.store.base.ReviewerStore`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def add_reviewer(self, name: str, password_hash: str, role: str) -> bool:
        now = self.clock()
        stmt = self.db.insert(reviewers).values(name=name, password_hash=password_hash, role=role, created_at=now,
                                                updated_at=now).on_conflict_do_nothing().returning(reviewers.c.name)
        return await self.db.write(lambda c: c.execute(stmt).first() is not None)

    async def get_reviewer(self, name: str) -> Reviewer | None:
        stmt = sa.select(reviewers).where(reviewers.c.name == name)
        row = await self.db.read(lambda c: c.execute(stmt).mappings().first())
        return None if row is None else _reviewer(row)

    async def list_reviewers(self) -> list[Reviewer]:
        stmt = sa.select(reviewers).order_by(reviewers.c.name)
        return await self.db.read(lambda c: [_reviewer(row) for row in c.execute(stmt).mappings()])

    async def update_reviewer(self, name: str, *, password_hash: str | None = None, role: str | None = None,
                              disabled: bool | None = None) -> bool:
        now = self.clock()
        values: dict[str, Any] = {"updated_at": now}
        if password_hash is not None:
            values["password_hash"] = password_hash
        if role is not None:
            values["role"] = role
        if disabled is not None:
            values["disabled_at"] = now if disabled else None
        stmt = sa.update(reviewers).where(reviewers.c.name == name).values(**values).returning(reviewers.c.name)
        return await self.db.write(lambda c: c.execute(stmt).first() is not None)

    async def record_signin(self, name: str, address: str, result: str) -> None:
        stmt = sa.insert(s).values(at=self.clock(), name=name, address=address, result=result)
        await self.db.write(lambda c: c.execute(stmt))

    async def signin_counts(self, name: str, address: str, since: float) -> SignInCounts:
        last_ok = (sa.select(sa.func.max(s.c.id))
                   .where(s.c.name == name, s.c.address == address, s.c.result == "ok").scalar_subquery())
        failed = (s.c.result == FAILED, s.c.at > since)
        pair = sa.select(sa.func.count()).where(*failed, s.c.name == name, s.c.address == address,
                                                s.c.id > sa.func.coalesce(last_ok, 0))
        by_address = sa.select(sa.func.count()).where(*failed, s.c.address == address)
        by_name = sa.select(sa.func.count()).where(*failed, s.c.name == name)

        def q(c: Connection) -> SignInCounts:
            return SignInCounts(pair=int(c.execute(pair).scalar_one()), address=int(c.execute(by_address).scalar_one()),
                                name=int(c.execute(by_name).scalar_one()))

        return await self.db.read(q)

    async def list_signins(self, limit: int, before_id: int | None = None) -> list[SignIn]:
        stmt = sa.select(s).order_by(s.c.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(s.c.id < before_id)
        return await self.db.read(lambda c: [_signin(row) for row in c.execute(stmt).mappings()])
