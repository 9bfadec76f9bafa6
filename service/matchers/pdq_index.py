"""A threshold index of 256-bit PDQ hashes keyed by integer ids.

This is the one interface every PDQ lookup goes through (bank matching, video frames, retroactive
matching of stored file hashes).  Hashes are four ``uint64`` words each, in the word layout of
:func:`service.matchers.banks.pdq_words` (the hash's 32 bytes read as four native-endian uint64).

Contract (checked by ``tests/test_pdq_index.py`` against brute force):

- :meth:`add` inserts hashes under ids; adding an id that is present replaces its hash.
- :meth:`remove` deletes ids; unknown ids are ignored.
- :meth:`query` returns every id within ``radius`` (<=) of any query row, once, with the smallest
  distance over the rows and the row that gave it, sorted by (distance, id).  Exactly the brute-force
  answer: no false negatives, no false positives.
- One writer (add / remove) may run in one thread while queries run in others: a query sees the index
  either before or after a whole add/remove call, never half of one.

Implementation (design and measurements in ``docs/pdq-index.md``): hashes live in one (capacity, 4)
uint64 array of rows, ids in an int64 array beside it.  Up to :data:`BRUTE_FORCE_MAX` hashes a query
scans every row; above, multi-index hashing (:mod:`service.matchers.pdq_mih`) names the candidate rows
and only those are compared, and a radius above :data:`~service.matchers.pdq_mih.MAX_RADIUS` scans.
Readers take one immutable :class:`_State`; the writer publishes a new one per call.  Rows freed by
a removal are reused only once no reader can still hold a state in which they were live.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.matchers import pdq_mih
from service.matchers.pdq_mih import Tables

BRUTE_FORCE_MAX = 25_000  # measured: a scan answers faster up to ~30k hashes (15k vs 11k q/s at 20k)
_SCAN_BLOCK = 1 << 18  # rows per block of a scan: bounded temporaries
_SCAN_CELLS = 1 << 20  # (row, query row) pairs per block of a scan
_SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True, weakref_slot=True)
class _State:
    hashes: np.ndarray  # (capacity, 4) uint64; rows >= n_rows and dead rows are garbage
    ids: np.ndarray  # (capacity,) int64, the id of each live row
    alive: np.ndarray  # (n_rows,) bool
    n_rows: int
    size: int
    tables: Tables | None


def _empty_state() -> _State:
    return _State(np.empty((0, 4), np.uint64), np.empty(0, np.int64), np.empty(0, bool), 0, 0, None)


def distances(hashes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Hamming distances (int32) between rows of ``hashes`` (N, 4) and ``query`` (N, 4) or (4,)."""
    x = np.bitwise_xor(hashes, query)
    return np.bitwise_count(x).sum(axis=1, dtype=np.int32)


