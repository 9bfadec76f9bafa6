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

This implementation is the reference: a vectorised brute-force scan.  Faster ones keep the interface.
"""

from __future__ import annotations

import threading

import numpy as np

_EMPTY_IDS = np.empty(0, dtype=np.int64)


class PdqIndex:
    """Brute-force reference implementation (see the module docstring for the contract)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # writers only; readers take the current arrays in one read
        self._state: tuple[np.ndarray, np.ndarray] = (_EMPTY_IDS, np.empty((4, 0), dtype=np.uint64))

    def __len__(self) -> int:
        return int(self._state[0].size)

    def nbytes(self) -> int:
        """Bytes held by the index's arrays (hashes, ids and any tables)."""
        ids, words = self._state
        return int(ids.nbytes + words.nbytes)

    def add(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        """Insert ``hashes`` ((N, 4) uint64) under ``ids`` ((N,) int64), replacing present ids."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1, 4)
        if ids.size != hashes.shape[0]:
            raise ValueError(f"{ids.size} ids for {hashes.shape[0]} hashes")
        if ids.size == 0:
            return
        # The last occurrence of a repeated id wins, as if added one by one.
        _, last = np.unique(ids[::-1], return_index=True)
        keep = np.sort(ids.size - 1 - last)
        ids, hashes = ids[keep], hashes[keep]
        with self._lock:
            old_ids, old_words = self._state
            stay = ~np.isin(old_ids, ids)
            new_ids = np.concatenate([old_ids[stay], ids])
            new_words = np.concatenate([old_words[:, stay], hashes.T], axis=1)
            self._state = (new_ids, np.ascontiguousarray(new_words))

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return
        with self._lock:
            old_ids, old_words = self._state
            stay = ~np.isin(old_ids, ids)
            if stay.all():
                return
            self._state = (old_ids[stay], np.ascontiguousarray(old_words[:, stay]))

    def query(self, query: np.ndarray, radius: int) -> list[tuple[int, int, int]]:
        """``[(id, distance, row), ...]`` for every id within ``radius`` of a row of ``query`` ((V, 4))."""
        from service.matchers.banks import pdq_scan

        ids, words = self._state  # one read: a consistent pair
        query = np.asarray(query, dtype=np.uint64).reshape(-1, 4)
        found = pdq_scan(words, query, radius)
        out = [(int(ids[i]), d, v) for i, (d, v) in found.items()]
        out.sort(key=lambda t: (t[1], t[0]))
        return out
