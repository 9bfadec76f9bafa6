"""Compiled loops (numba) behind :mod:`service.matchers.pdq_mih` and :class:`PdqIndex`.

A lookup is memory-latency bound: a few thousand bucket starts and candidate rows read at random.  One
compiled loop (probe -> bucket range -> candidate row -> four popcounts) does it without the numpy
passes (expand, repeat, cumsum, gather) that cost more than the reads themselves.

Compiled code is cached on disk (see :mod:`service`).  :func:`warm_up` compiles (or loads)
every kernel for every array type the index uses (:func:`service.matchers.pdq_mih.warm_up`, called
when an index is created), so the first live upload never waits for the compiler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

CHUNKS = 11
# Bucket starts: ``start(b) = base[b >> BLOCK_BITS] + local[b]`` with a uint32 base per block of 64
# buckets and a uint8 offset per bucket (uint16 or uint32 when a crowded block needs it): 1.06 bytes
# per bucket, so 23-bit chunks fit at 10 million hashes.  (A single array of 32-byte records holding
# both was measured about 2x slower per probe here: two arrays, the small base one cached, are faster.)
BLOCK_BITS = 6


@intrinsic
def _popcount(typingctx: Any, x: Any) -> Any:
    """One ``popcnt`` instruction (LLVM ``ctpop``) on a uint64."""
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def _prefetch(typingctx: Any, arr: Any, row: Any) -> Any:
    """Start loading ``arr[row]`` (its first element) into the cache, without waiting (LLVM prefetch):
    the next pass reads it."""
    sig = types.void(arr, row)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        index = [idx] + [zero] * (aryty.ndim - 1)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, index, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")  # opaque pointers: llvmlite 0.45+
        read, keep, data = (ir.Constant(ir.IntType(32), v) for v in (0, 3, 1))
        builder.call(fn, [builder.bitcast(ptr, i8p), read, keep, data])
        return context.get_dummy_value()

    return sig, codegen


popcount: Callable[[np.uint64], np.uint64] = _popcount  # type: ignore[assignment]  # typed for mypy
prefetch: Callable[[np.ndarray, int], None] = _prefetch  # type: ignore[assignment]


@njit(cache=True, nogil=True, inline="always")
def _key(h0: np.uint64, h1: np.uint64, h2: np.uint64, h3: np.uint64, chunk: int, width: int) -> int:
    """Bits ``[chunk*width, (chunk+1)*width)`` of the hash read as one little-endian 256-bit number."""
    lo = chunk * width
    word = lo >> 6
    bit = np.uint64(lo & 63)
    words = (h0, h1, h2, h3)
    key = words[word] >> bit
    if lo & 63 and (lo & 63) + width > 64:
        key |= words[word + 1] << (np.uint64(64) - bit)
    return int(np.int64(key & np.uint64((1 << width) - 1)))  # int64: numba types uint64 ^ int64 as float


@njit(cache=True, nogil=True, inline="always")
def _dist(hashes: np.ndarray, row: int, q0: np.uint64, q1: np.uint64, q2: np.uint64, q3: np.uint64) -> int:
    return int(np.int64(popcount(hashes[row, 0] ^ q0) + popcount(hashes[row, 1] ^ q1)
                        + popcount(hashes[row, 2] ^ q2) + popcount(hashes[row, 3] ^ q3)))


@njit(cache=True, nogil=True, inline="always")
def _start(base: np.ndarray, local: np.ndarray, b: int) -> int:
    """Start of bucket ``b`` in ``entries``."""
    return int(np.int64(base[b >> BLOCK_BITS]) + np.int64(local[b]))


@njit(cache=True, nogil=True, inline="always")
def _put(base: np.ndarray, local: np.ndarray, b: int, pos: int) -> bool:
    """Record ``pos`` as bucket ``b``'s start (buckets in order); False if it does not fit ``local``."""
    if b & ((1 << BLOCK_BITS) - 1) == 0:
        base[b >> BLOCK_BITS] = pos
    off = pos - np.int64(base[b >> BLOCK_BITS])
    if off > np.iinfo(local.dtype).max:
        return False
    local[b] = off
    return True


