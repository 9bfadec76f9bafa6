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
scans every row; above, multi-index hashing tables (:mod:`service.matchers.pdq_mih`) name the candidate
rows and only those are compared, and a radius above :data:`~service.matchers.pdq_mih.MAX_RADIUS`
scans.  Added rows first go to a small *segment* that every query scans; removed rows are only marked
dead.  When the segment outgrows ``segment_max`` rows, one pass merges it into the tables and drops the
dead rows' entries (a removed row is reused only after that, so the tables never name a row whose hash
changed).  Readers take one immutable :class:`_State`; the writer publishes a new one per call.  Rows
freed by a removal are reused only once no reader can still hold a state in which they were live.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.matchers import pdq_kernels, pdq_mih
from service.matchers.pdq_mih import Tables

BRUTE_FORCE_MAX = 8_000  # measured (8-hash lookups per core): scan 11.5k vs tables 10.4k at 6k, 6.8k vs 8.3k at 10k
_INT32 = np.iinfo(np.int32)
SEGMENT_MAX = 8192  # rows added since the last merge that queries scan (measured: see docs/pdq-index.md)
_SNAPSHOT_VERSION = 2


@dataclass(frozen=True, slots=True, weakref_slot=True)
class _State:
    hashes: np.ndarray  # (capacity, 4) uint64; rows >= n_rows and dead rows are garbage
    ids: np.ndarray  # (capacity,) int32 (while every id fits) or int64, the id of each live row
    alive: np.ndarray  # (n_rows,) bool
    n_rows: int
    size: int
    tables: Tables | None
    segment: np.ndarray  # int64 live rows not in the tables (every live row while there are none)


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system after a build or merge.  Their temporaries (chunk keys,
    sort buffers) under glibc's mmap threshold (up to 32 MB) come from the heap, and without a trim the freed
    pages stay resident: measured 163 B/hash resident at 100,000 hashes and 181 at 1,000,000 (arrays: 93
    and 97) against 91 and 99 with it."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _empty_state() -> _State:
    return _State(np.empty((0, 4), np.uint64), np.empty(0, np.int32), np.empty(0, bool), 0, 0, None,
                  np.empty(0, np.int64))


