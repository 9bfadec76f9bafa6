"""Local hash banks: CSV files of SHA-1, MD5 and PDQ hashes, loaded strictly and reloaded on change.

File format (UTF-8, one header line, no comments)::

    hash,category,source,id
    3f786850e387550fdab836ed7e6dc881de23001b,,example,example-1
    9e107d9d372bb6826bd81d3542a419d6,terrorism,tcap,tcap-42
    f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22,,ncmec,ncmec-7

The hash is 40 hex digits (SHA-1), 32 (MD5) or 64 (PDQ, standard hex order), any case.  An empty
category means the bank's configured category; an empty id means the hash itself identifies the entry.

A :class:`BankSet` keeps each bank compactly in a :class:`~service.matchers.bank_table.BankTable` and applies
every change (a reload, a sync) as the entries added and removed; lookups never see a half-applied change.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from service.config.matching import PDQ_THRESHOLD_MAX, BankSection, BanksSection, PdqViewsSection
from service.errors import BankError
from service.matchers.bank_table import HASH_BYTES, BankTable, Change
from service.matchers.bank_table import BankEntry as BankEntry
from service.media.thumbnail import DIHEDRAL_VARIANTS
from service.media.views import TRIMMED_BORDER, TRIMMED_CAPTION, UNCROP
from service.metrics import Metrics
from service.models import Match, PdqSignal

log = logging.getLogger(__name__)

HEADER = ("hash", "category", "source", "id")
KINDS = ("sha1", "md5", "pdq")
_KIND_BY_LENGTH = {40: "sha1", 32: "md5", 64: "pdq"}
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()
FileStat = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns): any change means "look again"


@dataclass(frozen=True)
class BankDelta:
    """What one change of one bank added and removed (entries of every kind), applied at ``at``.

    Listeners registered with :meth:`BankSet.subscribe` receive one delta per changed bank after the
    new content is matchable (retroactive matching of stored file hashes starts from these).
    """

    bank: str
    added: tuple[BankEntry, ...]
    removed: tuple[BankEntry, ...]
    at: float  # Unix time


class Bank:
    """One bank: its config, the digest of the content last loaded, and its entries in a compact
    :class:`~service.matchers.bank_table.BankTable` (no Python object per hash)."""

    def __init__(self, config: BankSection, digest: str = _EMPTY_DIGEST) -> None:
        self.config = config
        self.digest = digest  # SHA-256 of the file's bytes, or the digest a sync gave
        self.table = BankTable()

    @property
    def name(self) -> str:
        return self.config.name

    def entries(self) -> set[BankEntry]:
        """Every entry, rebuilt as objects (for tools and tests: matching never does this)."""
        return set(self.table.entries())

    def sizes(self) -> dict[str, int]:
        return self.table.sizes()

    @property
    def pdq_words(self) -> np.ndarray:
        """The PDQ hashes as (4, N) uint64 words in slot order (a copy)."""
        hashes = self.table.state.rows["pdq"].hashes
        return np.ascontiguousarray(hashes.view(np.uint64).reshape(-1, 4).T)


def parse_bank(config: BankSection, data: bytes, *, path: str = "") -> Bank:
    """Parse one bank file's bytes; raise :class:`BankError` naming the file and line of any problem."""
    entries = parse_entries(config, data, path=path)
    return build_bank(config, entries, hashlib.sha256(data).hexdigest())


def parse_entries(config: BankSection, data: bytes, *, path: str = "", fmt: str | None = None) -> list[BankEntry]:
    """A bank list's entries (CSV or JSON lines, per ``fmt`` or the bank's ``format``); :class:`BankError` naming
    the file and line of the first problem."""
    where = path or config.path or config.url or config.name
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BankError(f"{where}: not UTF-8 text (byte {exc.start})") from exc
    if (fmt or config.file_format) == "jsonl":
        return _parse_jsonl(config, text, where)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    out: list[BankEntry] = []
    try:
        header = next(reader, None)
        if header is None:
            raise BankError(f"{where}: empty file; expected the header line {','.join(HEADER)}")
        if tuple(h.strip().lower() for h in header) != HEADER:
            raise BankError(f"{where}:1: header must be {','.join(HEADER)}, got {','.join(header)}")
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(HEADER):
                raise BankError(f"{where}:{line}: expected {len(HEADER)} fields, got {len(row)}")
            value, category, source, entry_id = (c.strip() for c in row)
            out.append(make_entry(config, value, category, source, entry_id, where=f"{where}:{line}"))
    except csv.Error as exc:
        raise BankError(f"{where}:{reader.line_num}: {exc}") from exc
    return out


