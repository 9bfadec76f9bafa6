"""The PdqIndex contract: exactly the brute-force answer, replace on re-add, removals, concurrent reads.

Every contract case runs twice: scanning (small index) and through the multi-index hashing tables
(``brute_force_max=0``).  Random hashes and realistic ones (PDQ of generated photos and their
transforms: near-duplicate clusters, skewed buckets) are checked against brute force.
"""

from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.matchers import pdq_mih
from service.matchers.pdq_index import PdqIndex
from service.media.thumbnail import pdq_signal
from tests.infra.images import photo, variants

MODES = {"scan": lambda: PdqIndex(), "mih": lambda: PdqIndex(brute_force_max=0)}


@pytest.fixture(params=sorted(MODES))
def make(request: pytest.FixtureRequest) -> Callable[[], PdqIndex]:
    return MODES[request.param]


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
def test_query_equals_brute_force(radius: int, make: Callable[[], PdqIndex]) -> None:
    rng = np.random.default_rng(radius)
    hashes = rng.integers(0, 2**64, size=(3000, 4), dtype=np.uint64)
    ids = np.arange(3000, dtype=np.int64) * 7
    index = make()
    index.add(ids, hashes)
    assert len(index) == 3000
    # queries near planted hashes at distances 0..40, plus random misses
    rows = [flip(hashes[i], int(rng.integers(0, 41)), rng) for i in rng.choice(3000, 8, replace=False)]
    rows += [rng.integers(0, 2**64, size=4, dtype=np.uint64) for _ in range(4)]
    query = np.stack(rows)
    assert index.query(query, radius) == brute(ids, hashes, query, radius)


def test_readd_replaces_and_remove(make: Callable[[], PdqIndex]) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2**64, size=(2, 4), dtype=np.uint64)
    index = make()
    index.add(np.array([5]), a[None])
    index.add(np.array([5]), b[None])
    assert len(index) == 1
    assert index.query(a[None], 0) == []
    assert index.query(b[None], 0) == [(5, 0, 0)]
    index.remove(np.array([5, 99]))
    assert len(index) == 0 and index.query(b[None], 31) == []


def test_repeated_id_in_one_add_keeps_the_last(make: Callable[[], PdqIndex]) -> None:
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2**64, size=(2, 4), dtype=np.uint64)
    index = make()
    index.add(np.array([1, 1]), np.stack([a, b]))
    assert len(index) == 1 and index.query(b[None], 0) == [(1, 0, 0)]


def test_ids_widen_past_int32() -> None:
    """Ids are held as int32 while they fit (4 bytes a hash less); a larger or negative-large id widens
    them to int64 without losing the others, and a reader of the narrow state keeps its answer."""
    hashes = random_hashes(2000, 24)
    index = PdqIndex(brute_force_max=0)
    index.add(np.arange(1000) + 2**31 - 1000, hashes[:1000])
    assert index._state.ids.dtype == np.int32
    held = index._state
    index.add(np.array([2**40, -(2**35)]), hashes[1000:1002])
    assert index._state.ids.dtype == np.int64 and held.ids.dtype == np.int32
    index.add(np.arange(3, 900), hashes[1002:1899])
    ids = np.concatenate([np.arange(1000) + 2**31 - 1000, [2**40, -(2**35)], np.arange(3, 900)])
    query = np.concatenate([hashes[:2], hashes[1000:1003], hashes[1500:1501]])
    assert index.query(query, 31) == brute(ids, hashes[:1899], query, 31)
    index.remove(np.array([2**40, 2**31 - 1]))
    assert len(index) == 1897 and index.query(hashes[1000:1001], 0) == []


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        PdqIndex().add(np.array([1, 2]), np.zeros((1, 4), dtype=np.uint64))


def test_queries_during_writes_see_whole_adds(make: Callable[[], PdqIndex]) -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**64, size=(1, 4), dtype=np.uint64)
    index = make()
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


# --------------------------------------------------------------------------- beyond the original contract