class PdqIndex:
    """Multi-index hashing with a brute-force scan for small sizes (see the module docstring)."""

    def __init__(self, *, brute_force_max: int = BRUTE_FORCE_MAX, segment_max: int = SEGMENT_MAX) -> None:
        pdq_mih.warm_up()  # compiled now (or loaded from numba's cache), not on the first lookup
        self._brute_force_max = brute_force_max  # sizes up to this are scanned, without tables
        self._segment_max = segment_max
        self._lock = threading.Lock()  # writers only; readers take the current state in one read
        self._state = _empty_state()
        self._trim_due = False  # a build or merge freed big temporaries: give their pages back
        self._order = np.empty(0, np.uint32)  # live rows sorted by id (writer only)
        self._stale = np.empty(0, np.int64)  # removed rows still in the tables: reusable after a merge
        self._free = np.empty(0, np.int64)  # rows no reader can see as live: reusable now
        self._pending: deque[tuple[weakref.ref[_State], np.ndarray]] = deque()  # rows freed after a state

    def __len__(self) -> int:
        return self._state.size

    def nbytes(self) -> int:
        """Bytes held by the index's arrays (hashes, ids, tables and the writer's bookkeeping)."""
        s = self._state
        tables = s.tables.nbytes if s.tables is not None else 0
        return int(s.n_rows * (32 + s.ids.itemsize) + s.alive.nbytes + s.segment.nbytes + self._order.nbytes
                   + self._stale.nbytes + tables)

    # -- writes -----------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        """Insert ``hashes`` ((N, 4) uint64) under ``ids`` ((N,) int64), replacing present ids.

        Any batch size: a first big batch builds the tables in one pass, later ones go to the segment
        (merged into the tables once it is big enough)."""
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
        del uniq, last
        self._settle()

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return
        with self._lock:
            self._apply(ids, ids[:0], np.empty((0, 4), np.uint64))
        self._settle()

    def merge(self) -> None:
        """Merge the segment into the tables now (normally done when it outgrows ``segment_max``)."""
        with self._lock:
            old = self._state
            if old.tables is not None and (old.segment.size or self._stale.size):
                tables = self._retable(old.tables, old.hashes, old.alive, old.segment, True)
                self._publish(old, old.alive, old.segment, tables, old.n_rows, old.size, old.hashes, old.ids,
                              np.empty(0, np.int64))
        self._settle()

    def _settle(self) -> None:
        """After a write that built or merged the tables (outside the lock: other writers need not wait)."""
        if self._trim_due:
            self._trim_due = False
            _trim_heap()

    def _rows_of(self, state: _State, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in self._order, rows) of the present ids among ``ids``."""
        if self._order.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        # A binary search through the rows sorted by id: no sorted copy of the ids (8 bytes a hash).
        at = pdq_kernels.search(state.ids, self._order, ids)
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
        wide = ids.size > 0 and (int(ids.min()) < _INT32.min or int(ids.max()) > _INT32.max)
        rows, hashes_arr, ids_arr = self._allocate(old, ids.size, wide)
        n_rows = max(old.n_rows, int(rows.max()) + 1) if rows.size else old.n_rows
        hashes_arr[rows] = hashes  # rows nobody can see yet: safe to write in place
        ids_arr[rows] = ids
        alive = np.zeros(n_rows, bool)
        alive[: old.n_rows] = old.alive
        alive[dead] = False
        alive[rows] = True
        # a live row is in the tables or in the segment
        in_tables = np.zeros(dead.size, bool) if old.tables is None else ~np.isin(dead, old.segment)
        self._stale = np.concatenate([self._stale, dead[in_tables]])
        freed = dead[~in_tables]  # segment rows: no table names them
        segment = np.concatenate([old.segment[alive[old.segment]], rows])
        size = old.size - dead.size + ids.size
        tables = self._retable(old.tables, hashes_arr, alive, segment, segment.size > self._segment_max)
        order = np.delete(self._order, order_at)
        if ids.size:
            by_id = np.argsort(ids, kind="stable")
            where = pdq_kernels.search(ids_arr, order, ids[by_id])
            order = np.insert(order, where, rows[by_id].astype(np.uint32))
        self._order = order
        self._publish(old, alive, segment, tables, n_rows, size, hashes_arr, ids_arr, freed)

    def _publish(self, old: _State, alive: np.ndarray, segment: np.ndarray, tables: Tables | None, n_rows: int,
                 size: int, hashes: np.ndarray, ids: np.ndarray, freed: np.ndarray) -> None:
        rebuilt = tables is not old.tables
        if rebuilt:  # merged or rebuilt: the segment is in, the stale rows are out
            freed = np.concatenate([freed, self._stale])
            self._stale = np.empty(0, np.int64)
            segment = np.empty(0, np.int64)
        self._state = _State(hashes, ids, alive, n_rows, size, tables, segment)
        # Every retired state is tracked, so a row is reused only when all states older than its
        # removal are gone (a reader holding one may still compare against the row's old hash).
        self._pending.append((weakref.ref(old), freed))
        self._trim_due = self._trim_due or rebuilt

    def _retable(self, tables: Tables | None, hashes: np.ndarray, alive: np.ndarray, segment: np.ndarray,
                 full: bool) -> Tables | None:
        """The tables for the next state: the old ones, or (``full`` segment, or a first or wider build)
        new ones holding every live row."""
        size = int(np.count_nonzero(alive))
        if tables is None and size <= self._brute_force_max:
            return None
        if tables is None or pdq_mih.width_for(size) > tables.width:
            # First crossing of the threshold, or twice the hashes per bucket: one full build.
            return pdq_mih.build(hashes, np.flatnonzero(alive), pdq_mih.width_for(size))
        if not full:
            return tables
        return pdq_mih.merge(tables, hashes, self._stale, segment)

    def _allocate(self, old: _State, n: int, wide: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows for ``n`` new hashes (reused free rows first), and the arrays to write them into (ids
        as int32 while every id fits, 4 bytes a hash less; int64 from the first ``wide`` id on)."""
        reuse = self._free[:n]
        self._free = self._free[n:]
        extra = n - reuse.size
        rows = np.concatenate([reuse, np.arange(old.n_rows, old.n_rows + extra, dtype=np.int64)])
        need = old.n_rows + extra
        hashes, ids = old.hashes, old.ids
        if need > hashes.shape[0]:  # grow by half (a first batch: a quarter): untouched capacity is not resident
            cap = max(need + need // 4, hashes.shape[0] * 3 // 2, 1024)
            hashes = np.empty((cap, 4), np.uint64)
            hashes[: old.n_rows] = old.hashes[: old.n_rows]
            ids = np.empty(cap, np.int64 if wide else old.ids.dtype)
            ids[: old.n_rows] = old.ids[: old.n_rows]
        elif wide and ids.dtype != np.int64:  # a copy: readers of older states keep the narrow one
            ids = ids.astype(np.int64)
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
        query = np.ascontiguousarray(query, dtype=np.uint64).reshape(-1, 4)
        if not query.flags.writeable:  # (a hash's bytes): the kernels are compiled for writable arrays only, and a
            query = query.copy()  # read-only one would be compiled anew on a live lookup (a second or two)
        if state.size == 0 or query.shape[0] == 0 or radius < 0:
            return []
        if state.tables is None:
            found = pdq_mih.scan(state.segment, state.hashes, state.alive, query, radius)
        elif radius > pdq_mih.MAX_RADIUS:
            every = np.flatnonzero(state.alive)
            found = pdq_mih.scan(every, state.hashes, state.alive, query, radius)
        else:
            found = pdq_mih.probe(state.tables, state.hashes, state.alive, query, radius)
            if state.segment.size:
                found = _concat(found, pdq_mih.scan(state.segment, state.hashes, state.alive, query, radius))
        return _answer(state.ids, *found)

    # -- snapshots --------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a snapshot (one uncompressed ``.npz``) atomically: a temporary file, fsync, rename."""
        with self._lock:  # the writer's bookkeeping must belong to the same state (arrays are not copied)
            state, order, stale = self._state, self._order, self._stale
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        arrays: dict[str, np.ndarray] = {
            "version": np.array([_SNAPSHOT_VERSION]),
            "hashes": state.hashes[: state.n_rows],
            "ids": state.ids[: state.n_rows],
            "alive": state.alive,
            "order": order,
            "segment": state.segment,
            "stale": stale,
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
    def load(cls, path: str | os.PathLike[str], *, brute_force_max: int = BRUTE_FORCE_MAX,
             segment_max: int = SEGMENT_MAX) -> PdqIndex:
        """An index from a snapshot written by :meth:`save` (no table rebuild)."""
        index = cls(brute_force_max=brute_force_max, segment_max=segment_max)
        with np.load(Path(path)) as z:
            if int(z["version"][0]) != _SNAPSHOT_VERSION:
                raise ValueError(f"{path}: unknown PDQ index snapshot version {int(z['version'][0])}")
            hashes, ids, alive, segment, stale = z["hashes"], z["ids"], z["alive"], z["segment"], z["stale"]
            tables = None
            if "entries" in z:
                tables = Tables(int(z["width"][0]), z["entries"], z["base"], z["local"])
            index._order = z["order"]
        n = alive.size
        free = ~alive
        free[stale] = False
        index._stale = stale
        index._free = np.flatnonzero(free).astype(np.int64)
        index._state = _State(hashes, ids, alive, n, int(np.count_nonzero(alive)), tables, segment)
        return index


Found = tuple[np.ndarray, np.ndarray, np.ndarray]


def _concat(a: Found, b: Found) -> Found:
    return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]])


def _answer(ids: np.ndarray, rows: np.ndarray, dist: np.ndarray, qrow: np.ndarray) -> list[tuple[int, int, int]]:
    """One (id, distance, query row) per row: the smallest distance, then the first query row."""
    if rows.size == 0:
        return []
    if rows.size == 1:
        return [(int(ids[rows[0]]), int(dist[0]), int(qrow[0]))]
    first = np.lexsort((qrow, dist, rows))
    rows, dist, qrow = rows[first], dist[first], qrow[first]
    lead = np.ones(rows.size, bool)
    lead[1:] = rows[1:] != rows[:-1]
    out_ids = ids[rows[lead]]
    dist, qrow = dist[lead], qrow[lead]
    order = np.lexsort((out_ids, dist))
    return list(zip(out_ids[order].tolist(), dist[order].tolist(), qrow[order].tolist(), strict=True))
