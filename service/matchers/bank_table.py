"""One bank's entries kept compactly and changed incrementally.

A :class:`BankTable` holds every entry of one bank without a Python object per entry:

- per kind (SHA-1, MD5, PDQ) a :class:`Rows` of parallel numpy arrays: the entry's *slot* (an int64 id
  that is never reused), a 64-bit entry key (BLAKE2b of hash, category, source and id), the hash bytes,
  category and source as small-int codes into the bank's string table, and the entry id as an offset and
  length into one bytes blob;
- the search indexes, keyed by slot: a :class:`~service.matchers.pdq_index.PdqIndex` for PDQ and a
  :class:`~service.matchers.exact_index.DigestIndex` per exact kind.

A change (:meth:`BankTable.apply`) computes what is really added and removed from the entry keys (vectorised),
then, in this order: adds the new slots to the indexes, publishes the new rows in one assignment, waits for
lookups still reading the previous rows, and only then removes the dropped slots from the indexes.  A lookup
reads the rows once and keeps only index hits whose slot is in them, so it sees the bank exactly before or
exactly after a change, never half of one.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from service.matchers.exact_index import md5_index, sha1_index
from service.matchers.pdq_index import PdqIndex

KINDS = ("sha1", "md5", "pdq")
HASH_BYTES = {"sha1": 20, "md5": 16, "pdq": 32}
_KIND_BY_HEX = {2 * n: kind for kind, n in HASH_BYTES.items()}


@dataclass(frozen=True, slots=True)
class BankEntry:
    """One entry of a bank, as parsed or fetched (never kept per hash: see :class:`BankTable`)."""

    hash: str  # lower-case hex
    category: str
    source: str
    id: str

    @property
    def kind(self) -> str:
        """``sha1``, ``md5`` or ``pdq``, from the hash's length."""
        return _KIND_BY_HEX[len(self.hash)]


def entry_key(hash_hex: str, category: str, source: str, entry_id: str) -> int:
    """A stable 64-bit key of one entry (the same in every process: versions are stored)."""
    data = f"{hash_hex.lower()}\0{category}\0{source}\0{entry_id}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def entry_keys(entries: Sequence[BankEntry]) -> np.ndarray:
    return np.fromiter((entry_key(e.hash, e.category, e.source, e.id) for e in entries),
                       dtype=np.uint64, count=len(entries))


def xor_all(keys: np.ndarray) -> int:
    return int(np.bitwise_xor.reduce(keys)) if keys.size else 0


