"""Multi-index hashing tables for 256-bit PDQ hashes: the candidate generator behind :class:`PdqIndex`.

Generalised pigeonhole (Qin et al.): split the first ``CHUNKS * width`` bits of a hash into ``CHUNKS``
(11) chunks.  If two hashes are within distance ``r``, their distance on those bits is <= ``r`` too; for
any per-chunk radii ``t`` with ``sum(t) = r - CHUNKS + 1`` some chunk ``i`` differs in at most ``t[i]``
bits (if every chunk differed in ``t[i] + 1`` or more, the sum would be ``r + 1``).  A radius of -1
means the chunk's table is not probed at all.  :func:`chunk_radii` spreads the sum evenly (the
cheapest choice): at ``r = 31``, 10 tables probed at 2 bits and one at 1; at ``r = 0`` one table at 0.
A chunk radius above 2 is never used: beyond :data:`MAX_RADIUS` (32) the caller scans.

The 11 tables are one CSR structure: ``entries`` (uint32 row numbers, table after table, bucket after
bucket) and the bucket starts (bucket ``t << width | key`` spans ``entries[start(b):start(b + 1)]``).
Both are immutable once published: :func:`merge` returns new arrays (one compiled pass over
``entries``), so readers holding the old ones keep a consistent view.  The loops are in
:mod:`service.matchers.pdq_kernels`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from service.matchers import pdq_kernels
from service.matchers.pdq_kernels import BLOCK_BITS, CHUNKS

MAX_CHUNK_RADIUS = 2
MAX_RADIUS = CHUNKS * (MAX_CHUNK_RADIUS + 1) - 1  # 32: beyond it some chunk may differ in 3 bits
_OUT = 1024  # matches a lookup expects at most (more: it runs again with room for all)

__all__ = ["CHUNKS", "MAX_RADIUS", "Tables", "build", "chunk_keys", "chunk_radii", "merge", "probe",
           "scan", "warm_up", "width_for"]


def width_for(n: int) -> int:
    """Chunk width for ``n`` hashes: the widest (fewest candidates per lookup) whose bucket starts
    (1.06 bytes per bucket, 11 tables) take at most 12.5 bytes per hash, within 12..23 (11 chunks of
    23 bits use 253 of the 256 bits).  23 at 10 million, 20 at 1 million, 16 at 100,000."""
    return int(min(23, max(12, math.floor(math.log2(max(n, 2) * 12.5 / (CHUNKS * 1.0625))))))


def _radii(radius: int) -> np.ndarray:
    low, high = divmod(radius + 1, CHUNKS)  # sum(t + 1) = radius + 1, each t + 1 in {low, low + 1}
    radii = np.array([low + (t < high) - 1 for t in range(CHUNKS)], dtype=np.int64)
    radii.flags.writeable = False
    return radii


_RADII = tuple(_radii(r) for r in range(MAX_RADIUS + 1))


def chunk_radii(radius: int) -> np.ndarray:
    """Per-table probe radii (-1: skip the table) summing to ``radius - CHUNKS + 1``, as even as can be
    (read-only: shared by every lookup)."""
    if not 0 <= radius <= MAX_RADIUS:
        raise ValueError(f"radius {radius} outside 0..{MAX_RADIUS}")
    return _RADII[radius]


def probe_count(width: int, radius: int) -> int:
    """Buckets one query row reads at ``radius``."""
    return sum([1, 1 + width, 1 + width + width * (width - 1) // 2][t] for t in chunk_radii(radius) if t >= 0)


def chunk_keys(hashes: np.ndarray, width: int) -> np.ndarray:
    """(N, CHUNKS) int64 keys: chunk ``c`` is bits ``[c*width, (c+1)*width)`` of the hash's words read
    as one little-endian 256-bit number (word 0 lowest)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64).reshape(-1, 4)
    buckets = pdq_kernels.keys_of(hashes, np.arange(hashes.shape[0], dtype=np.int64), width)
    return buckets - (np.arange(CHUNKS, dtype=np.int64) << width)


@dataclass(frozen=True, slots=True)
class Tables:
    """Bucket ``b`` spans ``entries[start(b):start(b + 1)]`` with ``start(b) = base[b >> 6] + local[b]``:
    a uint32 base per 64 buckets and a uint8 offset per bucket (1.06 bytes per bucket; ``local`` widens
    to uint16 or uint32 only when 64 buckets hold 256+ or 65,536+ rows), little enough to afford 23-bit
    chunks at 10 million hashes: half the candidates of 22-bit ones."""

    width: int
    entries: np.ndarray  # uint32 row numbers, table after table, bucket after bucket
    base: np.ndarray  # uint32, start of every block of 64 buckets (+ the end)
    local: np.ndarray  # uint8 (or wider), start of each bucket (+ the end) minus its block's base

    @property
    def nbytes(self) -> int:
        return int(self.entries.nbytes + self.base.nbytes + self.local.nbytes)

    def offsets(self) -> np.ndarray:
        """Every bucket start (and the end) as one int64 array (for checks, not for lookups)."""
        b = np.arange((CHUNKS << self.width) + 1, dtype=np.int64)
        return self.base[b >> BLOCK_BITS].astype(np.int64) + self.local[b]


_LOCAL = (np.uint8, np.uint16, np.uint32)


