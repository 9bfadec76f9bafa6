"""The DigestIndex contract: set lookups of SHA-1 / MD5 digests under ids, deltas, snapshots, concurrent reads."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

from service.matchers.exact_index import DigestIndex, md5_index, sha1_index


def digests(n: int, seed: int, size: int = 20) -> list[bytes]:
    algo = hashlib.sha1 if size == 20 else hashlib.md5
    return [algo(f"{seed}-{i}".encode()).digest() for i in range(n)]


def reference(table: dict[int, bytes], query: list[bytes]) -> list[tuple[int, int]]:
    return sorted(((i, row) for row, q in enumerate(query) for i, d in table.items() if d == q),
                  key=lambda t: (t[1], t[0]))


@pytest.mark.parametrize("size", [20, 16])
def test_lookup_equals_reference_through_deltas(size: int) -> None:
    rng = np.random.default_rng(size)
    index = sha1_index() if size == 20 else md5_index()
    table: dict[int, bytes] = {}
    pool = digests(400, 0, size)
    for step in range(30):  # adds (some replacing ids, some sharing digests) and removes
        ids = rng.choice(600, size=25, replace=False)
        new = [pool[int(k)] for k in rng.integers(0, len(pool), 25)]
        index.add(ids, new)
        table.update(zip(ids.tolist(), new, strict=True))
        gone = rng.choice(600, size=10, replace=False)
        index.remove(gone)
        for g in gone.tolist():
            table.pop(g, None)
        query = [pool[int(k)] for k in rng.integers(0, len(pool), 20)] + digests(3, 100 + step, size)
        assert len(index) == len(table)
        assert index.lookup(query) == reference(table, query)
        assert index.contains(query).tolist() == [q in table.values() for q in query]


def test_shared_prefix_is_told_apart_by_the_rest() -> None:
    a = bytes(8) + b"\x01" * 12
    b = bytes(8) + b"\x02" * 12
    index = DigestIndex(20)
    index.add(np.array([1, 2]), [a, b])
    assert index.lookup([b, a, bytes(20)]) == [(2, 0), (1, 1)]


def test_bad_digests_are_refused() -> None:
    index = sha1_index()
    with pytest.raises(ValueError):
        index.add(np.array([1]), [b"short"])
    with pytest.raises(ValueError):
        index.add(np.array([1, 2]), digests(1, 0))


def test_snapshot_round_trip(tmp_path: Path) -> None:
    index = md5_index()
    pool = digests(1000, 1, 16)
    index.add(np.arange(1000), pool)
    index.remove(np.arange(0, 1000, 3))
    index.save(tmp_path / "md5.npz")
    back = DigestIndex.load(tmp_path / "md5.npz")
    assert len(back) == len(index) and back.lookup(pool) == index.lookup(pool)
    back.add(np.array([0]), [pool[0]])  # the writer's side survives too
    assert back.lookup([pool[0]]) == [(0, 0)]
    assert [p.name for p in tmp_path.iterdir()] == ["md5.npz"]


def test_compact_at_scale() -> None:
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=(200_000, 20), dtype=np.uint8)
    index = sha1_index()
    index.add(np.arange(200_000), raw)
    assert index.nbytes() <= 44 * 200_000
    assert index.lookup(raw[[5, 199_999]]) == [(5, 0), (199_999, 1)]


def test_readers_see_whole_adds() -> None:
    index = sha1_index()
    d = digests(1, 9)
    stop = threading.Event()
    bad: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            n = len(index.lookup(d))
            if n % 10:
                bad.append(n)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(50):
            index.add(np.arange(k * 10, k * 10 + 10), d * 10)
    finally:
        stop.set()
        t.join()
    assert bad == [] and len(index) == 500
