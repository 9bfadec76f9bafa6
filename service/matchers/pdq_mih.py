"""Multi-index hashing tables for 256-bit PDQ hashes: the candidate generator behind :class:`PdqIndex`.

Pigeonhole: split the first ``CHUNKS * width`` bits of a hash into ``CHUNKS`` (11) chunks.  If two
hashes are within distance ``r``, their distance restricted to those bits is <= ``r`` too, so some chunk
differs in at most ``r // 11`` bits.  Probing every chunk's buckets within ``r // 11`` bits of the
query's chunk therefore finds every hash within ``r``: radius <= 10 probes 1 bucket per chunk, <= 21
probes ``1 + width`` and <= 32 probes ``1 + width + width*(width-1)/2``.  Beyond 32 the caller scans.

The 11 tables are one CSR structure: ``entries`` (uint32 row numbers, table after table, bucket after
bucket) and ``offsets`` (bucket ``t << width | key`` spans ``entries[offsets[b]:offsets[b + 1]]``).
Both are immutable once published: :func:`insert` and :func:`delete` return new arrays (one vectorised
pass over ``entries``), so readers holding the old pair keep a consistent view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

CHUNKS = 11
MAX_CHUNK_RADIUS = 2
MAX_RADIUS = CHUNKS * (MAX_CHUNK_RADIUS + 1) - 1  # 32: beyond it some chunk may differ in 3 bits
_ROW_BITS = np.uint64(32)
_ROW_MASK = np.uint64(0xFFFFFFFF)


def width_for(n: int) -> int:
    """Chunk width for ``n`` hashes: 1.4-2.8 hashes per bucket (bucket starts ~10 bytes per hash), 12..23."""
    return int(min(23, max(12, round(math.log2(max(n, 2) / 2)))))


def flip_masks(width: int) -> np.ndarray:
    """XOR masks of every flip of at most 2 bits of a ``width``-bit key, by popcount (int64)."""
    masks = [0] + [1 << i for i in range(width)] + [(1 << i) | (1 << j) for i, j in combinations(range(width), 2)]
    return np.array(masks, dtype=np.int64)


def probe_count(width: int, chunk_radius: int) -> int:
    return [1, 1 + width, 1 + width + width * (width - 1) // 2][chunk_radius]


def chunk_keys(hashes: np.ndarray, width: int) -> np.ndarray:
    """(N, CHUNKS) int64 keys: chunk ``c`` is bits ``[c*width, (c+1)*width)`` of the hash's words read
    as one little-endian 256-bit number (word 0 lowest)."""
    hashes = hashes.reshape(-1, 4)
    out = np.empty((hashes.shape[0], CHUNKS), dtype=np.int64)
    mask = np.uint64((1 << width) - 1)
    for c in range(CHUNKS):
        lo = c * width
        word, bit = divmod(lo, 64)
        key = hashes[:, word] >> np.uint64(bit)
        if bit + width > 64:
            key = key | (hashes[:, word + 1] << np.uint64(64 - bit))
        out[:, c] = (key & mask).view(np.int64)
    return out


def query_buckets(query: np.ndarray, width: int) -> np.ndarray:
    """:func:`_buckets` of :func:`chunk_keys` for a few query rows, with Python ints (no per-chunk numpy
    calls: this runs once per lookup)."""
    mask = (1 << width) - 1
    out = []
    for row in np.ascontiguousarray(query, dtype=np.uint64).reshape(-1, 4):
        x = int.from_bytes(row.astype("<u8").tobytes(), "little")
        out.append([(t << width) | ((x >> (t * width)) & mask) for t in range(CHUNKS)])
    return np.array(out, dtype=np.int64).reshape(-1, CHUNKS)


def _buckets(keys: np.ndarray, width: int) -> np.ndarray:
    """Global bucket numbers ``table << width | key``, same shape as ``keys`` (N, CHUNKS)."""
    return keys + (np.arange(CHUNKS, dtype=np.int64) << width)


BLOCK_BITS = 6  # bucket starts are stored as a base per 64 buckets plus a small offset per bucket


@dataclass(frozen=True, slots=True)
class Tables:
    """Bucket ``b`` spans ``entries[start(b):start(b + 1)]`` with ``start(b) = base[b >> 6] + local[b]``:
    2 bytes per bucket instead of 4 (``local`` widens to uint32 only if 64 buckets hold 65,536+ rows),
    which pays for one more key bit per chunk: half the candidates at the same memory."""

    width: int
    entries: np.ndarray  # uint32 row numbers, table after table, bucket after bucket
    base: np.ndarray  # int64, start of every block of 64 buckets (+ one past the end)
    local: np.ndarray  # uint16 (or uint32), start of each bucket (+ the end) minus its block's base
    flips: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.entries.nbytes + self.base.nbytes + self.local.nbytes)

    def starts(self, buckets: np.ndarray) -> np.ndarray:
        """int64 start positions of ``buckets`` (0 .. CHUNKS << width inclusive)."""
        return self.base[buckets >> BLOCK_BITS] + self.local[buckets]

    def offsets(self) -> np.ndarray:
        """Every bucket start as one int64 array (for rewrites, not for lookups)."""
        return self.starts(np.arange(self.local.size, dtype=np.int64))


def _split(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(base, local) of an int64 array of bucket starts, padded to whole blocks with the last start."""
    per = 1 << BLOCK_BITS
    pad = (-offsets.size) % per
    if pad:
        offsets = np.concatenate([offsets, np.full(pad, offsets[-1], dtype=offsets.dtype)])
    grid = offsets.reshape(-1, per)
    base = grid[:, 0].copy()
    local = (grid - base[:, None]).reshape(-1)
    dtype = np.uint16 if local.size == 0 or int(local.max()) < 1 << 16 else np.uint32
    return base, local.astype(dtype)


