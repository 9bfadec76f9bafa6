"""Local hash banks: CSV files of SHA-1, MD5 and PDQ hashes, loaded strictly and reloaded on change.

File format (UTF-8, one header line, no comments)::

    hash,category,source,id
    3f786850e387550fdab836ed7e6dc881de23001b,,example,example-1
    9e107d9d372bb6826bd81d3542a419d6,terrorism,tcap,tcap-42
    f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22,,ncmec,ncmec-7

The hash is 40 hex digits (SHA-1), 32 (MD5) or 64 (PDQ, standard hex order), any case.  An empty
category means the bank's configured category; an empty id means the hash itself identifies the entry.

A :class:`BankSet` holds an immutable snapshot of every bank; a reload builds new bank objects and
swaps the snapshot in one assignment, so lookups never see a half-loaded bank.
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
from dataclasses import dataclass, field

import numpy as np

from service.config.matching import PDQ_THRESHOLD_MAX, BankSection, BanksSection
from service.errors import BankError
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


@dataclass(frozen=True, slots=True)
class BankEntry:
    hash: str  # lower-case hex
    category: str
    source: str
    id: str

    @property
    def kind(self) -> str:
        """``sha1``, ``md5`` or ``pdq``, from the hash's length."""
        return _KIND_BY_LENGTH[len(self.hash)]


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