@dataclass(frozen=True, slots=True)
class Rows:
    """One kind's entries, ordered by slot (slots only grow, so appending keeps the order)."""

    slots: np.ndarray  # (N,) int64, ascending
    hashes: np.ndarray  # (N, HASH_BYTES[kind]) uint8
    category: np.ndarray  # (N,) uint32 codes into the bank's strings
    source: np.ndarray  # (N,) uint32 codes
    id_start: np.ndarray  # (N,) int64 offsets into the blob
    id_len: np.ndarray  # (N,) uint32
    blob: bytes  # UTF-8 entry ids, back to back (dropped rows leave garbage until compacted)
    sorted_keys: np.ndarray  # (N,) uint64: keys ascending ...
    sorted_slots: np.ndarray  # (N,) int64 ... with their slots
    id_hashes: np.ndarray  # (N,) int64: hash() of the entry ids ascending (in memory only) ...
    id_slots: np.ndarray  # (N,) int64 ... with their slots

    @classmethod
    def empty(cls, kind: str) -> Rows:
        i64, u64, u32 = np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.uint32)
        return cls(i64, np.empty((0, HASH_BYTES[kind]), np.uint8), u32, u32, i64, u32, b"", u64, i64, i64, i64)

    def __len__(self) -> int:
        return int(self.slots.size)

    def nbytes(self) -> int:
        arrays = (self.slots, self.hashes, self.category, self.source, self.id_start, self.id_len,
                  self.sorted_keys, self.sorted_slots, self.id_hashes, self.id_slots)
        return int(sum(a.nbytes for a in arrays)) + len(self.blob)

    def rows_of(self, slots: np.ndarray) -> np.ndarray:
        """Positions of ``slots``; -1 for a slot not in these rows."""
        pos = np.searchsorted(self.slots, slots)
        pos = np.minimum(pos, max(len(self) - 1, 0))
        found = (self.slots[pos] == slots) if len(self) else np.zeros(len(slots), bool)
        return np.where(found, pos, -1)

    def present(self, keys: np.ndarray) -> np.ndarray:
        """Per key: the slot holding it, or -1."""
        if not len(self):
            return np.full(keys.size, -1, np.int64)
        pos = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self) - 1)
        return np.where(self.sorted_keys[pos] == keys, self.sorted_slots[pos], -1)

    def entry_id(self, row: int) -> str:
        start = int(self.id_start[row])
        return self.blob[start:start + int(self.id_len[row])].decode()

    def changed(self, drop_slots: np.ndarray, add: Rows) -> Rows:
        """These rows without ``drop_slots``, plus ``add`` (whose slots are all larger, its blob separate)."""
        keep = ~np.isin(self.slots, drop_slots) if drop_slots.size else np.ones(len(self), bool)
        blob, id_start = self.blob, self.id_start[keep]
        live = int(self.id_len[keep].sum(dtype=np.int64))
        if len(blob) > 2 * live + (1 << 20):  # compact: mostly garbage
            blob, id_start = _gather(blob, id_start, self.id_len[keep])
        sorted_keys, sorted_slots = _merge(self.sorted_keys, self.sorted_slots, drop_slots,
                                           add.sorted_keys, add.sorted_slots)
        id_hashes, id_slots = _merge(self.id_hashes, self.id_slots, drop_slots, add.id_hashes, add.id_slots)
        return Rows(
            slots=np.concatenate([self.slots[keep], add.slots]),
            hashes=np.concatenate([self.hashes[keep], add.hashes]),
            category=np.concatenate([self.category[keep], add.category]),
            source=np.concatenate([self.source[keep], add.source]),
            id_start=np.concatenate([id_start, add.id_start + len(blob)]),
            id_len=np.concatenate([self.id_len[keep], add.id_len]),
            blob=blob + add.blob,
            sorted_keys=sorted_keys,
            sorted_slots=sorted_slots,
            id_hashes=id_hashes,
            id_slots=id_slots,
        )

    def with_ids(self, ids: set[str]) -> np.ndarray:
        """Positions of the rows whose entry id is in ``ids``, ascending."""
        if not ids or not len(self):
            return np.empty(0, np.int64)
        q = np.sort(np.fromiter((hash(i) for i in ids), np.int64, count=len(ids)))
        lo, hi = np.searchsorted(self.id_hashes, q, "left"), np.searchsorted(self.id_hashes, q, "right")
        span = hi - lo
        at = np.repeat(lo, span) + np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
        pos = np.sort(self.rows_of(self.id_slots[at]))
        return np.array([p for p in pos.tolist() if self.entry_id(p) in ids], np.int64)  # hash() may collide


def _merge(values: np.ndarray, slots: np.ndarray, drop_slots: np.ndarray, add_values: np.ndarray,
           add_slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sorted (values, slots) pair without ``drop_slots`` and with the sorted ``add_*`` pair merged in."""
    if drop_slots.size:
        keep = ~np.isin(slots, drop_slots)
        values, slots = values[keep], slots[keep]
    if add_values.size:
        at = np.searchsorted(values, add_values)
        values, slots = np.insert(values, at, add_values), np.insert(slots, at, add_slots)
    return values, slots


def _gather(blob: bytes, start: np.ndarray, length: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The live parts of ``blob`` back to back, and their new offsets."""
    length64 = length.astype(np.int64)
    new_start = np.concatenate([[0], np.cumsum(length64)[:-1]]).astype(np.int64) if length.size else start
    total = int(length64.sum())
    src = np.repeat(start - new_start, length64) + np.arange(total, dtype=np.int64)
    return np.frombuffer(blob, np.uint8)[src].tobytes(), new_start


class _Gate:
    """Counts lookups reading one published state; the writer waits for them before shrinking the indexes."""

    def __init__(self) -> None:
        self.readers = 0
        self.cond = threading.Condition(threading.Lock())


@dataclass(frozen=True, slots=True)
class TableState:
    rows: dict[str, Rows]
    xor: int  # XOR of every entry key: with the count, identifies the content
    gate: _Gate

    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())