def random_hashes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=(n, 4), dtype=np.uint64)


@pytest.mark.parametrize("radius", [0, 9, 10, 11, 20, 21, 22, 31, 32, 33])
def test_planted_matches_at_every_distance_and_misses(radius: int) -> None:
    """Queries at distance 0..40 from indexed hashes (across every chunk-radius boundary) and misses, one
    row at a time and eight at a time, through the tables: equal to brute force."""
    rng = np.random.default_rng(100 + radius)
    hashes = random_hashes(20_000, radius)
    ids = rng.choice(10**9, size=20_000, replace=False).astype(np.int64)
    index = PdqIndex(brute_force_max=0)
    index.add(ids, hashes)
    rows = [flip(hashes[int(rng.integers(20_000))], d, rng) for d in range(41)]
    rows += list(random_hashes(8, 1000 + radius))
    query = np.stack(rows)
    for q in query:
        assert index.query(q[None], radius) == brute(ids, hashes, q[None], radius)
    for start in range(0, query.shape[0], 8):
        part = query[start : start + 8]
        assert index.query(part, radius) == brute(ids, hashes, part, radius)


def words(digest: bytes) -> np.ndarray:
    return np.frombuffer(digest, dtype=np.uint64)


@functools.cache
def realistic() -> tuple[np.ndarray, np.ndarray]:
    """PDQ hashes (all eight dihedral variants) of generated photos and of their resized, recompressed,
    mirrored and rotated copies: clusters of near-duplicates, as real banks hold."""
    import io

    bank, queries = [], []
    for seed in range(40):
        img = photo(seed, (200, 150))
        bank += [words(h) for h in pdq_signal(img).hashes]
        for data in variants(img).values():
            queries.append(np.stack([words(h) for h in pdq_signal(Image.open(io.BytesIO(data)).convert("RGB")).hashes]))
    return np.stack(bank), np.stack(queries)


def test_realistic_hashes_equal_brute_force() -> None:
    bank, queries = realistic()
    ids = np.arange(bank.shape[0], dtype=np.int64) + 5
    index = PdqIndex(brute_force_max=0)
    index.add(ids, bank)
    found = 0
    for q in queries:  # one upload: its eight dihedral hashes at once
        for radius in (10, 31, 32, 45):
            expected = brute(ids, bank, q, radius)
            assert index.query(q, radius) == expected
            found += bool(expected)
    assert found >= len(queries) * 3  # the transforms are found: the check is not vacuous


def test_deltas_equal_brute_force_across_the_scan_threshold() -> None:
    """Adds, replacements and removals (growing past the scan threshold, so the tables are built and
    then widened): after each, the answer is the brute-force answer over the current contents."""
    rng = np.random.default_rng(9)
    pool = random_hashes(20_000, 9)
    index = PdqIndex(brute_force_max=500)
    model: dict[int, int] = dict.fromkeys(range(40_000, 40_300), 0)
    index.add(np.arange(40_000, 40_300), np.repeat(pool[:1], 300, axis=0))
    assert index._state.tables is None  # small: scanned
    widths = set()
    for step in range(40):
        ids = rng.choice(40_000, size=800, replace=False)
        which = rng.integers(0, 20_000, size=800)
        index.add(ids, pool[which])
        model.update(zip(ids.tolist(), which.tolist(), strict=True))
        gone = rng.choice(40_000, size=40 + step, replace=False)
        index.remove(gone)
        for g in gone.tolist():
            model.pop(g, None)
        state = index._state
        widths.add(state.tables.width if state.tables is not None else 0)
        keys = np.array(sorted(model), dtype=np.int64)
        current = pool[[model[k] for k in keys.tolist()]] if keys.size else np.empty((0, 4), np.uint64)
        query = np.stack([flip(pool[int(rng.integers(20_000))], int(rng.integers(0, 33)), rng) for _ in range(6)])
        assert len(index) == len(model)
        assert index.query(query, 31) == brute(keys, current, query, 31)
    assert len(widths) >= 2  # tables built, then widened
    # once the segment is merged, the tables are the tables a fresh build of the same rows gives (order
    # inside a list aside)
    index.merge()
    state = index._state
    assert state.tables is not None and state.segment.size == 0 and index._stale.size == 0
    assert index.query(query, 31) == brute(keys, current, query, 31)
    live = np.flatnonzero(state.alive)
    fresh = pdq_mih.build(state.hashes, live, state.tables.width)
    starts = fresh.offsets()
    assert np.array_equal(state.tables.offsets(), starts)
    for a, b in zip(starts[:-1:97], starts[1::97], strict=True):
        assert np.array_equal(np.sort(state.tables.entries[a:b]), fresh.entries[a:b])