@njit(cache=True, nogil=True)
def probe(entries: np.ndarray, base: np.ndarray, local: np.ndarray, width: int, hashes: np.ndarray,
          alive: np.ndarray, query: np.ndarray, radii: np.ndarray, radius: int, out_rows: np.ndarray,
          out_dist: np.ndarray, out_q: np.ndarray) -> int:
    """Live rows within ``radius`` of a query row found through the tables, written to the ``out_*``
    arrays (row, distance, query row; a row may repeat).  Table ``t`` is probed at every key within
    ``radii[t]`` bits (-1: not probed).  Returns the number found; past the arrays' size only counts.

    Three passes per query row, each a loop of independent reads (so the CPU has many cache misses in
    flight instead of one chain of dependent ones): every probed bucket's start and end, then every
    candidate row, then every candidate's distance.  Each pass prefetches what the next one reads
    (the bucket's first row number, the candidate's hash): measured 1.3-1.4x faster at 10 million."""
    n = 0
    cap = out_rows.shape[0]
    nprobes = 0
    for t in range(CHUNKS):
        if radii[t] >= 0:
            nprobes += 1
        if radii[t] >= 1:
            nprobes += width
        if radii[t] >= 2:
            nprobes += width * (width - 1) // 2
    starts = np.empty(nprobes, np.int64)
    ends = np.empty(nprobes, np.int64)
    rows = np.empty(0, np.uint32)
    for v in range(query.shape[0]):
        q0, q1, q2, q3 = query[v, 0], query[v, 1], query[v, 2], query[v, 3]
        p = 0
        for t in range(CHUNKS):
            tr = radii[t]
            if tr < 0:
                continue
            key = (t << width) | _key(q0, q1, q2, q3, t, width)
            starts[p] = _start(base, local, key)
            ends[p] = _start(base, local, key + 1)
            prefetch(entries, starts[p])
            p += 1
            if tr < 1:
                continue
            for i in range(width):
                k1 = key ^ (1 << i)
                starts[p] = _start(base, local, k1)
                ends[p] = _start(base, local, k1 + 1)
                prefetch(entries, starts[p])
                p += 1
                if tr < 2:
                    continue
                for j in range(i + 1, width):
                    k2 = k1 ^ (1 << j)
                    starts[p] = _start(base, local, k2)
                    ends[p] = _start(base, local, k2 + 1)
                    prefetch(entries, starts[p])
                    p += 1
        total = 0
        for p in range(nprobes):
            total += ends[p] - starts[p]
        if rows.shape[0] < total:
            rows = np.empty(total, np.uint32)
        c = 0
        for p in range(nprobes):
            for e in range(starts[p], ends[p]):
                r = entries[e]
                rows[c] = r
                prefetch(hashes, r)
                c += 1
        for c in range(total):
            row = rows[c]
            d = _dist(hashes, row, q0, q1, q2, q3)
            if d <= radius and alive[row]:
                if n < cap:
                    out_rows[n] = row
                    out_dist[n] = d
                    out_q[n] = v
                n += 1
    return n


@njit(cache=True, nogil=True)
def scan(rows: np.ndarray, hashes: np.ndarray, alive: np.ndarray, query: np.ndarray, radius: int,
         out_rows: np.ndarray, out_dist: np.ndarray, out_q: np.ndarray) -> int:
    """:func:`probe`'s answer for every live row of ``rows`` compared in full (a scan)."""
    n = 0
    cap = out_rows.shape[0]
    for v in range(query.shape[0]):
        q0, q1, q2, q3 = query[v, 0], query[v, 1], query[v, 2], query[v, 3]
        for i in range(rows.shape[0]):
            row = rows[i]
            d = _dist(hashes, row, q0, q1, q2, q3)
            if d <= radius and alive[row]:
                if n < cap:
                    out_rows[n] = row
                    out_dist[n] = d
                    out_q[n] = v
                n += 1
    return n