@dataclass(frozen=True)
class Change:
    """What one :meth:`BankTable.apply` really changed (entries rebuilt for listeners)."""

    added: list[BankEntry]
    removed: list[BankEntry]


class BankTable:
    """One bank's entries (see the module docstring); one writer at a time (the caller serialises)."""

    def __init__(self) -> None:
        self.strings: list[str] = [""]  # append-only: published rows only hold codes already here
        self._codes: dict[str, int] = {"": 0}
        self._next_slot = 0
        self.pdq = PdqIndex()
        self.exact = {"sha1": sha1_index(), "md5": md5_index()}
        self._state = TableState({k: Rows.empty(k) for k in KINDS}, 0, _Gate())

    # ------------------------------------------------------------------ reading

    @contextmanager
    def reading(self) -> Iterator[TableState]:
        """The current state, held so that no index hit of it is removed while the lookup runs."""
        while True:
            state = self._state
            with state.gate.cond:
                state.gate.readers += 1
            if self._state is state:
                break
            self._leave(state)  # published meanwhile: the writer may not have waited for us
        try:
            yield state
        finally:
            self._leave(state)

    @staticmethod
    def _leave(state: TableState) -> None:
        with state.gate.cond:
            state.gate.readers -= 1
            if state.gate.readers == 0:
                state.gate.cond.notify_all()

    @property
    def state(self) -> TableState:
        return self._state

    def sizes(self) -> dict[str, int]:
        return {k: len(r) for k, r in self._state.rows.items()}

    def nbytes(self) -> int:
        """Bytes of the rows and indexes (the string table aside)."""
        rows = sum(r.nbytes() for r in self._state.rows.values())
        return rows + self.pdq.nbytes() + sum(s.nbytes() for s in self.exact.values())

    def entries(self, state: TableState | None = None) -> Iterator[BankEntry]:
        state = state or self._state
        for rows in state.rows.values():
            yield from self.rows_entries(rows, range(len(rows)))

    def rows_entries(self, rows: Rows, positions: Iterable[int]) -> Iterator[BankEntry]:
        """The entries at ``positions`` of ``rows``, rebuilt as objects."""
        for i in positions:
            yield BankEntry(hash=rows.hashes[i].tobytes().hex(), category=self.strings[int(rows.category[i])],
                            source=self.strings[int(rows.source[i])], id=rows.entry_id(i))

    def entries_with_ids(self, ids: Iterable[str]) -> list[BankEntry]:
        """The entries whose id is one of ``ids`` (an exchange's records: what an update replaces)."""
        wanted = set(ids)
        state = self._state
        return [e for rows in state.rows.values() for e in self.rows_entries(rows, rows.with_ids(wanted).tolist())]

    def category_sizes(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for kind, rows in self._state.rows.items():
            if len(rows):
                counts = np.bincount(rows.category)
                for code in np.flatnonzero(counts).tolist():
                    out[(kind, self.strings[code])] = int(counts[code])
        return out

    # ------------------------------------------------------------------ writing

    def replace(self, entries: Sequence[BankEntry]) -> Change:
        """Make the content exactly ``entries`` (applied as the difference from the current content)."""
        keys = entry_keys(entries)
        state = self._state
        drop: dict[str, np.ndarray] = {}
        for kind, rows in state.rows.items():
            drop[kind] = rows.sorted_slots[~np.isin(rows.sorted_keys, keys)]
        return self._apply(entries, keys, drop)

    def apply(self, added: Sequence[BankEntry], removed: Sequence[BankEntry]) -> Change:
        """Remove ``removed`` then add ``added`` (an entry in both stays; unknown removals are ignored)."""
        add_keys = entry_keys(added)
        rm_keys = entry_keys(removed)
        rm_keys = rm_keys[~np.isin(rm_keys, add_keys)]
        drop = {kind: (found := rows.present(rm_keys))[found >= 0] for kind, rows in self._state.rows.items()}
        return self._apply(added, add_keys, drop)

    def _apply(self, entries: Sequence[BankEntry], keys: np.ndarray, drop: dict[str, np.ndarray]) -> Change:
        old = self._state
        _, first = np.unique(keys, return_index=True)  # one row per distinct entry
        added: list[BankEntry] = []
        new_rows: dict[str, Rows] = {}
        add_by_kind: dict[str, Rows] = {}
        new = np.ones(first.size, bool)
        for rows in old.rows.values():  # keys of different kinds never collide: the hash is in the key
            new &= rows.present(keys[first]) < 0
        fresh = np.sort(first[new])
        by_kind: dict[str, list[int]] = {k: [] for k in KINDS}
        for i in fresh.tolist():
            by_kind[_KIND_BY_HEX[len(entries[i].hash)]].append(i)
        for kind in KINDS:
            picked = by_kind[kind]
            add_by_kind[kind] = self._new_rows(kind, [entries[i] for i in picked], keys[picked])
            added.extend(entries[i] for i in picked)
        removed: list[BankEntry] = []
        xor = old.xor
        for kind, rows in old.rows.items():
            pos = rows.rows_of(np.sort(drop[kind]))
            pos = pos[pos >= 0]
            removed.extend(self.rows_entries(rows, pos.tolist()))
            gone_keys = rows.sorted_keys[np.isin(rows.sorted_slots, rows.slots[pos])] if pos.size else pos[:0]
            xor ^= xor_all(gone_keys.astype(np.uint64)) ^ xor_all(add_by_kind[kind].sorted_keys)
            new_rows[kind] = rows.changed(rows.slots[pos], add_by_kind[kind])
            drop[kind] = rows.slots[pos]
        if not added and not removed:
            return Change([], [])
        # 1. grow the indexes (lookups of the old rows ignore the new slots)
        add_pdq = add_by_kind["pdq"]
        self.pdq.add(add_pdq.slots, add_pdq.hashes.view(np.uint64).reshape(-1, 4))
        for kind, index in self.exact.items():
            index.add(add_by_kind[kind].slots, add_by_kind[kind].hashes)
        # 2. publish, 3. wait for lookups of the old rows, 4. shrink the indexes
        self._state = TableState(new_rows, xor, _Gate())
        with old.gate.cond:
            old.gate.cond.wait_for(lambda: old.gate.readers == 0)
        self.pdq.remove(drop["pdq"])
        for kind, index in self.exact.items():
            index.remove(drop[kind])
        return Change(added, removed)

    def _new_rows(self, kind: str, entries: list[BankEntry], keys: np.ndarray) -> Rows:
        n = len(entries)
        if n == 0:
            return Rows.empty(kind)
        slots = np.arange(self._next_slot, self._next_slot + n, dtype=np.int64)
        self._next_slot += n
        hashes = np.frombuffer(bytes.fromhex("".join(e.hash for e in entries)), np.uint8).reshape(n, -1)
        ids = [e.id.encode() for e in entries]
        id_len = np.fromiter(map(len, ids), np.uint32, count=n)
        id_start = np.concatenate([[0], np.cumsum(id_len, dtype=np.int64)[:-1]]).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        id_hashes = np.fromiter((hash(e.id) for e in entries), np.int64, count=n)
        id_order = np.argsort(id_hashes, kind="stable")
        return Rows(
            slots=slots, hashes=hashes,
            category=np.fromiter((self._code(e.category) for e in entries), np.uint32, count=n),
            source=np.fromiter((self._code(e.source) for e in entries), np.uint32, count=n),
            id_start=id_start, id_len=id_len, blob=b"".join(ids),
            sorted_keys=keys[order].astype(np.uint64), sorted_slots=slots[order],
            id_hashes=id_hashes[id_order], id_slots=slots[id_order],
        )

    def _code(self, s: str) -> int:
        code = self._codes.get(s)
        if code is None:
            code = self._codes[s] = len(self.strings)
            self.strings.append(s)
        return code


__all__ = ["BankEntry", "BankTable", "Change", "Rows", "TableState", "entry_key", "entry_keys"]