def build(rows: np.ndarray, hashes: np.ndarray, width: int) -> Tables:
    """Tables over ``hashes`` (N, 4) stored at ``rows`` (N,): one sort per table, no per-hash Python."""
    rows = np.asarray(rows, dtype=np.uint64)
    n = rows.size
    keys = chunk_keys(hashes, width)
    nbuckets = 1 << width
    entries = np.empty(n * CHUNKS, dtype=np.uint32)
    counts = np.empty(CHUNKS * nbuckets, dtype=np.int64)
    for t in range(CHUNKS):
        key = keys[:, t]
        packed = np.sort((key.astype(np.uint64) << _ROW_BITS) | rows)  # bucket-major, rows ascending
        entries[t * n : (t + 1) * n] = (packed & _ROW_MASK).astype(np.uint32)
        counts[t * nbuckets : (t + 1) * nbuckets] = np.bincount(key, minlength=nbuckets)
    offsets = np.zeros(CHUNKS * nbuckets + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Tables(width, entries, *_split(offsets), flip_masks(width))


def _shift(tables: Tables, buckets: np.ndarray, sign: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, local) after adding (sign 1) or removing (-1) one entry in each of ``buckets``.

    Blocks move by the entries changed in earlier blocks; inside a block, only the blocks a change
    touched are rewritten, each bucket moving by the changes in its earlier buckets."""
    per = 1 << BLOCK_BITS
    base = tables.base.copy()
    base[1:] += sign * np.cumsum(np.bincount(buckets >> BLOCK_BITS, minlength=base.size))[:-1]
    after = buckets + 1  # the starts that move: every later bucket up to the block's end
    after = after[(after & (per - 1)) != 0]  # (a block's first bucket starts at its base)
    if after.size == 0:
        return base, tables.local
    blocks, slot = np.unique(after >> BLOCK_BITS, return_inverse=True)
    marks = np.zeros((blocks.size, per), np.int32)
    np.add.at(marks, (slot, after & (per - 1)), 1)
    np.cumsum(marks, axis=1, out=marks)
    moved = tables.local.reshape(-1, per)[blocks].astype(np.int32)
    moved += sign * marks
    wide = tables.local.dtype == np.uint32 or int(moved.max()) >= 1 << 16
    local = tables.local.astype(np.uint32 if wide else np.uint16, copy=True)
    local.reshape(-1, per)[blocks] = moved
    return base, local


def insert(tables: Tables, rows: np.ndarray, hashes: np.ndarray) -> Tables:
    """New tables with ``rows`` (holding ``hashes``) added at the end of their buckets."""
    if rows.size == 0:
        return tables
    buckets = _buckets(chunk_keys(hashes, tables.width), tables.width).ravel()
    values = np.repeat(np.asarray(rows, dtype=np.uint32), CHUNKS)
    # Empty buckets share one end position: insert in bucket order so each value lands in its own.
    by_bucket = np.argsort(buckets, kind="stable")
    buckets, values = buckets[by_bucket], values[by_bucket]
    entries = np.insert(tables.entries, tables.starts(buckets + 1), values)
    return Tables(tables.width, entries, *_shift(tables, buckets, 1), tables.flips)


def delete(tables: Tables, rows: np.ndarray, hashes: np.ndarray) -> Tables:
    """New tables without ``rows`` (which hold ``hashes`` in ``tables``)."""
    if rows.size == 0:
        return tables
    buckets = _buckets(chunk_keys(hashes, tables.width), tables.width).ravel()
    wanted = np.repeat(np.asarray(rows, dtype=np.uint32), CHUNKS)
    positions, lengths = expand(tables, buckets)
    owner = np.repeat(np.arange(buckets.size), lengths)
    found = positions[tables.entries[positions] == wanted[owner]]
    entries = np.delete(tables.entries, found)
    return Tables(tables.width, entries, *_shift(tables, buckets, -1), tables.flips)


def expand(tables: Tables, buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every entry position of ``buckets``, and the number of entries in each bucket."""
    starts = tables.starts(buckets)
    lengths = tables.starts(buckets + 1) - starts
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if ends.size else 0
    positions = np.repeat(starts - (ends - lengths), lengths)
    positions += np.arange(total, dtype=np.int64)
    return positions, lengths


def candidates(tables: Tables, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows that may lie within ``radius`` (<= MAX_RADIUS) of a row of ``query`` (V, 4), and for each
    the query row that probed it.  A superset of the true answer; rows may repeat."""
    probes = tables.flips[: probe_count(tables.width, radius // CHUNKS)]
    buckets = (query_buckets(query, tables.width)[:, :, None] ^ probes).ravel()
    positions, lengths = expand(tables, buckets)
    rows = tables.entries[positions]
    n_query = buckets.size // (CHUNKS * probes.size)
    if n_query == 1:
        return rows, np.zeros(rows.size, np.intp)
    per_query = lengths.reshape(n_query, -1).sum(axis=1)
    return rows, np.repeat(np.arange(n_query), per_query)
