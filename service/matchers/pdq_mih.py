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

from dataclasses import dataclass
from itertools import combinations

import numpy as np

CHUNKS = 11
MAX_CHUNK_RADIUS = 2
MAX_RADIUS = CHUNKS * (MAX_CHUNK_RADIUS + 1) - 1  # 32: beyond it some chunk may differ in 3 bits
_ROW_BITS = np.uint64(32)
_ROW_MASK = np.uint64(0xFFFFFFFF)


def width_for(n: int) -> int:
    """Chunk width for ``n`` hashes: about 4-5 hashes per bucket, offsets ~10 bytes per hash, 12..23 bits."""
    return int(min(23, max(12, (max(n, 1) // 4).bit_length() - 1)))


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


def _buckets(keys: np.ndarray, width: int) -> np.ndarray:
    """Global bucket numbers ``table << width | key``, same shape as ``keys`` (N, CHUNKS)."""
    return keys + (np.arange(CHUNKS, dtype=np.int64) << width)


@dataclass(frozen=True, slots=True)
class Tables:
    width: int
    entries: np.ndarray  # uint32 row numbers
    offsets: np.ndarray  # CHUNKS << width + 1 bucket starts (uint32, or int64 past 2**32 entries)
    flips: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.entries.nbytes + self.offsets.nbytes)


def _offset_dtype(n_entries: int) -> type[np.unsignedinteger] | type[np.signedinteger]:
    return np.uint32 if n_entries < 2**32 else np.int64


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
    offsets = np.zeros(CHUNKS * nbuckets + 1, dtype=_offset_dtype(entries.size))
    np.cumsum(counts, out=offsets[1:])
    return Tables(width, entries, offsets, flip_masks(width))


def _shift(offsets: np.ndarray, buckets: np.ndarray, sign: int) -> np.ndarray:
    counts = np.bincount(buckets, minlength=offsets.size - 1)
    moved = np.cumsum(counts)
    out = offsets.astype(_offset_dtype(int(offsets[-1]) + sign * buckets.size), copy=True)
    if sign > 0:
        out[1:] += moved.astype(out.dtype)
    else:
        out[1:] -= moved.astype(out.dtype)
    return out


def insert(tables: Tables, rows: np.ndarray, hashes: np.ndarray) -> Tables:
    """New tables with ``rows`` (holding ``hashes``) added at the end of their buckets."""
    if rows.size == 0:
        return tables
    buckets = _buckets(chunk_keys(hashes, tables.width), tables.width).ravel()
    where = tables.offsets[buckets + 1].astype(np.int64)
    values = np.repeat(np.asarray(rows, dtype=np.uint32), CHUNKS)
    entries = np.insert(tables.entries, where, values)
    return Tables(tables.width, entries, _shift(tables.offsets, buckets, 1), tables.flips)


def delete(tables: Tables, rows: np.ndarray, hashes: np.ndarray) -> Tables:
    """New tables without ``rows`` (which hold ``hashes`` in ``tables``)."""
    if rows.size == 0:
        return tables
    buckets = _buckets(chunk_keys(hashes, tables.width), tables.width).ravel()
    wanted = np.repeat(np.asarray(rows, dtype=np.uint32), CHUNKS)
    positions, owner = expand(tables.offsets, buckets)
    found = positions[tables.entries[positions] == wanted[owner]]
    entries = np.delete(tables.entries, found)
    return Tables(tables.width, entries, _shift(tables.offsets, buckets, -1), tables.flips)


def expand(offsets: np.ndarray, buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every entry position of ``buckets`` and, for each, the index of its bucket in ``buckets``."""
    starts = offsets[buckets].astype(np.int64)
    lengths = offsets[buckets + 1].astype(np.int64) - starts
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if ends.size else 0
    owner = np.repeat(np.arange(buckets.size), lengths)
    positions = np.arange(total, dtype=np.int64) + (starts - (ends - lengths))[owner]
    return positions, owner


def candidates(tables: Tables, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows that may lie within ``radius`` (<= MAX_RADIUS) of a row of ``query`` (V, 4), and for each
    the query row that probed it.  A superset of the true answer; rows may repeat."""
    probes = tables.flips[: probe_count(tables.width, radius // CHUNKS)]
    buckets = (_buckets(chunk_keys(query, tables.width), tables.width)[:, :, None] ^ probes).ravel()
    positions, owner = expand(tables.offsets, buckets)
    per_row = CHUNKS * probes.size
    return tables.entries[positions], owner // per_row