def _starts(width: int, dtype: type[np.unsignedinteger]) -> tuple[np.ndarray, np.ndarray]:
    nbuckets = CHUNKS << width
    return np.empty((nbuckets >> BLOCK_BITS) + 1, np.uint32), np.empty(nbuckets + 1, dtype)


def build(hashes: np.ndarray, rows: np.ndarray, width: int) -> Tables:
    """Tables over ``hashes[rows]`` (``hashes`` the index's whole (capacity, 4) row array: no copy of the
    rows), rows in the order given inside each bucket (a counting sort per table)."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if rows.size * CHUNKS >= 1 << 32:
        raise ValueError(f"{rows.size} hashes: more than uint32 entry positions can address")
    entries = np.empty(rows.size * CHUNKS, np.uint32)  # numpy's allocator: huge pages where it can
    for dtype in _LOCAL:
        base, local = _starts(width, dtype)
        if pdq_kernels.build(hashes, rows, width, entries, base, local):
            return Tables(width, entries, base, local)
    raise AssertionError("unreachable: uint32 offsets hold any block")


def merge(tables: Tables, hashes: np.ndarray, drop: np.ndarray, add: np.ndarray) -> Tables:
    """New tables without the entries of rows ``drop`` and with rows ``add`` at the end of their buckets
    (the hashes of both in ``hashes``, the index's row array).  The entries are copied once around the
    changes; the bucket starts are copied and only the blocks with a change rewritten."""
    drop = np.ascontiguousarray(drop, dtype=np.int64)
    add = np.ascontiguousarray(add, dtype=np.int64)
    if tables.entries.size + add.size * CHUNKS >= 1 << 32:
        raise ValueError("more entries than uint32 positions can address")
    del_buckets = pdq_kernels.keys_of(hashes, drop, tables.width).ravel()
    del_pos = pdq_kernels.positions(tables.entries, tables.base, tables.local, del_buckets,
                                    np.repeat(drop.astype(np.uint32), CHUNKS))
    if (del_pos < 0).any():
        raise ValueError("a dropped row is not in the tables")
    add_buckets = pdq_kernels.keys_of(hashes, add, tables.width).ravel()
    values = np.repeat(add.astype(np.uint32), CHUNKS)
    by_bucket = np.argsort(add_buckets, kind="stable")
    add_buckets, values = add_buckets[by_bucket], values[by_bucket]
    at = tables.base[(add_buckets + 1) >> BLOCK_BITS].astype(np.int64) + tables.local[add_buckets + 1]
    entries = np.empty(tables.entries.size - del_pos.size + values.size, np.uint32)
    pdq_kernels.splice(tables.entries, np.sort(del_pos), at, values, entries)
    buckets = np.concatenate([add_buckets, del_buckets])
    change = np.concatenate([np.ones(add_buckets.size, np.int64), np.full(del_buckets.size, -1, np.int64)])
    by_bucket = np.argsort(buckets, kind="stable")
    buckets, change = buckets[by_bucket], change[by_bucket]
    base = np.empty_like(tables.base)
    for dtype in _LOCAL[_LOCAL.index(tables.local.dtype.type):]:
        local = tables.local.astype(dtype, copy=True)
        if pdq_kernels.restart(tables.base, tables.local, buckets, change, base, local):
            return Tables(tables.width, entries, base, local)
    raise AssertionError("unreachable: uint32 offsets hold any block")


def _found(kernel: object, args: tuple[object, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    size = _OUT
    while True:
        out = (np.empty(size, np.int64), np.empty(size, np.int32), np.empty(size, np.int64))
        n = kernel(*args, *out)  # type: ignore[operator]
        if n <= size:
            return out[0][:n], out[1][:n], out[2][:n]
        size = n


def probe(tables: Tables, hashes: np.ndarray, alive: np.ndarray, query: np.ndarray,
          radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, distances, query rows) of the live rows in the tables within ``radius`` (<= MAX_RADIUS)
    of a row of ``query`` (V, 4).  Exact; a row may repeat (found through several tables)."""
    return _found(pdq_kernels.probe, (tables.entries, tables.base, tables.local, tables.width, hashes, alive,
                                      query, chunk_radii(radius), radius))


def scan(rows: np.ndarray, hashes: np.ndarray, alive: np.ndarray, query: np.ndarray,
         radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`probe`'s answer over the live rows among ``rows``, each compared in full."""
    return _found(pdq_kernels.scan, (rows, hashes, alive, query, radius))


_warm = threading.Lock()
_warmed = False


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel for the array types the index passes: at index
    creation, never on a live lookup."""
    global _warmed
    with _warm:
        if _warmed:
            return
        hashes = np.zeros((2, 4), np.uint64)
        rows = np.arange(2, dtype=np.int64)
        alive = np.ones(2, bool)
        for dtype in _LOCAL:
            base, local = _starts(12, dtype)
            entries = np.empty(2 * CHUNKS, np.uint32)
            pdq_kernels.build(hashes, rows, 12, entries, base, local)
            tables = Tables(12, entries, base, local)
            probe(tables, hashes, alive, hashes[:1], 31)
            merge(tables, hashes, rows[:1], rows[:0])
        scan(rows, hashes, alive, hashes[:1], 31)
        for ids in (rows, rows.astype(np.int32)):  # the writer's id lookups (int64 or int32 ids)
            pdq_kernels.search(ids, rows.astype(np.uint32), rows)
        _warmed = True
