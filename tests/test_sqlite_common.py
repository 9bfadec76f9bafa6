from __future__ import annotations

import sqlite3

import pytest

from service.store.base import NewAction
from service.store.sqlite import migrate
from service.store.sqlite_common import fetch_outbox_items, insert_actions, transaction


def _conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    migrate(conn)
    return conn


def test_transaction_commits_or_rolls_back_everything() -> None:
    conn = _conn()
    with transaction(conn):
        insert_actions(conn, [NewAction(key="a", kind="notify", payload={})], 1.0)
    with pytest.raises(RuntimeError), transaction(conn):
        insert_actions(conn, [NewAction(key="b", kind="notify", payload={})], 2.0)
        raise RuntimeError("boom")
    assert not conn.in_transaction
    assert [r["key"] for r in conn.execute("SELECT key FROM outbox")] == ["a"]


def test_insert_actions_skips_known_keys_and_fetch_keeps_id_order() -> None:
    conn = _conn()
    with transaction(conn):
        first = insert_actions(conn, [NewAction(key=k, kind="notify", payload={"k": k}) for k in ("x", "y")], 1.0)
        again = insert_actions(conn, [NewAction(key="y", kind="notify", payload={}),
                                      NewAction(key="z", kind="takedown", payload={})], 2.0)
    assert len(first) == 2 and len(again) == 1
    items = fetch_outbox_items(conn, [again[0], *first])
    assert [(i.key, i.kind, i.payload) for i in items] == [("x", "notify", {"k": "x"}), ("y", "notify", {"k": "y"}),
                                                           ("z", "takedown", {})]
    assert fetch_outbox_items(conn, []) == []
