"""The PdqIndex contract: exactly the brute-force answer, replace on re-add, removals, concurrent reads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.matchers.pdq_index import PdqIndex


def brute(ids: np.ndarray, hashes: np.ndarray, query: np.ndarray, radius: int) -> list[tuple[int, int, int]]:
    best: dict[int, tuple[int, int]] = {}
    for row, q in enumerate(query):
        dist = np.bitwise_count(hashes ^ q).sum(axis=1)
        for i in np.flatnonzero(dist <= radius):
            d = int(dist[i])
            key = int(ids[i])
            if key not in best or d < best[key][0]:
                best[key] = (d, row)
    return sorted(((k, d, r) for k, (d, r) in best.items()), key=lambda t: (t[1], t[0]))


def flip(h: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    out = h.copy()
    for b in rng.choice(256, size=bits, replace=False):
        out[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    return out


@pytest.mark.parametrize("radius", [0, 10, 31, 40])
def test_query_equals_brute_force(radius: int) -> None:
    rng = np.random.default_rng(radius)
    hashes = rng.integers(0, 2**64, size=(3000, 4), dtype=np.uint64)
    ids = np.arange(3000, dtype=np.int64) * 7
    index = PdqIndex()
    index.add(ids, hashes)
    assert len(index) == 3000
    # queries near planted hashes at distances 0..40, plus random misses
    rows = [flip(hashes[i], int(rng.integers(0, 41)), rng) for i in rng.choice(3000, 8, replace=False)]
    rows += [rng.integers(0, 2**64, size=4, dtype=np.uint64) for _ in range(4)]
    query = np.stack(rows)
    assert index.query(query, radius) == brute(ids, hashes, query, radius)


def test_readd_replaces_and_remove() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2**64, size=(2, 4), dtype=np.uint64)
    index = PdqIndex()
    index.add(np.array([5]), a[None])
    index.add(np.array([5]), b[None])
    assert len(index) == 1
    assert index.query(a[None], 0) == []
    assert index.query(b[None], 0) == [(5, 0, 0)]
    index.remove(np.array([5, 99]))
    assert len(index) == 0 and index.query(b[None], 31) == []


def test_repeated_id_in_one_add_keeps_the_last() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2**64, size=(2, 4), dtype=np.uint64)
    index = PdqIndex()
    index.add(np.array([1, 1]), np.stack([a, b]))
    assert len(index) == 1 and index.query(b[None], 0) == [(1, 0, 0)]


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        PdqIndex().add(np.array([1, 2]), np.zeros((1, 4), dtype=np.uint64))


def test_queries_during_writes_see_whole_adds() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**64, size=(1, 4), dtype=np.uint64)
    index = PdqIndex()
    stop = threading.Event()
    bad: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            n = len(index.query(base, 0))
            if n % 10:  # every add inserts ten copies of the base hash at once
                bad.append(n)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(50):
            index.add(np.arange(k * 10, k * 10 + 10), np.repeat(base, 10, axis=0))
    finally:
        stop.set()
        t.join()
    assert bad == [] and len(index) == 500
