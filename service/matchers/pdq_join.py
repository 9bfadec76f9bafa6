"""Every pair within a radius between many stored PDQ hashes and a few new ones, without indexing the many.

Retroactive matching compares the rotated and mirrored variants of every stored file (seven per file: 70 million
at 10 million files) with the hashes a bank gained (thousands).  An index over 70 million hashes would take
~7 GB; instead the *new* hashes are indexed and the stored ones are streamed past them once.

Pigeonhole: split the 256 bits into 8 chunks of 32; two hashes within ``radius`` differ in at most
``radius // 8`` bits in at least one chunk (at most 3 at radius 31).  For each chunk, every value within that
many bits of a new hash's chunk is listed (5,489 per hash at radius 31) and sorted, with a bitmap of them
(2^30 bits, on the value's top 30 bits).  Each stored hash's chunk is then looked up in the bitmap (one gather,
vectorised over a block of stored hashes); the few that pass are found in the sorted list and their full
distance checked.  The answer is exactly brute force's (``tests/test_pdq_join.py``).  A radius above 31 would
list too many values: it is answered by a plain scan (slow; ``pdq_threshold`` above 31 is not advised).

Measured figures: ``docs/retroactive-matching.md``.  ``tick`` is called between blocks of work (the caller's
duty cycle).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import lru_cache

import numpy as np

CHUNKS = 8  # of 32 bits
KEY_BUDGET = 1 << 25  # listed values per pass (8 bytes each): new hashes are taken in pieces of this many keys
BLOCK = 1 << 22  # stored hashes per gather
MAX_BITS = 3  # listed values differ in at most this many bits of a chunk (radius <= 31); above, a scan
_SCAN_CELLS = 1 << 22  # (stored, new) pairs per block of a scan
_BITMAP_SHIFT = 2  # the bitmap is on a value's top 30 bits
_LOW32 = np.uint64(0xFFFFFFFF)

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # stored row, new row, distance


@lru_cache(maxsize=8)
def masks(bits: int) -> np.ndarray:
    """Every 32-bit mask with at most ``bits`` bits set (0 first)."""
    out = [0]
    for k in range(1, bits + 1):
        out += [sum(1 << b for b in combo) for combo in itertools.combinations(range(32), k)]
    return np.array(out, dtype=np.uint32)


def join(stored: np.ndarray, new: np.ndarray, radius: int, tick: Callable[[], None] = lambda: None) -> Pairs:
    """(stored row, new row, distance) of every pair of ``stored`` ((M, 4) uint64) and ``new`` ((N, 4)) rows
    within ``radius``, each pair once, sorted."""
    stored = np.ascontiguousarray(stored, dtype=np.uint64).reshape(-1, 4)
    new = np.ascontiguousarray(new, dtype=np.uint64).reshape(-1, 4)
    empty: Pairs = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    if radius < 0 or stored.shape[0] == 0 or new.shape[0] == 0:
        return empty
    if radius // CHUNKS > MAX_BITS:
        parts = [_scan(stored, new, radius, tick)]
    else:
        m = masks(radius // CHUNKS)
        piece = max(1, KEY_BUDGET // m.size)
        parts = []
        for start in range(0, new.shape[0], piece):
            rows, cols, dist = _join_piece(stored, new[start:start + piece], radius, m, tick)
            parts.append((rows, cols + start, dist))
    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    dist = np.concatenate([p[2] for p in parts])
    if rows.size == 0:
        return empty
    # A pair is found through every chunk within range: keep it once.
    key = np.unique(rows.astype(np.int64) * new.shape[0] + cols, return_index=True)[1]
    return rows[key].astype(np.int64), cols[key].astype(np.int64), dist[key].astype(np.int64)


def _join_piece(stored: np.ndarray, new: np.ndarray, radius: int, m: np.ndarray,
                tick: Callable[[], None]) -> Pairs:
    s32 = stored.view(np.uint32).reshape(-1, 2 * 4)
    n32 = new.view(np.uint32).reshape(-1, 2 * 4)
    found: list[Pairs] = []
    for c in range(CHUNKS):
        # The listed values of chunk c, with the new row each came from: (value << 32 | row), sorted.
        listed = (n32[:, c, None] ^ m[None, :]).astype(np.uint64) << np.uint64(32)
        listed |= np.arange(new.shape[0], dtype=np.uint64)[:, None]
        listed = listed.ravel()
        listed.sort()
        tick()
        bitmap = _bitmap((listed >> np.uint64(32 + _BITMAP_SHIFT)).astype(np.uint32))
        tick()
        for b0 in range(0, stored.shape[0], BLOCK):
            values = s32[b0:b0 + BLOCK, c]
            top = values >> _BITMAP_SHIFT
            candidates = np.flatnonzero((bitmap[top >> 3] >> (top & 7).astype(np.uint8)) & 1)
            if candidates.size:
                found.append(_verify(stored, new, radius, listed, candidates + b0, values[candidates]))
            tick()
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return (np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]),
            np.concatenate([f[2] for f in found]))


def _scan(stored: np.ndarray, new: np.ndarray, radius: int, tick: Callable[[], None]) -> Pairs:
    """Every pair's distance, block by block: radii above 31 (allowed, never advised) are not listed."""
    step = max(1, _SCAN_CELLS // new.shape[0])
    found: list[Pairs] = []
    for b0 in range(0, stored.shape[0], step):
        dist = np.bitwise_count(stored[b0:b0 + step, None, :] ^ new[None, :, :]).sum(axis=2, dtype=np.int64)
        rows, cols = np.nonzero(dist <= radius)
        found.append((rows + b0, cols, dist[rows, cols]))
        tick()
    return (np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]),
            np.concatenate([f[2] for f in found]))


def _bitmap(top: np.ndarray) -> np.ndarray:
    """A 2^30-bit map (bytes) with the bits of ``top`` (sorted 30-bit values) set."""
    bitmap = np.zeros(1 << (32 - _BITMAP_SHIFT - 3), dtype=np.uint8)
    byte = top >> 3
    bit = np.left_shift(np.uint8(1), (top & 7).astype(np.uint8))
    starts = np.flatnonzero(np.r_[True, byte[1:] != byte[:-1]])
    bitmap[byte[starts]] = np.bitwise_or.reduceat(bit, starts)
    return bitmap


def _verify(stored: np.ndarray, new: np.ndarray, radius: int, listed: np.ndarray, rows: np.ndarray,
            values: np.ndarray) -> Pairs:
    """The candidates' pairs: stored ``rows`` whose chunk ``values`` are listed, with the listing new rows, kept
    when the whole hashes are within ``radius``."""
    v = values.astype(np.uint64) << np.uint64(32)
    lo = np.searchsorted(listed, v, "left")
    hi = np.searchsorted(listed, v | _LOW32, "right")
    count = hi - lo
    total = int(count.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    srow = np.repeat(rows, count)
    pos = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(total)
    nrow = (listed[pos] & _LOW32).astype(np.int64)
    dist = np.bitwise_count(stored[srow] ^ new[nrow]).sum(axis=1, dtype=np.int64)
    ok = dist <= radius
    return srow[ok], nrow[ok], dist[ok]