@njit(cache=True, nogil=True)
def keys_of(hashes: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """(len(rows), CHUNKS) int64 global buckets ``t << width | key`` of ``hashes[rows]``."""
    out = np.empty((rows.shape[0], CHUNKS), np.int64)
    for i in range(rows.shape[0]):
        r = rows[i]
        for t in range(CHUNKS):
            out[i, t] = (t << width) | _key(hashes[r, 0], hashes[r, 1], hashes[r, 2], hashes[r, 3], t, width)
    return out


@njit(cache=True, nogil=True)
def build(hashes: np.ndarray, rows: np.ndarray, width: int, entries: np.ndarray, base: np.ndarray,
          local: np.ndarray) -> bool:
    """Entries of the tables over ``hashes[rows]`` (rows in the given order inside a bucket: a counting
    sort per table), written into ``entries`` (``len(rows) * CHUNKS``), with the bucket starts.  False if
    a block's offsets do not fit ``local``'s type: retry wider."""
    n = rows.shape[0]
    nb = 1 << width
    count = np.empty(nb + 1, np.int64)
    keys = np.empty(n, np.int64)
    for t in range(CHUNKS):
        count[:] = 0
        for i in range(n):
            r = rows[i]
            k = _key(hashes[r, 0], hashes[r, 1], hashes[r, 2], hashes[r, 3], t, width)
            keys[i] = k
            count[k + 1] += 1
        pos = t * n
        for k in range(nb):  # count[k] becomes bucket k's next free position
            c = count[k + 1]
            if not _put(base, local, (t << width) | k, pos):
                return False
            count[k] = pos
            pos += c
        for i in range(n):
            k = keys[i]
            entries[count[k]] = rows[i]
            count[k] += 1
    return _put(base, local, CHUNKS << width, n * CHUNKS)


@njit(cache=True, nogil=True)
def search(ids: np.ndarray, order: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.searchsorted(ids[order], keys)`` without building ``ids[order]``: a binary search per key
    through ``order`` (rows sorted by id), ~24 reads per key at 10 million rows instead of a gather
    of every id."""
    out = np.empty(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        lo, hi = 0, order.shape[0]
        key = keys[i]
        while lo < hi:
            mid = (lo + hi) >> 1
            if ids[order[mid]] < key:
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo
    return out


@njit(cache=True, nogil=True)
def positions(entries: np.ndarray, base: np.ndarray, local: np.ndarray, buckets: np.ndarray,
              rows: np.ndarray) -> np.ndarray:
    """Position in ``entries`` of each ``rows[i]`` inside bucket ``buckets[i]`` (-1 if absent)."""
    out = np.full(rows.shape[0], -1, np.int64)
    for i in range(rows.shape[0]):
        b = buckets[i]
        for p in range(_start(base, local, b), _start(base, local, b + 1)):
            if entries[p] == rows[i]:
                out[i] = p
                break
    return out


@njit(cache=True, nogil=True)
def splice(entries: np.ndarray, drop: np.ndarray, at: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """``out`` = ``entries`` without positions ``drop`` (ascending), with ``values[i]`` inserted before
    old position ``at[i]`` (ascending; before a dropped entry at the same position)."""
    src = 0
    dst = 0
    i = 0
    d = 0
    while i < at.shape[0] or d < drop.shape[0]:
        if i < at.shape[0] and (d >= drop.shape[0] or at[i] <= drop[d]):
            x = at[i]
            out[dst:dst + x - src] = entries[src:x]
            dst += x - src
            src = x
            out[dst] = values[i]
            dst += 1
            i += 1
        else:
            x = drop[d]
            out[dst:dst + x - src] = entries[src:x]
            dst += x - src
            src = x + 1
            d += 1
    out[dst:] = entries[src:]


@njit(cache=True, nogil=True)
def restart(base: np.ndarray, local: np.ndarray, buckets: np.ndarray, change: np.ndarray, new_base: np.ndarray,
            new_local: np.ndarray) -> bool:
    """Bucket starts after ``change[i]`` entries (+1 or -1) in each ``buckets[i]`` (ascending).
    ``new_local`` is a copy of ``local`` (maybe wider): only the blocks with a change are rewritten;
    every later block's base moves.  False if an offset does not fit ``new_local``'s type."""
    limit = np.iinfo(new_local.dtype).max
    per = 1 << BLOCK_BITS
    shift = 0
    c = 0
    done = 0  # blocks before this one have their new base
    while c < buckets.shape[0]:
        block = buckets[c] >> BLOCK_BITS
        for x in range(done, block + 1):
            new_base[x] = np.int64(base[x]) + shift
        inner = 0
        for b in range(block * per, block * per + per):
            v = np.int64(local[b]) + inner
            if v > limit:
                return False
            new_local[b] = v
            while c < buckets.shape[0] and buckets[c] == b:
                inner += change[c]
                c += 1
        shift += inner
        done = block + 1
    for x in range(done, base.shape[0]):
        new_base[x] = np.int64(base[x]) + shift
    return True
