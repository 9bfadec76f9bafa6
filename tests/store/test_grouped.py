"""Grouped store calls: one thread hop and one transaction for calls that arrive together, each caller
still seeing only its own result or its own error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.store import Database, StoreError, sqlite_stores
from service.store.grouped import Call, Grouper, Outcome


def _insert(name: str) -> Callable[[sa.Connection], str]:
    def fn(c: sa.Connection) -> str:
        c.exec_driver_sql("INSERT INTO checkpoints (name, value, updated_at) VALUES (?, '1', 1)", (name,))
        return name

    return fn


async def _names(db: Database) -> set[str]:
    return set(await db.read(lambda c: c.exec_driver_sql("SELECT name FROM checkpoints").scalars().all()))


async def test_calls_made_together_share_one_transaction_and_each_gets_its_result(tmp_path: Path) -> None:
    stores = sqlite_stores(str(tmp_path / "db.sqlite3"))
    await stores.open()
    db = stores.db
    assert isinstance(db, Database)

    def insert_in(name: str) -> Callable[[sa.Connection], tuple[str, Any]]:
        def fn(c: sa.Connection) -> tuple[str, Any]:
            return _insert(name)(c), c.get_transaction()

        return fn

    try:
        names = [f"n{i}" for i in range(10)]
        results = await asyncio.gather(*(db.write_grouped(insert_in(n)) for n in names))
        assert [name for name, _ in results] == names
        assert len({id(tx) for _, tx in results}) == 1  # one transaction (the objects are all alive here)
        assert await _names(db) == set(names)
        alone = await db.write_grouped(insert_in("alone"))
        assert alone[1] is not results[0][1]
    finally:
        await stores.close()


async def test_a_failing_call_fails_alone_and_leaves_nothing_half_done(tmp_path: Path) -> None:
    stores = sqlite_stores(str(tmp_path / "db.sqlite3"))
    await stores.open()
    db = stores.db
    assert isinstance(db, Database)

    def twice(c: sa.Connection) -> None:  # its second insert violates the key: all of it is rolled back
        _insert("half")(c)
        _insert("half")(c)

    def bug(c: sa.Connection) -> None:
        raise ValueError("a bug in this call")

    try:
        results = await asyncio.gather(db.write_grouped(_insert("a")), db.write_grouped(twice),
                                       db.write_grouped(bug), db.write_grouped(_insert("b")),
                                       return_exceptions=True)
        assert results[0] == "a" and results[3] == "b"
        assert isinstance(results[1], StoreError) and "UNIQUE" in str(results[1])
        assert isinstance(results[2], ValueError)
        assert await _names(db) == {"a", "b"}
        # Reads group the same way.
        def count(name: str) -> Callable[[sa.Connection], Any]:
            return lambda c: c.exec_driver_sql("SELECT count(*) FROM checkpoints WHERE name = ?", (name,)).scalar()

        seen = await asyncio.gather(*(db.read_grouped(count(n)) for n in ("a", "b", "half")))
        assert seen == [1, 1, 0]
    finally:
        await stores.close()


async def test_at_most_limit_groups_run_and_late_calls_form_the_next() -> None:
    loop = asyncio.get_running_loop()
    started: list[tuple[list[Call], asyncio.Future[list[Outcome]]]] = []

    def run_group(fns: list[Call]) -> asyncio.Future[list[Outcome]]:
        fut: asyncio.Future[list[Outcome]] = loop.create_future()
        started.append((fns, fut))
        return fut

    grouper = Grouper(run_group, limit=1)
    first = asyncio.ensure_future(grouper.run(lambda c: 1))
    while not started:
        await asyncio.sleep(0)
    def const(i: int) -> Call:
        return lambda c: i

    later = [asyncio.ensure_future(grouper.run(const(i))) for i in range(3)]
    cancelled = asyncio.ensure_future(grouper.run(lambda c: "nobody waits"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert len(started) == 1 and grouper.running == 1  # the others wait for the group in the store
    started[0][1].set_result([(True, "one")])
    assert await first == "one"
    while len(started) < 2:
        await asyncio.sleep(0)
    fns, fut = started[1]
    assert len(fns) == 3  # the three late calls, not the cancelled one
    fut.set_result([(True, f(None)) for f in fns[:2]] + [(False, StoreError("locked"))])  # type: ignore[arg-type]
    assert await later[0] == 0 and await later[1] == 1
    with pytest.raises(StoreError, match="locked"):
        await later[2]
    assert grouper.running == 0


async def test_a_group_that_cannot_run_fails_every_call_with_the_same_error() -> None:
    def refuse(fns: list[Call]) -> asyncio.Future[Any]:
        raise StoreError("store is not open")

    grouper = Grouper(refuse)
    results = await asyncio.gather(grouper.run(lambda c: 1), grouper.run(lambda c: 2), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