@dataclass(frozen=True)
class Bank:
    """One bank file, parsed.  PDQ hashes are kept as four uint64 words per hash, word-major (4, N)."""

    config: BankSection
    digest: str  # SHA-256 of the file's bytes
    exact: dict[str, dict[str, tuple[BankEntry, ...]]]  # kind -> hash -> entries
    pdq_entries: tuple[BankEntry, ...]
    pdq_words: np.ndarray = field(repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    def entries(self) -> set[BankEntry]:
        out = set(self.pdq_entries)
        for table in self.exact.values():
            for es in table.values():
                out.update(es)
        return out

    def sizes(self) -> dict[str, int]:
        out = {kind: sum(len(v) for v in self.exact[kind].values()) for kind in ("sha1", "md5")}
        out["pdq"] = len(self.pdq_entries)
        return out


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
    exact: dict[str, dict[str, list[BankEntry]]] = {"sha1": {}, "md5": {}}
    pdq: list[BankEntry] = []
    for entry in entries:
        kind = entry.kind
        if kind == "pdq":
            pdq.append(entry)
        else:
            exact[kind].setdefault(entry.hash, []).append(entry)
    words = np.frombuffer(b"".join(bytes.fromhex(e.hash) for e in pdq), dtype=np.uint64)
    return Bank(
        config=config,
        digest=digest,
        exact={k: {h: tuple(es) for h, es in table.items()} for k, table in exact.items()},
        pdq_entries=tuple(pdq),
        pdq_words=np.ascontiguousarray(words.reshape(-1, 4).T),
    )


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


@dataclass(frozen=True)
class _Snapshot:
    banks: tuple[Bank, ...]
    version: str


@dataclass
class _FileState:
    stat: FileStat | None  # of the file as last looked at, good or bad; None: missing or unreadable
    digest: str  # digest of the bytes last read, good or bad


class BankSet:
    """Every configured bank, loaded at construction (strictly: a bad file raises :class:`BankError`)."""

    def __init__(self, cfg: BanksSection, metrics: Metrics) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._lock = threading.Lock()  # one reload at a time; lookups never take it
        self._files: dict[str, _FileState] = {}
        self._listeners: list[Callable[[BankDelta], None]] = []
        banks = []
        for bank_cfg in cfg.list:
            if bank_cfg.kind != "file":  # filled from the store, then by syncs (service.exchanges.sync)
                banks.append(build_bank(bank_cfg, (), _EMPTY_DIGEST))
                continue
            stat, data = self._read(bank_cfg)
            bank = parse_bank(bank_cfg, data)
            self._files[bank_cfg.name] = _FileState(stat, bank.digest)
            banks.append(bank)
            metrics.bank_reloads.labels(bank_cfg.name, "loaded").inc()
        self._snapshot = self._make_snapshot(banks)
        for bank in banks:
            if bank.config.kind == "file":
                self._log_loaded(bank, "loaded")

    # ----------------------------------------------------------------------- lookups

    @property
    def version(self) -> str:
        """Changes whenever any bank's content, name, category or threshold changes."""
        return self._snapshot.version

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self._snapshot.banks)

    @property
    def pdq_count(self) -> int:
        return sum(len(b.pdq_entries) for b in self._snapshot.banks)

    def sizes(self) -> dict[str, dict[str, int]]:
        return {b.name: b.sizes() for b in self._snapshot.banks}

    def bank(self, name: str) -> Bank | None:
        """The bank's current content (None for a name not configured)."""
        return next((b for b in self._snapshot.banks if b.name == name), None)

    def set_entries(self, name: str, entries: Iterable[BankEntry], *, digest: str,
                    publish: bool = True) -> BankDelta | None:
        """Replace the content of a ``url`` or ``exchange`` bank (a sync applied a delta or a full list).

        ``digest`` identifies the new content (it goes into :attr:`version`).  The new content is matchable
        when this returns; subscribers get the :class:`BankDelta` (returned too; None when nothing changed).
        ``publish=False`` (loading the stored content at start) tells no subscriber: nothing is new.
        """
        with self._lock:
            old = self._snapshot
            previous = next((b for b in old.banks if b.name == name), None)
            if previous is None:
                raise KeyError(name)
            new = build_bank(previous.config, entries, digest)
            self._snapshot = self._make_snapshot(b if b.name != name else new for b in old.banks)
        return self._publish(previous, new) if publish else None

    def match_sha1(self, sha1: str) -> list[Match]:
        return self._match_exact("sha1", sha1)

    def match_md5(self, md5: str) -> list[Match]:
        return self._match_exact("md5", md5)

    def _match_exact(self, kind: str, value: str) -> list[Match]:
        value = value.strip().lower()
        out = []
        for bank in self._snapshot.banks:
            for e in bank.exact[kind].get(value, ()):
                out.append(Match(matcher=kind, bank=bank.name, category=e.category, hash_id=e.id or e.hash,
                                 hash_value=e.hash, source=e.source or None))
        return out

    def match_pdq(self, signal: PdqSignal, *views: PdqSignal) -> list[Match]:
        """Entries within each bank's ``pdq_threshold`` (<=) of any of the signal's eight variants, or of
        any derived view's (``views``, each under its own ``view_thresholds`` cap as well).

        One match per entry: the closest, the image as uploaded winning ties (its view and variant are
        in the match's details).  Signals under ``pdq_quality_min`` are not matched."""
        best: dict[tuple[int, int], tuple[int, int, Match]] = {}
        for sig in (signal, *views):
            if sig.quality < self._cfg.pdq_quality_min or not sig.hashes:
                continue
            cap = self._view_threshold(sig.view)
            query = pdq_words(sig)
            for order, bank in enumerate(self._snapshot.banks):
                threshold = min(bank.config.pdq_threshold, cap)
                for i, (dist, variant) in pdq_scan(bank.pdq_words, query, threshold).items():
                    if (order, i) in best and best[(order, i)][0] <= dist:
                        continue
                    e = bank.pdq_entries[i]
                    match = Match(
                        matcher="pdq", bank=bank.name, category=e.category, hash_id=e.id or e.hash,
                        hash_value=e.hash, distance=dist, source=e.source or None,
                        details={
                            "view": sig.view,
                            "variant": DIHEDRAL_VARIANTS[variant],
                            "threshold": threshold,
                            "quality": sig.quality,
                        },
                    )
                    best[(order, i)] = (dist, order, match)
        found = sorted(best.values(), key=lambda t: (t[0], t[1]))
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

    # ----------------------------------------------------------------------- reloading

    def subscribe(self, listener: Callable[[BankDelta], None]) -> None:
        """Call ``listener(delta)`` for each bank that changes from now on, after the change is matchable.

        Called in the thread that applied the change (a reload runs in a worker thread): a listener
        that needs the event loop hands over with ``loop.call_soon_threadsafe``.  A listener that
        raises is logged and does not stop the others.
        """
        self._listeners.append(listener)

    def _publish(self, old: Bank | None, new: Bank) -> BankDelta | None:
        before = old.entries() if old is not None else set()
        after = new.entries()
        delta = BankDelta(bank=new.name, added=tuple(sorted(after - before, key=_entry_key)),
                          removed=tuple(sorted(before - after, key=_entry_key)), at=time.time())
        if not delta.added and not delta.removed:
            return None
        for listener in list(self._listeners):
            try:
                listener(delta)
            except Exception:
                log.exception("bank %s: a change listener failed", new.name)
        return delta

    def reload_if_changed(self) -> bool:
        """Re-read banks whose file changed (stat first, then content digest).  True if any bank changed.

        A file that cannot be read or parsed leaves that bank's previous content in place; the error is
        logged and counted, and the same bad file is not retried until it changes again.
        """
        with self._lock:
            old = self._snapshot
            new_banks: list[Bank] = []
            changed: list[Bank] = []
            for bank in old.banks:
                new_banks.append(self._reload_one(bank, changed) if bank.config.kind == "file" else bank)
            if not changed:
                return False
            self._snapshot = self._make_snapshot(new_banks)  # one assignment: atomic for readers
        previous = {b.name: b for b in old.banks}
        for bank in changed:
            self._log_loaded(bank, "reloaded")
            self._publish(previous.get(bank.name), bank)
        return True

    def _reload_one(self, bank: Bank, changed: list[Bank]) -> Bank:
        state = self._files[bank.name]
        try:
            stat = _stat(bank.config.path)
        except OSError as exc:
            return self._reload_failed(bank, state, None, f"cannot stat {bank.config.path}: {exc}")
        if stat == state.stat:
            return bank
        try:
            stat, data = self._read(bank.config)
        except BankError as exc:
            return self._reload_failed(bank, state, stat, str(exc))
        digest = hashlib.sha256(data).hexdigest()
        if digest in (state.digest, bank.digest):  # touched, or rewritten with content already seen
            state.stat, state.digest = stat, digest
            return bank
        try:
            new = parse_bank(bank.config, data)
        except BankError as exc:
            state.digest = digest
            return self._reload_failed(bank, state, stat, str(exc))
        self._files[bank.name] = _FileState(stat, digest)
        self._metrics.bank_reloads.labels(bank.name, "reloaded").inc()
        changed.append(new)
        return new

    def _reload_failed(self, bank: Bank, state: _FileState, stat: FileStat | None, why: str) -> Bank:
        if stat != state.stat:  # report each bad state once, not on every check
            log.error("bank %s: reload failed, keeping the previous content: %s", bank.name, why)
            self._metrics.bank_reloads.labels(bank.name, "error").inc()
        state.stat = stat
        return bank

    async def watch(self, interval: float, stop: asyncio.Event) -> None:
        """Check for changed files every ``interval`` seconds until ``stop`` is set (0 disables)."""
        if interval <= 0:
            return
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            await asyncio.to_thread(self.reload_if_changed)

    # ----------------------------------------------------------------------- helpers

    @staticmethod
    def _read(cfg: BankSection) -> tuple[FileStat, bytes]:
        """Stat, then read: a write that lands after the stat changes the stat seen next time."""
        try:
            stat = _stat(cfg.path)
            with open(cfg.path, "rb") as f:
                return stat, f.read()
        except OSError as exc:
            raise BankError(f"{cfg.path}: cannot read bank {cfg.name!r}: {exc.strerror or exc}") from exc

    def _make_snapshot(self, banks: Iterable[Bank]) -> _Snapshot:
        banks = tuple(banks)
        h = hashlib.sha256()
        h.update(f"pdq_quality_min={self._cfg.pdq_quality_min} {self._cfg.view_thresholds}\n".encode())
        for b in banks:
            h.update(f"{b.name}\0{b.config.category}\0{b.config.pdq_threshold}\0{b.digest}\n".encode())
        for b in banks:
            for kind, n in b.sizes().items():
                self._metrics.bank_size.labels(b.name, kind).set(n)
            self._metrics.set_bank_categories(b.name, _category_sizes(b))
        return _Snapshot(banks=banks, version=h.hexdigest()[:16])

    @staticmethod
    def _log_loaded(bank: Bank, verb: str) -> None:
        sizes = bank.sizes()
        log.info(
            "bank %s %s from %s: %d SHA-1, %d MD5, %d PDQ (digest %s)",
            bank.name, verb, bank.config.path, sizes["sha1"], sizes["md5"], sizes["pdq"], bank.digest[:12],
        )


def _category_sizes(bank: Bank) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for e in bank.pdq_entries:
        out[("pdq", e.category)] = out.get(("pdq", e.category), 0) + 1
    for kind, table in bank.exact.items():
        for entries in table.values():
            for e in entries:
                out[(kind, e.category)] = out.get((kind, e.category), 0) + 1
    return out


def _entry_key(e: BankEntry) -> tuple[str, str, str, str]:
    return (e.hash, e.category, e.source, e.id)


def _stat(path: str) -> FileStat:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
