"""Syncs of ``url`` and ``exchange`` banks into the :class:`BankSet`, persisted in the store.

Cold start (:meth:`BankSyncer.load`) puts each bank's stored content into the BankSet before scanning starts,
so a restart never refetches everything.  An exchange bank then continues its delta from the stored
checkpoint: each ``FetchDelta`` is written to the store with its checkpoint in one transaction, and applied to
the BankSet (coalesced to at most one swap per second, and always at the end) as a difference: the bank's
entries of the changed records (the entry id is the record) out, their new entries in.  The syncer keeps no
copy of a bank's content: the BankSet holds it compactly.  A stale checkpoint
(``is_stale()``), or none, fetches the whole list; the bank is replaced only when that fetch completes, and
matching goes on with the old content meanwhile.  Records deleted or withdrawn upstream leave the bank.

A ``url`` bank is fetched whole, conditionally (ETag / If-Modified-Since) and replaced when it changed.

Each bank syncs in its own supervised task (:meth:`BankSyncer.run_bank`): one bank failing (HTTP 429/5xx
after the client's own retries, bad data, refused credentials) is logged, counted
(``bank_sync_errors``), shown as degraded on ``/healthz/pipeline`` and retried with exponential backoff from
``banks.retry_delay`` up to the bank's ``interval``; the others and matching are not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from service.backoff import exponential_backoff
from service.config.matching import BankSection, BanksSection
from service.errors import BankError, ExchangeError
from service.matchers.banks import BankEntry, BankSet, parse_entries
from service.metrics import Metrics
from service.net import Proxies
from service.store.base import BankHash, BankSyncState, BankSyncStore, StoreError

log = logging.getLogger(__name__)

APPLY_EVERY = 1.0  # seconds: deltas arriving faster are applied to the BankSet together
Content = dict[str, tuple[BankEntry, ...]]  # upstream record key -> its entries
Progress = Callable[[int, int], None]  # (records changed so far, hashes in the bank)


@dataclass(frozen=True)
class SyncResult:
    bank: str
    ok: bool
    added: int = 0
    removed: int = 0
    hashes: int = 0
    full: bool = False  # a whole-list fetch (first sync, stale checkpoint, or a url bank that changed)
    error: str | None = None
    seconds: float = 0.0


class BankSyncer:
    """Syncs every ``url`` and ``exchange`` bank of ``cfg`` (see the module docstring)."""

    def __init__(self, cfg: BanksSection, banks: BankSet, store: BankSyncStore, metrics: Metrics, *,
                 user_agent: str = "", proxies: Proxies | None = None,
                 make_client: Callable[[BankSection], Any] | None = None) -> None:
        self.cfg = cfg
        self.banks = banks
        self.store = store
        self.metrics = metrics
        self.user_agent = user_agent
        self.proxies = proxies or Proxies.direct()
        self.make_client = make_client or _exchange_client
        self.managed = {b.name: b for b in cfg.list if b.kind != "file"}
        self._errors: dict[str, str | None] = {}
        self._seen: dict[str, Any] = {}  # the checkpoint of the content in memory, as stored
        self._locks = {name: asyncio.Lock() for name in self.managed}

    # ------------------------------------------------------------------ cold start

    async def load(self) -> None:
        """Each managed bank's stored content into the BankSet (no :class:`BankDelta`: nothing is new)."""
        for name, bank in self.managed.items():
            state = await self.store.bank_sync_state(name)
            size = await self._load_one(name, state, publish=False)
            if state is not None:
                self._errors[name] = state.last_error
                if state.last_success:
                    self.metrics.bank_sync_success.labels(name).set(state.last_success)
            log.info("bank %s loaded from the store: %d hashes (%s)", name, size, bank.location)

    async def _load_one(self, name: str, state: BankSyncState | None, *, publish: bool) -> int:
        rows = await self.store.bank_hashes(name)
        entries = [BankEntry(hash=r.hash, category=r.category, source=r.source, id=r.entry_id) for r in rows]
        self._seen[name] = state.checkpoint if state is not None else None
        self._replace(name, entries, self._seen[name], publish=publish)
        return len(rows)

    async def _state(self, name: str) -> BankSyncState | None:
        """The stored state; when another process (``bank sync``, a replica) moved the bank on since this one
        last wrote it, its stored content is loaded first, so a delta is never applied to an old base."""
        state = await self.store.bank_sync_state(name)
        stored = state.checkpoint if state is not None else None
        if name in self._seen and stored != self._seen[name]:
            log.info("bank %s was synced by another process; loading its stored content", name)
            await self._load_one(name, state, publish=True)
        return state

    # ------------------------------------------------------------------ one sync

    async def sync(self, name: str, progress: Progress | None = None) -> SyncResult:
        """Sync one bank now; failures are recorded and returned, never raised."""
        bank = self.managed[name]
        started = time.monotonic()
        async with self._locks[name]:
            try:
                if bank.exchange is not None:
                    result = await self._sync_exchange(bank, progress)
                else:
                    result = await self._sync_url(bank, progress)
            except Exception as exc:
                error = _classify(exc)
                log.error("bank %s: sync failed (%s): %s", name, error.reason, error,
                          exc_info=not isinstance(exc, ExchangeError | StoreError))
                self.metrics.bank_sync_errors.labels(name, error.reason).inc()
                self.metrics.bank_sync_degraded.labels(name).set(1)
                self._errors[name] = str(error)
                with contextlib.suppress(StoreError):
                    await self.store.record_bank_sync(name, error=str(error)[:1000])
                return SyncResult(name, ok=False, error=str(error), seconds=time.monotonic() - started)
        self._errors[name] = None
        self.metrics.bank_sync_degraded.labels(name).set(0)
        self.metrics.bank_sync_success.labels(name).set(time.time())
        with contextlib.suppress(StoreError):  # the status only; the content and checkpoint are stored
            await self.store.record_bank_sync(name, error=None)
        self.metrics.bank_sync_changes.labels(name, "added").inc(result.added)
        self.metrics.bank_sync_changes.labels(name, "removed").inc(result.removed)
        log.info("bank %s synced: +%d -%d, %d hashes%s", name, result.added, result.removed, result.hashes,
                 " (full list)" if result.full else "")
        return SyncResult(**{**result.__dict__, "seconds": time.monotonic() - started})

    async def _sync_exchange(self, bank: BankSection, progress: Progress | None) -> SyncResult:
        assert bank.exchange is not None
        name = bank.name
        client = self.make_client(bank)
        state = await self._state(name)
        checkpoint = client.checkpoint_from_json(state.checkpoint if state else None)
        full = checkpoint is None or checkpoint.is_stale()
        if checkpoint is not None and full:
            log.warning("bank %s: the stored checkpoint is stale; fetching the whole list (matching goes on "
                        "with the current content until it completes)", name)
            checkpoint = None
        content: Content = {}  # a full fetch: the whole list, kept only until it replaces the bank
        pending: Content = {}  # a delta: records changed since the last swap -> their new entries
        rules = [(r.label.lower(), r.category) for r in bank.exchange.categories]
        fetched: Iterator[Any] = client.fetch(checkpoint)
        changed = 0
        added = removed = 0
        last_json: Any = client.checkpoint_to_json(checkpoint)
        applied_at = time.monotonic()
        try:
            while True:
                batch = await asyncio.to_thread(next, fetched, None)
                if batch is None:
                    break
                for signal_type, n in batch.skipped.items():
                    self.metrics.bank_sync_skipped.labels(name, signal_type).inc(n)
                rows: list[BankHash] = []
                updated = content if full else pending
                for record, signals in batch.updates.items():
                    entries = tuple(BankEntry(hash=s.hash, category=_category(s.labels, rules, bank.category),
                                              source=bank.exchange.type, id=record) for s in signals or ())
                    if entries or not full:
                        updated[record] = entries  # no entries: the record leaves the bank
                    else:
                        updated.pop(record, None)
                    rows.extend(_row(record, e) for e in entries)
                changed += len(batch.updates)
                if batch.checkpoint is not None:
                    last_json = client.checkpoint_to_json(batch.checkpoint)
                if not full:  # each delta is durable with its checkpoint, and matchable within APPLY_EVERY
                    await self.store.apply_bank_delta(name, list(batch.updates), rows, last_json)
                    self._seen[name] = last_json
                    if time.monotonic() - applied_at >= APPLY_EVERY:
                        plus, minus = self._apply_records(name, pending, last_json)
                        added, removed = added + plus, removed + minus
                        pending, applied_at = {}, time.monotonic()
                self._lag(name, batch.checkpoint)
                if progress is not None:
                    progress(changed, _size(content) if full else self._hashes(name))
        except BaseException:
            if pending:  # failed after some stored deltas: what is stored is matchable too
                self._apply_records(name, pending, last_json)
            raise
        if full:  # replace only now that the whole list is in
            await self.store.replace_bank(name, [_row(rec, e) for rec, es in content.items() for e in es], last_json)
            self._seen[name] = last_json
            added, removed = self._replace(name, [e for es in content.values() for e in es], last_json)
        else:
            plus, minus = self._apply_records(name, pending, last_json)
            added, removed = added + plus, removed + minus
        return SyncResult(name, ok=True, added=added, removed=removed, hashes=self._hashes(name), full=full)

    async def _sync_url(self, bank: BankSection, progress: Progress | None) -> SyncResult:
        from service.exchanges.urllist import fetch_list

        name = bank.name
        state = await self._state(name)
        got = await fetch_list(bank, self.cfg, validators=state.checkpoint if state else None,
                               user_agent=self.user_agent, proxies=self.proxies)
        self.metrics.bank_sync_lag.labels(name).set(0)
        if got.body is None:  # 304 Not Modified
            return SyncResult(name, ok=True, hashes=self._hashes(name))
        try:
            entries = await asyncio.to_thread(parse_entries, bank, got.body, path=bank.url)
        except BankError as exc:
            raise ExchangeError(str(exc), reason="data") from exc
        content: Content = {}
        for e in entries:
            content[f"{e.kind}:{e.hash}:{e.id}"] = (*content.get(f"{e.kind}:{e.hash}:{e.id}", ()), e)
        await self.store.replace_bank(name, [_row(rec, e) for rec, es in content.items() for e in es],
                                      got.validators)
        self._seen[name] = got.validators
        added, removed = self._replace(name, [e for es in content.values() for e in es], got.validators)
        if progress is not None:
            progress(len(content), _size(content))
        return SyncResult(name, ok=True, added=added, removed=removed, hashes=self._hashes(name), full=True)

    # ------------------------------------------------------------------ running

    def retry_delay(self, name: str, failures: int) -> float:
        return exponential_backoff(max(0, failures - 1), initial=self.cfg.retry_delay,
                                   maximum=max(self.cfg.retry_delay, self.managed[name].interval),
                                   jitter=(0.8, 1.2))

    async def run_bank(self, name: str, stop: asyncio.Event) -> None:
        """Sync ``name`` every ``interval`` seconds (failures: backoff) until ``stop`` is set."""
        failures = 0
        while not stop.is_set():
            result = await self.sync(name)
            failures = 0 if result.ok else failures + 1
            delay = self.managed[name].interval if result.ok else self.retry_delay(name, failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def details(self) -> dict[str, object]:
        """Per bank, for ``/healthz/pipeline``: ``ok``, ``degraded`` (last sync failed; its content is still
        matched) or ``pending`` (not synced since start)."""
        out: dict[str, object] = {}
        for name in self.managed:
            error = self._errors.get(name, "")
            if error is None:
                out[name] = {"state": "ok"}
            elif error:
                out[name] = {"state": "degraded", "error": error[:300]}
            else:
                out[name] = {"state": "pending"}
        return out

    # ------------------------------------------------------------------ helpers

    def _replace(self, name: str, entries: list[BankEntry], checkpoint: Any, *,
                 publish: bool = True) -> tuple[int, int]:
        """Make ``entries`` the bank's content (applied as the difference); (added, removed) entries."""
        delta = self.banks.set_entries(name, entries, digest=_digest(name, checkpoint, len(entries)),
                                       publish=publish)
        return (len(delta.added), len(delta.removed)) if delta is not None else (0, 0)

    def _apply_records(self, name: str, updates: Content, checkpoint: Any) -> tuple[int, int]:
        """Replace the entries of the records in ``updates`` (the entry id is the record) by their new ones, in
        time proportional to the delta, not to the bank; (added, removed) entries."""
        if not updates:
            return 0, 0
        before = self.banks.entries_with_ids(name, updates)
        added = [e for es in updates.values() for e in es]
        size = self._hashes(name) + len(added) - len(before)
        delta = self.banks.apply_delta(name, added, before, digest=_digest(name, checkpoint, size))
        return (len(delta.added), len(delta.removed)) if delta is not None else (0, 0)

    def _hashes(self, name: str) -> int:
        return sum(self.banks.sizes()[name].values())

    def _lag(self, name: str, checkpoint: Any) -> None:
        try:
            ts = checkpoint.get_progress_timestamp() if checkpoint is not None else None
        except (AttributeError, TypeError, ValueError):
            ts = None
        if ts:
            self.metrics.bank_sync_lag.labels(name).set(max(0.0, time.time() - float(ts)))


def _exchange_client(bank: BankSection) -> Any:
    from service.exchanges.clients import ExchangeClient

    assert bank.exchange is not None
    secret = bank.exchange.credentials
    credentials = secret.get()
    if not credentials:
        raise ExchangeError(f"bank {bank.name}: exchange.credentials: {secret.problem() or 'not configured'}",
                            reason="auth")
    return ExchangeClient(bank.name, bank.exchange, credentials)


def _category(labels: tuple[str, ...], rules: list[tuple[str, str]], default: str) -> str:
    """The category of the first rule naming one of ``labels`` (case-insensitive), else ``default``."""
    lowered = {label.lower() for label in labels}
    return next((category for label, category in rules if label in lowered), default)


def _row(record: str, e: BankEntry) -> BankHash:
    return BankHash(record=record, kind=e.kind, hash=e.hash, category=e.category, source=e.source, entry_id=e.id)


def _digest(name: str, checkpoint: Any, size: int) -> str:
    return hashlib.sha256(json.dumps([name, checkpoint, size], default=str).encode()).hexdigest()


def _size(content: Mapping[str, tuple[BankEntry, ...]]) -> int:
    return sum(len(es) for es in content.values())


def _classify(exc: BaseException) -> ExchangeError | StoreError:
    """Any failure of a sync as an :class:`ExchangeError` with a reason (``auth``, ``http``, ``network``, ...)."""
    import requests

    if isinstance(exc, ExchangeError | StoreError):
        return exc
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        reason = "auth" if status in (401, 403) else "http"
        return ExchangeError(f"HTTP {status} from {exc.response.url if exc.response is not None else '?'}",
                             reason=reason)
    if isinstance(exc, requests.exceptions.RetryError):
        return ExchangeError(f"still failing after retries: {_short(exc)}", reason="http")
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return ExchangeError(f"cannot reach the exchange: {_short(exc)}", reason="network")
    if isinstance(exc, BankError):
        return ExchangeError(str(exc), reason="data")
    if isinstance(exc, ValueError | KeyError | TypeError | ET.ParseError | AssertionError):
        return ExchangeError(f"bad data from the exchange: {type(exc).__name__}: {_short(exc)}", reason="data")
    return ExchangeError(f"{type(exc).__name__}: {_short(exc)}", reason="data")


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