def _near(hashes: np.ndarray, rows: np.ndarray | None, query: np.ndarray, qrow: np.ndarray | None,
          radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``i`` with ``hashes[rows[i]]`` within ``radius`` of ``query[qrow[i]]``, and distances.

    ``rows=None`` means every row of ``hashes``; ``qrow=None`` means query row 0.  The first two words
    (128 bits) filter first, one word at a time so numpy's loops stay long: their distance never
    exceeds the full distance, and for unrelated hashes it is ~64, so few rows reach the full compare.
    """
    cand = hashes if rows is None else np.take(hashes, rows, axis=0)  # one cache miss per row
    n = cand.shape[0]
    buf = np.empty(n, np.uint64)
    half = np.empty(n, np.uint8)
    tmp = np.empty(n, np.uint8)
    for w, out in ((0, half), (1, tmp)):
        q = query[0, w] if qrow is None else np.take(query[:, w], qrow)
        np.bitwise_count(np.bitwise_xor(cand[:, w], q, out=buf), out=out)
    np.add(half, tmp, out=half)  # <= 128: fits uint8
    pos = np.flatnonzero(half <= radius)
    if pos.size == 0:
        return pos, np.empty(0, np.int32)
    q2 = query[0] if qrow is None else query[qrow[pos]]
    d = distances(cand[pos], q2)
    keep = d <= radius
    return pos[keep], d[keep]


class PdqIndex:
    """Multi-index hashing with a brute-force scan for small sizes (see the module docstring)."""

    def __init__(self, *, brute_force_max: int = BRUTE_FORCE_MAX) -> None:
        self._brute_force_max = brute_force_max  # sizes up to this are scanned, without tables
        self._lock = threading.Lock()  # writers only; readers take the current state in one read
        self._state = _empty_state()
        self._order = np.empty(0, np.uint32)  # live rows sorted by id (writer only)
        self._free = np.empty(0, np.int64)  # rows no reader can see as live: reusable now
        self._pending: deque[tuple[weakref.ref[_State], np.ndarray]] = deque()  # rows freed after a state

    def __len__(self) -> int:
        return self._state.size

    def nbytes(self) -> int:
        """Bytes held by the index's arrays (hashes, ids and any tables)."""
        s = self._state
        tables = s.tables.nbytes if s.tables is not None else 0
        return int(s.n_rows * (32 + 8) + s.alive.nbytes + self._order.nbytes + tables)

    # -- writes -----------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        """Insert ``hashes`` ((N, 4) uint64) under ``ids`` ((N,) int64), replacing present ids.

        Any batch size: a first big batch builds the tables in one pass, later ones are merged in."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1, 4)
        if ids.size != hashes.shape[0]:
            raise ValueError(f"{ids.size} ids for {hashes.shape[0]} hashes")
        if ids.size == 0:
            return
        # The last occurrence of a repeated id wins, as if added one by one.
        uniq, last = np.unique(ids[::-1], return_index=True)
        if uniq.size != ids.size:
            keep = np.sort(ids.size - 1 - last)
            ids, hashes = ids[keep], hashes[keep]
        with self._lock:
            self._apply(ids, ids, hashes)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return
        with self._lock:
            self._apply(ids, ids[:0], np.empty((0, 4), np.uint64))

    def _rows_of(self, state: _State, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in self._order, rows) of the present ids among ``ids``."""
        if self._order.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        # A sorted copy of the live ids only while writing: kept out of the resident footprint.
        at = np.searchsorted(state.ids[self._order], ids)
        at = np.minimum(at, self._order.size - 1)
        rows = self._order[at].astype(np.int64)
        present = state.ids[rows] == ids
        return at[present], rows[present]

    def _apply(self, drop_ids: np.ndarray, ids: np.ndarray, hashes: np.ndarray) -> None:
        old = self._state
        self._reclaim()
        order_at, dead = self._rows_of(old, drop_ids)
        if dead.size == 0 and ids.size == 0:
            return
        rows, hashes_arr, ids_arr = self._allocate(old, ids.size)
        n_rows = max(old.n_rows, int(rows.max()) + 1) if rows.size else old.n_rows
        hashes_arr[rows] = hashes  # rows nobody can see yet: safe to write in place
        ids_arr[rows] = ids
        alive = np.zeros(n_rows, bool)
        alive[: old.n_rows] = old.alive
        alive[dead] = False
        alive[rows] = True
        size = old.size - dead.size + ids.size
        tables = self._retable(old, alive, dead, rows, hashes_arr)
        new = _State(hashes_arr, ids_arr, alive, n_rows, size, tables)
        order = np.delete(self._order, order_at)
        if ids.size:
            by_id = np.argsort(ids, kind="stable")
            where = np.searchsorted(ids_arr[order], ids[by_id])
            order = np.insert(order, where, rows[by_id].astype(np.uint32))
        self._order = order
        self._state = new
        # Every retired state is tracked, so a row is reused only when all states older than its
        # removal are gone (a reader holding one may still compare against the row's old hash).
        self._pending.append((weakref.ref(old), dead))
        del old

    def _retable(self, old: _State, alive: np.ndarray, dead: np.ndarray, rows: np.ndarray,
                 hashes: np.ndarray) -> Tables | None:
        tables = old.tables
        size = int(np.count_nonzero(alive))
        if tables is None and size <= self._brute_force_max:
            return None
        if tables is None or pdq_mih.width_for(size) > tables.width:
            # First crossing of the threshold, or about 8 hashes per bucket: one full build.
            live = np.flatnonzero(alive)
            return pdq_mih.build(live, hashes[live], pdq_mih.width_for(size))
        tables = pdq_mih.delete(tables, dead, old.hashes[dead])
        return pdq_mih.insert(tables, rows, hashes[rows])

    def _allocate(self, old: _State, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows for ``n`` new hashes (reused free rows first), and the arrays to write them into."""
        reuse = self._free[:n]
        self._free = self._free[n:]
        extra = n - reuse.size
        rows = np.concatenate([reuse, np.arange(old.n_rows, old.n_rows + extra, dtype=np.int64)])
        need = old.n_rows + extra
        hashes, ids = old.hashes, old.ids
        if need > hashes.shape[0]:  # grow by half: untouched capacity is not resident
            cap = max(need, hashes.shape[0] * 3 // 2, 1024)
            hashes = np.empty((cap, 4), np.uint64)
            hashes[: old.n_rows] = old.hashes[: old.n_rows]
            ids = np.empty(cap, np.int64)
            ids[: old.n_rows] = old.ids[: old.n_rows]
        return rows, hashes, ids

    def _reclaim(self) -> None:
        """Free rows removed after states that no reader holds any more, oldest first."""
        back: list[np.ndarray] = []
        while self._pending and self._pending[0][0]() is None:
            back.append(self._pending.popleft()[1])
        if back:
            self._free = np.concatenate([self._free, *back])

    # -- reads ------------------------------------------------------------------------------------------

    def query(self, query: np.ndarray, radius: int) -> list[tuple[int, int, int]]:
        """``[(id, distance, row), ...]`` for every id within ``radius`` of a row of ``query`` ((V, 4))."""
        state = self._state  # one read: a consistent view
        query = np.asarray(query, dtype=np.uint64).reshape(-1, 4)
        if state.size == 0 or query.shape[0] == 0 or radius < 0:
            return []
        if state.tables is None or radius > pdq_mih.MAX_RADIUS:
            rows, dist, qrow = _scan(state, query, radius)
        else:
            rows, dist, qrow = _probe(state.tables, state.hashes, query, radius)
        return _answer(state.ids, rows, dist, qrow)

    # -- snapshots --------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a snapshot (one uncompressed ``.npz``) atomically: a temporary file, fsync, rename."""
        with self._lock:  # the writer's id order must belong to the same state (arrays are not copied)
            state, order = self._state, self._order
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        arrays: dict[str, np.ndarray] = {
            "version": np.array([_SNAPSHOT_VERSION]),
            "hashes": state.hashes[: state.n_rows],
            "ids": state.ids[: state.n_rows],
            "alive": state.alive,
            "order": order,
        }
        if state.tables is not None:
            t = state.tables
            arrays |= {"width": np.array([t.width]), "entries": t.entries, "base": t.base, "local": t.local}
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, brute_force_max: int = BRUTE_FORCE_MAX) -> PdqIndex:
        """An index from a snapshot written by :meth:`save` (no table rebuild)."""
        index = cls(brute_force_max=brute_force_max)
        with np.load(Path(path)) as z:
            if int(z["version"][0]) != _SNAPSHOT_VERSION:
                raise ValueError(f"{path}: unknown PDQ index snapshot version {int(z['version'][0])}")
            hashes, ids, alive = z["hashes"], z["ids"], z["alive"]
            tables = None
            if "entries" in z:
                width = int(z["width"][0])
                tables = Tables(width, z["entries"], z["base"], z["local"], pdq_mih.flip_masks(width))
            index._order = z["order"]
        n = alive.size
        index._free = np.flatnonzero(~alive).astype(np.int64)
        index._state = _State(hashes, ids, alive, n, int(np.count_nonzero(alive)), tables)
        return index


def _scan(state: _State, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every query row against every live row, all rows of a block at once ((rows, query rows) arrays of at
    most ``_SCAN_CELLS`` cells): one upload's 8 variants x its views cost a few numpy calls, not one per row."""
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    step = max(1, min(_SCAN_BLOCK, _SCAN_CELLS // query.shape[0]))
    for start in range(0, state.n_rows, step):
        block = state.hashes[start : min(start + step, state.n_rows)]
        alive = state.alive[start : start + block.shape[0]]
        half = np.bitwise_count(np.bitwise_xor(block[:, 0, None], query[None, :, 0]))
        half += np.bitwise_count(np.bitwise_xor(block[:, 1, None], query[None, :, 1]))  # <= 128: fits uint8
        pos, v = np.nonzero(half <= radius)
        if pos.size == 0:
            continue
        d = distances(block[pos], query[v])
        keep = (d <= radius) & alive[pos]
        found.append((pos[keep].astype(np.int64) + start, d[keep], v[keep].astype(np.int64)))
    return _concat(found)


def _probe(tables: Tables, hashes: np.ndarray, query: np.ndarray,
           radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, qrow = pdq_mih.candidates(tables, query, radius)
    if rows.size == 0:
        return rows, np.empty(0, np.int32), qrow
    pos, d = _near(hashes, rows, query, qrow if query.shape[0] > 1 else None, radius)
    return rows[pos], d, qrow[pos]


def _concat(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int64)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def _answer(ids: np.ndarray, rows: np.ndarray, dist: np.ndarray, qrow: np.ndarray) -> list[tuple[int, int, int]]:
    """One (id, distance, query row) per row: the smallest distance, then the first query row."""
    if rows.size == 0:
        return []
    first = np.lexsort((qrow, dist, rows))
    rows, dist, qrow = rows[first], dist[first], qrow[first]
    lead = np.ones(rows.size, bool)
    lead[1:] = rows[1:] != rows[:-1]
    out_ids = ids[rows[lead]]
    dist, qrow = dist[lead], qrow[lead]
    order = np.lexsort((out_ids, dist))
    return list(zip(out_ids[order].tolist(), dist[order].tolist(), qrow[order].tolist(), strict=True))
