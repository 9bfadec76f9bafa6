"""Checkpoints: where each source resumes (a JSON value per name)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from service.store.db import Database
from service.store.schema import checkpoints as t

_GET = sa.select(t.c.value).where(t.c.name == sa.bindparam("name"))


def _set(db: Database) -> sa.Insert:
    ins = db.insert(t)
    return ins.on_conflict_do_update(index_elements=[t.c.name],
                                     set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at})


class SqlCheckpoints:
    """:class:`~service.store.base.CheckpointStore`."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def get_checkpoint(self, name: str) -> Any | None:
        text = await self.db.read(lambda c: c.execute(_GET, {"name": name}).scalar())
        return None if text is None else json.loads(text)

    async def set_checkpoint(self, name: str, value: Any) -> None:
        row = {"name": name, "value": json.dumps(value, separators=(",", ":")), "updated_at": self.clock()}
        await self.db.write(lambda c: c.execute(self.db.prepared(_set), row))

    async def delete_checkpoint(self, name: str) -> None:
        await self.db.write(lambda c: c.execute(sa.delete(t).where(t.c.name == name)))