def test_memory_does_not_grow_across_1000_deltas() -> None:
    """Rows freed by removals are reused (segment rows at once, table rows after the merge that drops
    their entries): past the first merges the arrays hold the live hashes plus at most one segment's
    worth of rows waiting, and nothing piles up."""
    rng = np.random.default_rng(4)
    index = PdqIndex(brute_force_max=0, segment_max=1000)
    live = np.arange(20_000)
    index.add(live, random_hashes(20_000, 4))
    sizes = []
    for step in range(1000):
        gone = rng.choice(live.size, size=30, replace=False)
        index.remove(live[gone])
        fresh = np.arange(20_000 + 30 * step, 20_030 + 30 * step)
        live = np.concatenate([np.delete(live, gone), fresh])
        index.add(fresh, random_hashes(30, 10_000 + step))
        if step % 50 == 49:
            sizes.append((len(index), index.nbytes(), index._state.hashes.shape[0], index._state.n_rows))
    assert {s[0] for s in sizes} == {20_000}
    assert len({s[2] for s in sizes}) == 1  # capacity never grew
    rows = [s[3] for s in sizes]
    assert max(rows) <= 20_000 + 2 * 1000 + 2 * 30 and len(set(rows[len(rows) // 2 :])) == 1
    half = len(sizes) // 2
    assert max(s[1] for s in sizes[half:]) <= max(s[1] for s in sizes[:half])


def test_freed_rows_wait_for_readers_of_older_states() -> None:
    """A reader that took the index's state before a removal keeps comparing against the removed hashes'
    rows; they are reused only once no such reader is left (every add merges here: ``segment_max=0``)."""
    index = PdqIndex(brute_force_max=0, segment_max=0)
    hashes = random_hashes(1000, 5)
    index.add(np.arange(1000), hashes)
    held = index._state
    index.remove(np.arange(100))
    index.add(np.arange(1000, 1100), random_hashes(100, 6))
    assert (held.hashes[:100] == hashes[:100]).all()  # not overwritten under the reader
    assert index._state.n_rows == 1100
    del held
    gc.collect()
    index.remove(np.arange(1000, 1100))
    index.add(np.arange(2000, 2100), random_hashes(100, 7))
    index.add(np.arange(3000, 3100), random_hashes(100, 8))
    assert index._state.n_rows == 1100  # the first freed rows were reused once released


def test_removed_table_rows_wait_for_a_merge() -> None:
    """A removed row still named by the tables is reused only after a merge dropped its entries (so the
    tables never name a row whose hash changed); a removed segment row is reused at once."""
    index = PdqIndex(brute_force_max=0, segment_max=10_000)
    index.add(np.arange(1000), random_hashes(1000, 15))
    index.remove(np.arange(100))  # table rows
    index.add(np.arange(1000, 1100), random_hashes(100, 16))  # into the segment, new rows
    gc.collect()
    assert index._state.n_rows == 1100 and index._stale.size == 100
    index.remove(np.arange(1000, 1050))  # segment rows
    gc.collect()
    index.add(np.arange(2000, 2050), random_hashes(50, 17))
    assert index._state.n_rows == 1100  # the segment rows were reused
    index.merge()
    gc.collect()
    assert index._stale.size == 0 and index._state.segment.size == 0
    index.add(np.arange(3000, 3100), random_hashes(100, 18))
    assert index._state.n_rows == 1100  # the table rows were reused after the merge


@pytest.mark.parametrize("segment_max", [0, 300, 100_000])
def test_segment_and_tables_equal_brute_force(segment_max: int) -> None:
    """Rows in the tables, in the segment, replaced (a table row's id re-added: the old row is stale)
    and removed from either, at radii around the tables' limit (31, 32: tables; 33: scan): always the
    brute-force answer."""
    rng = np.random.default_rng(segment_max)
    pool = random_hashes(6000, 19)
    index = PdqIndex(brute_force_max=0, segment_max=segment_max)
    model = {i: i for i in range(3000)}
    index.add(np.arange(3000), pool[:3000])
    for step in range(12):
        ids = rng.choice(4000, size=200, replace=False)  # new ids and present ones (replaced)
        which = rng.integers(0, 6000, size=200)
        index.add(ids, pool[which])
        model.update(zip(ids.tolist(), which.tolist(), strict=True))
        gone = rng.choice(4000, size=60, replace=False)
        index.remove(gone)
        for g in gone.tolist():
            model.pop(g, None)
        if step == 6:
            index.merge()
        keys = np.array(sorted(model), dtype=np.int64)
        current = pool[[model[k] for k in keys.tolist()]]
        near = [flip(pool[model[int(k)]], int(rng.integers(28, 36)), rng) for k in rng.choice(keys, size=4)]
        query = np.stack([*near, flip(pool[int(which[0])], 31, rng), random_hashes(1, 100 + step)[0]])
        for radius in (0, 21, 31, 32, 33):
            assert index.query(query, radius) == brute(keys, current, query, radius), (step, radius)
        assert len(index) == len(model)
    if segment_max == 100_000:
        assert index._state.segment.size > 0  # the segment was in play


def test_chunk_radii_follow_the_generalised_pigeonhole() -> None:
    """Per-table radii sum to r - 10, each in -1..2, spread evenly; and for hash pairs at distance
    exactly r, some chunk differs in at most its table's radius (so the probes find the pair)."""
    rng = np.random.default_rng(21)
    width = 23
    for radius in range(pdq_mih.MAX_RADIUS + 1):
        radii = pdq_mih.chunk_radii(radius)
        assert radii.sum() == radius - pdq_mih.CHUNKS + 1 and radii.min() >= -1 and radii.max() <= 2
        assert radii.max() - radii.min() <= 1
        a = random_hashes(200, radius)
        b = np.stack([flip(h, radius, rng) for h in a])
        diff = np.bitwise_count(pdq_mih.chunk_keys(a, width) ^ pdq_mih.chunk_keys(b, width))
        assert (diff <= radii).any(axis=1).all()
    with pytest.raises(ValueError):
        pdq_mih.chunk_radii(pdq_mih.MAX_RADIUS + 1)
    assert pdq_mih.probe_count(23, 31) == 10 * (1 + 23 + 253) + (1 + 23)
    assert pdq_mih.probe_count(23, 0) == 1


def test_merge_equals_a_fresh_build() -> None:
    """:func:`pdq_mih.merge` (entries copied around the changes, starts patched per block) gives the
    tables a build of the same rows gives, crowded blocks included (offsets widen past uint8)."""
    hashes = np.concatenate([random_hashes(3000, 22), np.repeat(random_hashes(1, 23), 400, axis=0)])
    tables = pdq_mih.build(hashes, np.arange(2000), 12)
    assert tables.local.dtype == np.uint8
    drop = np.arange(0, 2000, 7)
    merged = pdq_mih.merge(tables, hashes, drop, np.arange(2000, 3400))
    live = np.setdiff1d(np.arange(3400), drop)
    fresh = pdq_mih.build(hashes, live, 12)
    assert merged.local.dtype == fresh.local.dtype == np.uint16
    starts = fresh.offsets()
    assert np.array_equal(merged.offsets(), starts)
    for a, b in pairwise(starts):
        assert np.array_equal(np.sort(merged.entries[a:b]), fresh.entries[a:b])


def test_snapshot_round_trip(tmp_path: Path, make: Callable[[], PdqIndex]) -> None:
    rng = np.random.default_rng(6)
    hashes = random_hashes(3000, 6)
    ids = np.arange(3000, dtype=np.int64) * 11
    index = make()
    index.add(ids, hashes)
    index.remove(ids[::7])
    path = tmp_path / "bank.pdqidx.npz"
    index.save(path)
    loaded = PdqIndex.load(path, brute_force_max=0 if index._state.tables is not None else 20_000)
    query = np.stack([flip(hashes[int(rng.integers(3000))], int(rng.integers(0, 32)), rng) for _ in range(16)])
    assert len(loaded) == len(index) and loaded.query(query, 31) == index.query(query, 31)
    for i in (index, loaded):  # both keep taking deltas the same way
        i.add(ids[::7], hashes[::7])
        i.remove(ids[1::5])
    assert loaded.query(query, 31) == index.query(query, 31)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_chunking_covers_the_radius() -> None:
    """11 chunks of at most 23 bits fit in the hash; probing at most 2 bits per chunk covers radius 32."""
    assert pdq_mih.MAX_RADIUS == 32 and pdq_mih.CHUNKS * pdq_mih.width_for(10**9) <= 256
    for n in (1, 10**5, 10**6, 10**7):
        assert 12 <= pdq_mih.width_for(n) <= 23


def test_a_crowded_bucket_widens_the_bucket_starts() -> None:
    """70,000 copies of one hash (a blank image in a bank) put 70,000 rows in one bucket per table:
    the 2-byte bucket starts widen, on build and on a delta, and answers stay exact."""
    rng = np.random.default_rng(12)
    blank = random_hashes(1, 12)
    crowd = np.repeat(blank, 70_000, axis=0)
    others = random_hashes(160_000, 13)
    index = PdqIndex(brute_force_max=0)
    index.add(np.arange(160_000), others)
    width = index._state.tables.width if index._state.tables is not None else 0
    index.add(np.arange(200_000, 270_000), crowd)  # a delta into one bucket per table
    assert index._state.tables is not None and index._state.tables.width == width  # merged, not rebuilt
    assert index._state.tables.local.dtype == np.uint32
    hashes = np.concatenate([others, crowd])
    ids = np.concatenate([np.arange(160_000), np.arange(200_000, 270_000)])
    query = np.stack([flip(blank[0], 5, rng), flip(others[7], 30, rng), random_hashes(1, 14)[0]])
    assert index.query(query, 31) == brute(ids, hashes, query, 31)
    rebuilt = PdqIndex(brute_force_max=0)
    rebuilt.add(ids, hashes)
    assert rebuilt.query(query, 31) == index.query(query, 31)


def test_a_read_only_query_uses_the_compiled_kernels(make: Callable[[], PdqIndex]) -> None:
    """A query straight from a hash's bytes is read-only: it must not make numba compile a new specialisation
    of a kernel on a live lookup (a second or two), and it answers as a writable copy would."""
    from service.matchers import pdq_kernels

    index = make()
    rng = np.random.default_rng(5)
    hashes = rng.integers(0, 2**64, size=(500, 4), dtype=np.uint64)
    index.add(np.arange(500, dtype=np.int64), hashes)
    query = np.frombuffer(hashes[:2].tobytes(), dtype=np.uint64).reshape(-1, 4)
    assert not query.flags.writeable
    index.query(query.copy(), 31)  # compiled (or loaded) for writable arrays
    kernels = (pdq_kernels.probe, pdq_kernels.scan)
    before = [len(k.signatures) for k in kernels]
    assert index.query(query, 31) == index.query(query.copy(), 31)
    assert [len(k.signatures) for k in kernels] == before