def _parse_jsonl(config: BankSection, text: str, where: str) -> list[BankEntry]:
    out: list[BankEntry] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise BankError(f"{where}:{line}: not a JSON object: {exc}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("hash"), str):
            raise BankError(f"{where}:{line}: expected an object with a \"hash\" string")
        fields = [obj.get(k) or "" for k in ("category", "source", "id")]
        if not all(isinstance(f, str | int) for f in fields):
            raise BankError(f"{where}:{line}: category, source and id must be strings")
        category, source, entry_id = (str(f).strip() for f in fields)
        out.append(make_entry(config, obj["hash"].strip(), category, source, entry_id, where=f"{where}:{line}"))
    return out


def make_entry(config: BankSection, value: str, category: str = "", source: str = "", entry_id: str = "", *,
               where: str = "") -> BankEntry:
    """One checked entry (hash lower-cased; an empty category is the bank's); :class:`BankError` if the hash is
    not 40 (SHA-1), 32 (MD5) or 64 (PDQ) hex digits."""
    value = value.strip().lower()
    kind = _KIND_BY_LENGTH.get(len(value))
    if kind is None or not _HEX_RE.match(value):
        raise BankError(
            f"{where or config.name}: hash must be 40 (SHA-1), 32 (MD5) or 64 (PDQ) hex digits, got {value[:80]!r}"
        )
    return BankEntry(hash=value, category=category or config.category, source=source, id=entry_id)


def build_bank(config: BankSection, entries: Iterable[BankEntry], digest: str) -> Bank:
    """A :class:`Bank` of checked entries (see :func:`make_entry`)."""
    bank = Bank(config, digest)
    bank.table.replace(list(entries))
    return bank


def load_bank(config: BankSection) -> Bank:
    """Read and parse one bank file the way :class:`BankSet` loads it (``check-config`` validates with this);
    raise :class:`BankError` naming the file, and the line, of any problem."""
    _, data = BankSet._read(config)
    return parse_bank(config, data)


def pdq_words(signal: PdqSignal) -> np.ndarray:
    """A signal's eight hashes as a (8, 4) uint64 array, in the same word layout as the banks."""
    return np.frombuffer(b"".join(signal.hashes), dtype=np.uint64).reshape(-1, 4)


def pdq_scan(words: np.ndarray, query: np.ndarray, threshold: int) -> dict[int, tuple[int, int]]:
    """Entries of ``words`` (4, N) within ``threshold`` of any row of ``query`` (V, 4).

    Returns ``{entry_index: (distance, variant_index)}`` with the smallest distance over the variants.
    The first two words (128 bits) filter first: their distance never exceeds the full distance, and for
    unrelated hashes it is ~64, so few entries reach the full comparison.
    """
    n = words.shape[1]
    best: dict[int, tuple[int, int]] = {}
    if n == 0:
        return best
    buf = np.empty(n, dtype=np.uint64)
    half = np.empty(n, dtype=np.uint8)
    tmp = np.empty(n, dtype=np.uint8)
    for v in range(query.shape[0]):
        q = query[v]
        np.bitwise_xor(words[0], q[0], out=buf)
        np.bitwise_count(buf, out=half)
        np.bitwise_xor(words[1], q[1], out=buf)
        np.bitwise_count(buf, out=tmp)
        np.add(half, tmp, out=half)  # <= 128: fits uint8
        candidates = np.flatnonzero(half <= threshold)
        if candidates.size == 0:
            continue
        rest = np.bitwise_count(words[2:, candidates] ^ q[2:, None]).sum(axis=0, dtype=np.int32)
        dist = half[candidates].astype(np.int32) + rest
        hit = dist <= threshold
        for i, d in zip(candidates[hit].tolist(), dist[hit].tolist(), strict=True):
            if i not in best or d < best[i][0]:
                best[i] = (d, v)
    return best


@dataclass
class _FileState:
    stat: FileStat | None  # of the file as last looked at, good or bad; None: missing or unreadable
    digest: str  # digest of the bytes last read, good or bad


class BankSet:
    """Every configured bank, loaded at construction (strictly: a bad file raises :class:`BankError`).

    Each change of a bank (a file reload, :meth:`set_entries`, :meth:`apply_delta`) is applied to that bank's
    table as the entries added and removed; lookups never wait for it and see the bank before or after it.
    """

    def __init__(self, cfg: BanksSection, metrics: Metrics, *, views: PdqViewsSection | None = None) -> None:
        self._cfg = cfg
        self._views = views  # the derived views live scanning hashes: part of the version (they change what matches)
        self._metrics = metrics
        self._lock = threading.Lock()  # one change at a time; lookups never take it
        self._files: dict[str, _FileState] = {}
        self._listeners: list[Callable[[BankDelta], None]] = []
        banks = []
        for bank_cfg in cfg.list:
            if bank_cfg.kind != "file":  # filled from the store, then by syncs (service.exchanges.sync)
                banks.append(Bank(bank_cfg))
                continue
            stat, data = self._read(bank_cfg)
            bank = parse_bank(bank_cfg, data)
            self._files[bank_cfg.name] = _FileState(stat, bank.digest)
            banks.append(bank)
            metrics.bank_reloads.labels(bank_cfg.name, "loaded").inc()
        self._banks = tuple(banks)
        self._by_name = {b.name: b for b in banks}
        self._version = ""
        self._changed(banks)
        for bank in banks:
            if bank.config.kind == "file":
                self._log_loaded(bank, "loaded")

    # ----------------------------------------------------------------------- lookups

    @property
    def version(self) -> str:
        """Changes whenever any bank's content, name, category or threshold changes, or the derived views hashed
        (``thumbnail.views``, when given): a file scanned clean is matched again after any of them changed."""
        return self._version

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self._banks)

    @property
    def pdq_count(self) -> int:
        return sum(len(b.table.state.rows["pdq"]) for b in self._banks)

    def sizes(self) -> dict[str, dict[str, int]]:
        return {b.name: b.sizes() for b in self._banks}

    def nbytes(self) -> int:
        """Bytes held by every bank's rows and indexes."""
        return sum(b.table.nbytes() for b in self._banks)

    def bank(self, name: str) -> Bank | None:
        """The bank (None for a name not configured)."""
        return self._by_name.get(name)

    def entries_with_ids(self, name: str, ids: Iterable[str]) -> list[BankEntry]:
        """A bank's entries whose id is one of ``ids`` (for a sync: what an upstream record's update replaces)."""
        return self._by_name[name].table.entries_with_ids(ids)

    def match_sha1(self, sha1: str) -> list[Match]:
        return self._match_exact("sha1", sha1)

    def match_md5(self, md5: str) -> list[Match]:
        return self._match_exact("md5", md5)

    def _match_exact(self, kind: str, value: str) -> list[Match]:
        value = value.strip().lower()
        if len(value) != 2 * HASH_BYTES[kind] or not _HEX_RE.match(value):
            return []
        digest = np.frombuffer(bytes.fromhex(value), dtype=np.uint8).reshape(1, -1)
        out = []
        started = time.perf_counter()
        for bank in self._banks:
            table = bank.table
            with table.reading() as state:
                rows = state.rows[kind]
                slots = np.array(sorted(i for i, _ in table.exact[kind].lookup(digest)), dtype=np.int64)
                pos = rows.rows_of(slots)
                entries = list(table.rows_entries(rows, pos[pos >= 0].tolist()))
            for e in entries:
                out.append(Match(matcher=kind, bank=bank.name, category=e.category, hash_id=e.id or e.hash,
                                 hash_value=e.hash, source=e.source or None))
        self._metrics.index_query.labels(kind).observe(time.perf_counter() - started)
        return out

    def match_pdq(self, signal: PdqSignal, *views: PdqSignal) -> list[Match]:
        """Entries within each bank's ``pdq_threshold`` (<=) of any of the signal's eight variants, or of
        any derived view's (``views``, each under its own ``view_thresholds`` cap as well).

        One match per entry: the closest, the image as uploaded winning ties (its view and variant are
        in the match's details).  Signals under ``pdq_quality_min`` are not matched."""
        signals = [(sig, self._view_threshold(sig.view), pdq_words(sig)) for sig in (signal, *views)
                   if sig.quality >= self._cfg.pdq_quality_min and sig.hashes]
        found: list[tuple[int, int, Match]] = []
        started = time.perf_counter()
        for order, bank in enumerate(self._banks):
            table = bank.table
            best: dict[int, tuple[int, int, PdqSignal, int]] = {}  # row -> (distance, variant, signal, threshold)
            with table.reading() as state:  # one state for every signal of the upload
                rows = state.rows["pdq"]
                if not len(rows):
                    continue
                # One index query per distinct threshold, with the rows of every signal under it stacked.
                groups: dict[int, list[tuple[PdqSignal, np.ndarray]]] = {}
                for sig, cap, query in signals:
                    groups.setdefault(min(bank.config.pdq_threshold, cap), []).append((sig, query))
                for threshold, members in groups.items():
                    stacked = np.concatenate([q for _, q in members]) if len(members) > 1 else members[0][1]
                    owner = [(sig, row) for sig, q in members for row in range(q.shape[0])]
                    hits = table.pdq.query(stacked, threshold)
                    pos = rows.rows_of(np.array([slot for slot, _, _ in hits], dtype=np.int64))
                    for p, (_, dist, qrow) in zip(pos.tolist(), hits, strict=True):
                        sig, variant = owner[qrow]
                        if p >= 0 and (p not in best or dist < best[p][0]):
                            best[p] = (dist, variant, sig, threshold)
                entries = list(table.rows_entries(rows, list(best)))
            for e, (dist, variant, sig, threshold) in zip(entries, best.values(), strict=True):
                match = Match(
                    matcher="pdq", bank=bank.name, category=e.category, hash_id=e.id or e.hash,
                    hash_value=e.hash, distance=dist, source=e.source or None,
                    details={
                        "view": sig.view,
                        "variant": DIHEDRAL_VARIANTS[sig.variant_of(variant)],
                        "threshold": threshold,
                        "quality": sig.quality,
                    },
                )
                found.append((dist, order, match))
        if signals:
            self._metrics.index_query.labels("pdq").observe(time.perf_counter() - started)
        found.sort(key=lambda t: (t[0], t[1]))
        return [m for _, _, m in found]

    def match_pdq_signals(self, signals: Sequence[PdqSignal]) -> list[Match]:
        """:meth:`match_pdq` of a prepared item's signals (the image's first, then its views')."""
        return self.match_pdq(*signals) if signals else []

    def _view_threshold(self, view: str) -> int:
        """The cap ``banks.view_thresholds`` puts on a derived view's threshold (none on the original)."""
        caps = self._cfg.view_thresholds
        if view == TRIMMED_BORDER:
            return caps.trimmed_border
        if view == TRIMMED_CAPTION:
            return caps.trimmed_caption
        if view.startswith(UNCROP + "-"):
            return caps.uncrop
        return PDQ_THRESHOLD_MAX

    # ----------------------------------------------------------------------- changes

    def set_entries(self, name: str, entries: Iterable[BankEntry], *, digest: str,
                    publish: bool = True) -> BankDelta | None:
        """Make ``entries`` the content of a ``url`` or ``exchange`` bank (a sync fetched a full list).

        Applied as the difference from the current content.  ``digest`` identifies the new content.  The new
        content is matchable when this returns; subscribers get the :class:`BankDelta` (returned too; None when
        nothing changed).  ``publish=False`` (loading the stored content at start) tells no subscriber.
        """
        entries = list(entries)
        return self._change(name, lambda t: t.replace(entries), digest, publish)

    def apply_delta(self, name: str, added: Iterable[BankEntry], removed: Iterable[BankEntry], *,
                    digest: str | None = None, publish: bool = True) -> BankDelta | None:
        """Remove ``removed`` from a bank and add ``added`` (an entry in both stays), in time proportional to
        the delta, not to the bank.  Otherwise as :meth:`set_entries`."""
        added, removed = list(added), list(removed)
        return self._change(name, lambda t: t.apply(added, removed), digest, publish)

    def _change(self, name: str, how: Callable[[BankTable], Change], digest: str | None,
                publish: bool) -> BankDelta | None:
        bank = self._by_name.get(name)
        if bank is None:
            raise KeyError(name)
        with self._lock:
            change = how(bank.table)
            if digest is not None:
                bank.digest = digest
            if change.added or change.removed:
                self._changed([bank])
        return self._publish(name, change) if publish else None

    def subscribe(self, listener: Callable[[BankDelta], None]) -> None:
        """Call ``listener(delta)`` for each bank that changes from now on, after the change is matchable.

        Called in the thread that applied the change (a reload runs in a worker thread): a listener
        that needs the event loop hands over with ``loop.call_soon_threadsafe``.  A listener that
        raises is logged and does not stop the others.
        """
        self._listeners.append(listener)

    def _publish(self, name: str, change: Change) -> BankDelta | None:
        if not change.added and not change.removed:
            return None
        delta = BankDelta(bank=name, added=tuple(sorted(change.added, key=_entry_key)),
                          removed=tuple(sorted(change.removed, key=_entry_key)), at=time.time())
        for listener in list(self._listeners):
            try:
                listener(delta)
            except Exception:
                log.exception("bank %s: a change listener failed", name)
        return delta

    def reload_if_changed(self) -> bool:
        """Re-read banks whose file changed (stat first, then content digest).  True if any bank changed.

        A file that cannot be read or parsed leaves that bank's previous content in place; the error is
        logged and counted, and the same bad file is not retried until it changes again.
        """
        changes: list[tuple[Bank, Change]] = []
        with self._lock:
            for bank in self._banks:
                if bank.config.kind != "file":
                    continue
                loaded = self._reload_one(bank)
                if loaded is not None:
                    entries, digest = loaded
                    changes.append((bank, bank.table.replace(entries)))
                    bank.digest = digest
            if not changes:
                return False
            self._changed([b for b, _ in changes])
        for bank, change in changes:
            self._log_loaded(bank, "reloaded")
            self._publish(bank.name, change)
        return True

    def _reload_one(self, bank: Bank) -> tuple[list[BankEntry], str] | None:
        """The file's new entries and digest, or None when it did not change (or is broken)."""
        state = self._files[bank.name]
        try:
            stat = file_stat(bank.config.path)
        except OSError as exc:
            self._reload_failed(bank, state, None, f"cannot stat {bank.config.path}: {exc}")
            return None
        if stat == state.stat:
            return None
        try:
            stat, data = self._read(bank.config)
        except BankError as exc:
            self._reload_failed(bank, state, stat, str(exc))
            return None
        digest = hashlib.sha256(data).hexdigest()
        if digest in (state.digest, bank.digest):  # touched, or rewritten with content already seen
            state.stat, state.digest = stat, digest
            return None
        try:
            entries = parse_entries(bank.config, data)
        except BankError as exc:
            state.digest = digest
            self._reload_failed(bank, state, stat, str(exc))
            return None
        self._files[bank.name] = _FileState(stat, digest)
        self._metrics.bank_reloads.labels(bank.name, "reloaded").inc()
        return entries, digest

    def _reload_failed(self, bank: Bank, state: _FileState, stat: FileStat | None, why: str) -> None:
        if stat != state.stat:  # report each bad state once, not on every check
            log.error("bank %s: reload failed, keeping the previous content: %s", bank.name, why)
            self._metrics.bank_reloads.labels(bank.name, "error").inc()
        state.stat = stat

    async def watch(self, interval: float, stop: asyncio.Event) -> None:
        """Check for changed files every ``interval`` seconds until ``stop`` is set (0 disables)."""
        await watch_files(self.reload_if_changed, interval, stop)

    # ----------------------------------------------------------------------- helpers

    @staticmethod
    def _read(cfg: BankSection) -> tuple[FileStat, bytes]:
        """Stat, then read: a write that lands after the stat changes the stat seen next time."""
        try:
            stat = file_stat(cfg.path)
            with open(cfg.path, "rb") as f:
                return stat, f.read()
        except OSError as exc:
            raise BankError(f"{cfg.path}: cannot read bank {cfg.name!r}: {exc.strerror or exc}") from exc

    def _changed(self, banks: Iterable[Bank]) -> None:
        """After ``banks`` changed: the version (an XOR of entry keys per bank: no pass over the content) and
        the size metrics."""
        h = hashlib.sha256()
        h.update(f"pdq_quality_min={self._cfg.pdq_quality_min} {self._cfg.view_thresholds} {self._views}\n".encode())
        for b in self._banks:
            state = b.table.state
            h.update(f"{b.name}\0{b.config.category}\0{b.config.pdq_threshold}\0{state.xor:016x}\0"
                     f"{state.count()}\n".encode())
        self._version = h.hexdigest()[:16]
        for b in banks:
            for kind, n in b.sizes().items():
                self._metrics.bank_size.labels(b.name, kind).set(n)
            self._metrics.set_bank_categories(b.name, b.table.category_sizes())

    @staticmethod
    def _log_loaded(bank: Bank, verb: str) -> None:
        sizes = bank.sizes()
        log.info(
            "bank %s %s from %s: %d SHA-1, %d MD5, %d PDQ (digest %s)",
            bank.name, verb, bank.config.path, sizes["sha1"], sizes["md5"], sizes["pdq"], bank.digest[:12],
        )


def _entry_key(e: BankEntry) -> tuple[str, str, str, str]:
    return (e.hash, e.category, e.source, e.id)


async def watch_files(reload: Callable[[], object], interval: float, stop: asyncio.Event) -> None:
    """Call ``reload`` (in a worker thread) every ``interval`` seconds until ``stop`` is set (0 disables).
    The one polling loop of every bank kind that is read from files."""
    if interval <= 0:
        return
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
            return
        except TimeoutError:
            pass
        await asyncio.to_thread(reload)


def file_stat(path: str) -> FileStat:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
