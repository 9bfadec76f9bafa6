"""A compact set of fixed-size digests (SHA-1, MD5) keyed by integer ids: the exact-match twin of
:class:`service.matchers.pdq_index.PdqIndex`.

Contract (``tests/test_exact_index.py``):

- :meth:`DigestIndex.add` inserts digests under ids; adding an id that is present replaces its digest.
  Several ids may hold the same digest.
- :meth:`DigestIndex.remove` deletes ids; unknown ids are ignored.
- :meth:`DigestIndex.lookup` returns ``(id, row)`` for every id whose digest equals a query row's,
  sorted by (row, id); :meth:`DigestIndex.contains` says per row whether any id holds it.
- One writer may run while readers query: a reader sees the set before or after a whole add/remove.

Layout: digests sorted by value, as a big-endian uint64 prefix (searched with ``np.searchsorted``) and
the remaining bytes beside it, with the ids in the same order: ``size + 8`` bytes per digest (28 for
SHA-1, 24 for MD5).  The writer also keeps the ids sorted with their prefixes (16 bytes per digest) to
find what a removal drops.  Each write publishes new arrays (one vectorised merge), never a rebuild.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_PREFIX = np.dtype(">u8")


@dataclass(frozen=True, slots=True)
class _State:
    prefix: np.ndarray  # (N,) uint64, sorted
    rest: np.ndarray  # (N, size - 8) uint8, same order
    ids: np.ndarray  # (N,) int64, same order (any order among equal prefixes)


class DigestIndex:
    """A set of ``size``-byte digests under int64 ids (see the module docstring)."""

    def __init__(self, size: int) -> None:
        if size < 8:
            raise ValueError(f"digest size {size} < 8")
        self.size = size
        self._lock = threading.Lock()
        self._state = _State(np.empty(0, np.uint64), np.empty((0, size - 8), np.uint8), np.empty(0, np.int64))
        self._by_id = np.empty(0, np.int64)  # writer only: ids sorted ...
        self._by_id_prefix = np.empty(0, np.uint64)  # ... and their digests' prefixes

    def __len__(self) -> int:
        return int(self._state.ids.size)

    def nbytes(self) -> int:
        s = self._state
        return int(s.prefix.nbytes + s.rest.nbytes + s.ids.nbytes + self._by_id.nbytes + self._by_id_prefix.nbytes)

    def _digests(self, digests: np.ndarray | Iterable[bytes]) -> np.ndarray:
        """(N, size) uint8 from an array or from bytes objects; a wrong size is a ValueError."""
        if isinstance(digests, np.ndarray) and digests.dtype == np.uint8:
            arr = digests.reshape(-1, self.size) if digests.size else np.empty((0, self.size), np.uint8)
        else:
            items = list(digests)
            bad = [d for d in items if len(d) != self.size]
            if bad:
                raise ValueError(f"{len(bad)} digests are not {self.size} bytes (first: {bytes(bad[0])!r})")
            arr = np.frombuffer(b"".join(items), np.uint8).reshape(-1, self.size)
        if arr.shape[1] != self.size:
            raise ValueError(f"digests of {arr.shape[1]} bytes, expected {self.size}")
        return np.ascontiguousarray(arr)

    @staticmethod
    def _split(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prefix = np.ascontiguousarray(digests[:, :8]).view(_PREFIX).reshape(-1).astype(np.uint64)
        return prefix, np.ascontiguousarray(digests[:, 8:])

    # -- writes -----------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, digests: np.ndarray | Iterable[bytes]) -> None:
        """Insert ``digests`` ((N, size) uint8 or N bytes objects) under ``ids``, replacing present ids."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        arr = self._digests(digests)
        if ids.size != arr.shape[0]:
            raise ValueError(f"{ids.size} ids for {arr.shape[0]} digests")
        if ids.size == 0:
            return
        uniq, last = np.unique(ids[::-1], return_index=True)  # the last of a repeated id wins
        if uniq.size != ids.size:
            keep = np.sort(ids.size - 1 - last)
            ids, arr = ids[keep], arr[keep]
        with self._lock:
            self._drop(ids)
            self._insert(ids, arr)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size:
            with self._lock:
                self._drop(ids)

    def _drop(self, ids: np.ndarray) -> None:
        at = np.searchsorted(self._by_id, ids)
        at = at[at < self._by_id.size]
        at = np.unique(at[np.isin(self._by_id[at], ids)])
        if at.size == 0:
            return
        gone_ids, gone_prefix = self._by_id[at], self._by_id_prefix[at]
        self._by_id = np.delete(self._by_id, at)
        self._by_id_prefix = np.delete(self._by_id_prefix, at)
        s = self._state
        lo = np.searchsorted(s.prefix, gone_prefix, "left")
        hi = np.searchsorted(s.prefix, gone_prefix, "right")
        span = hi - lo  # usually 1: prefixes of distinct digests rarely collide
        pos = np.repeat(lo, span) + np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
        pos = pos[np.isin(s.ids[pos], gone_ids)]
        self._state = _State(np.delete(s.prefix, pos), np.delete(s.rest, pos, axis=0), np.delete(s.ids, pos))

    def _insert(self, ids: np.ndarray, digests: np.ndarray) -> None:
        prefix, rest = self._split(digests)
        order = np.argsort(prefix, kind="stable")
        prefix, rest, ids = prefix[order], rest[order], ids[order]
        s = self._state
        at = np.searchsorted(s.prefix, prefix, "left")  # ties on a prefix: order inside it is free
        self._state = _State(np.insert(s.prefix, at, prefix), np.insert(s.rest, at, rest, axis=0),
                             np.insert(s.ids, at, ids))
        by_id = np.argsort(ids, kind="stable")
        where = np.searchsorted(self._by_id, ids[by_id])
        self._by_id = np.insert(self._by_id, where, ids[by_id])
        self._by_id_prefix = np.insert(self._by_id_prefix, where, prefix[by_id])

    # -- reads ------------------------------------------------------------------------------------------

    def lookup(self, digests: np.ndarray | Iterable[bytes]) -> list[tuple[int, int]]:
        """``[(id, row), ...]`` for every id holding the digest of a query row, sorted by (row, id)."""
        s = self._state
        arr = self._digests(digests)
        if arr.shape[0] == 0 or s.ids.size == 0:
            return []
        prefix, rest = self._split(arr)
        lo = np.searchsorted(s.prefix, prefix, "left")
        hi = np.searchsorted(s.prefix, prefix, "right")
        span = hi - lo
        if not span.any():
            return []
        row = np.repeat(np.arange(arr.shape[0]), span)
        pos = np.repeat(lo, span) + np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
        same = (s.rest[pos] == rest[row]).all(axis=1)
        found = sorted(zip(s.ids[pos[same]].tolist(), row[same].tolist(), strict=True), key=lambda t: (t[1], t[0]))
        return found

    def contains(self, digests: np.ndarray | Iterable[bytes]) -> np.ndarray:
        """(N,) bool: whether some id holds each query digest."""
        arr = self._digests(digests)
        out = np.zeros(arr.shape[0], bool)
        for _, row in self.lookup(arr):
            out[row] = True
        return out

    # -- snapshots --------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a snapshot (one uncompressed ``.npz``) atomically: a temporary file, fsync, rename."""
        with self._lock:  # the writer's id arrays must belong to the same state
            s, by_id, by_id_prefix = self._state, self._by_id, self._by_id_prefix
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, size=np.array([self.size]), prefix=s.prefix, rest=s.rest, ids=s.ids,
                         by_id=by_id, by_id_prefix=by_id_prefix)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DigestIndex:
        with np.load(Path(path)) as z:
            index = cls(int(z["size"][0]))
            index._state = _State(z["prefix"], z["rest"], z["ids"])
            index._by_id, index._by_id_prefix = z["by_id"], z["by_id_prefix"]
        return index


def sha1_index() -> DigestIndex:
    return DigestIndex(20)


def md5_index() -> DigestIndex:
    return DigestIndex(16)
