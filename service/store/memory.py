"""In-memory implementations of every store protocol, for unit tests (as httpx ships ``MockTransport``).

One :class:`MemoryStore` holds all the state and implements every protocol of :mod:`.base`;
:func:`service.store.memory_stores` hands it out field by field.  ``tests/store/test_contract.py`` runs
the same behaviour suite against it, SQLite and PostgreSQL.  Single process: no outbox leases.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from service.models import Match, UploadEvent
from service.store.base import (
    REMOTE_CLEAN,
    REMOTE_FAILED,
    REMOTE_SEEN,
    SEARCH_HEX_RE,
    AllowlistEntry,
    AuditEntry,
    BankHash,
    BankSyncState,
    CaseFilter,
    CaseStats,
    Claim,
    Decision,
    FileHashes,
    NewAction,
    OutboxItem,
    Preservation,
    RemoteScan,
    RemoteScanRow,
    RetroDelta,
    RetroDeltaStatus,
    ReviewCase,
    Reviewer,
    ReviewSession,
    ScanRecord,
    SignIn,
    SignInCounts,
    StoreError,
    UnscannableCase,
)
from service.store.outbox import SCHEDULED_KINDS


class MemoryStore:
    """Every protocol of :mod:`service.store.base`, on dicts."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.is_open = False
        self.checkpoints: dict[str, str] = {}
        self.events: dict[str, tuple[UploadEvent, str, float]] = {}
        self.event_history: dict[str, list[dict[str, Any]]] = {}  # event id -> outcomes a later result replaced
        self.scans: dict[str, ScanRecord] = {}
        self.matches: list[dict[str, Any]] = []
        self.outbox: dict[int, OutboxItem] = {}
        self.remote: dict[tuple[str, str], RemoteScanRow] = {}
        self.budgets: dict[tuple[str, str], int] = {}
        self.audit: list[AuditEntry] = []
        self.allowlist: dict[tuple[str, str], AllowlistEntry] = {}
        self.claims: dict[str, Claim] = {}
        self.reviewers: dict[str, Reviewer] = {}
        self.signins: list[SignIn] = []
        self.review_state: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, ReviewSession] = {}
        self.bank_sync: dict[str, BankSyncState] = {}
        self.bank_rows: dict[str, dict[str, list[BankHash]]] = {}  # bank -> record -> rows
        self.notify_groups: dict[str, dict[str, Any]] = {}
        self.digests: dict[str, tuple[str, dict[str, Any]]] = {}  # item key -> (digest key, payload), in order
        self.unscannable: dict[str, UnscannableCase] = {}
        self.preserved: dict[tuple[str, str, str], Preservation] = {}
        self.file_hashes: dict[tuple[str, str, str], FileHashes] = {}  # (wiki, title, sha1) -> row
        self.retro_deltas: dict[int, RetroDelta] = {}
        self._file_ids = itertools.count(1)
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        self.is_open = True

    async def close(self) -> None:
        self.is_open = False

    async def ping(self) -> None:
        if not self.is_open:
            raise StoreError("store is not open")

    # ------------------------------------------------------------------ checkpoints

    async def get_checkpoint(self, name: str) -> Any | None:
        text = self.checkpoints.get(name)
        return None if text is None else json.loads(text)

    async def set_checkpoint(self, name: str, value: Any) -> None:
        self.checkpoints[name] = json.dumps(value, separators=(",", ":"))

    async def delete_checkpoint(self, name: str) -> None:
        self.checkpoints.pop(name, None)

    # ------------------------------------------------------------------ ledger and pipeline

    def _seen(self, event_id: str) -> bool:
        row = self.events.get(event_id)
        return row is not None and not row[1].startswith("error:")

    async def event_seen(self, event_id: str) -> bool:
        return self._seen(event_id)

    async def record_event(self, event: UploadEvent, outcome: str) -> None:
        self.events[event.event_id] = (event, outcome, self.clock())

    async def event_outcome(self, event_id: str) -> str | None:
        row = self.events.get(event_id)
        return None if row is None else row[1]

    async def supersede_outcomes(self, sha1: str, event_id: str | None, prefix: str, outcome: str) -> list[str]:
        now = self.clock()
        replaced = []
        for key in sorted(self.events):
            event, old, at = self.events[key]
            if (event.sha1 == sha1 or key == event_id) and old.startswith(prefix):
                self.events[key] = (event, outcome, at)
                self.event_history.setdefault(key, []).append(
                    {"outcome": old, "finished_at": at, "superseded_at": now})
                replaced.append(old)
        return replaced

    async def prune_events(self, older_than: float) -> int:
        old = [k for k, (_, _, at) in self.events.items() if at < older_than]
        for k in old:
            del self.events[k]
            self.event_history.pop(k, None)
        return len(old)

    async def admit(self, event_id: str, sha1: str | None) -> tuple[bool, ScanRecord | None]:
        if self._seen(event_id):
            return True, None
        return False, None if sha1 is None else self.scans.get(sha1)

    async def finish(
        self, event: UploadEvent, outcome: str, scan: ScanRecord | None, remote: Sequence[RemoteScan] = (),
        actions: Sequence[NewAction] = (),
    ) -> None:
        if scan is not None:
            self.scans[scan.sha1] = scan
        for r in remote:
            self._put_remote(r)
        await self.record_event(event, outcome)
        if outcome.startswith("unscannable:") and event.event_id not in self.unscannable:
            self.unscannable[event.event_id] = UnscannableCase(
                event_id=event.event_id, wiki=event.wiki, title=event.title, sha1=event.sha1, uploader=event.uploader,
                upload_time=event.upload_time.isoformat(), reason=outcome.split(":", 1)[1] or "unknown",
                created_at=self.clock())
            self._insert_actions(actions, self.clock())

    async def get_scan(self, sha1: str) -> ScanRecord | None:
        return self.scans.get(sha1)

    async def put_scan(self, record: ScanRecord) -> None:
        self.scans[record.sha1] = record

    # ------------------------------------------------------------------ matches and outbox

    def _insert_actions(self, actions: Sequence[NewAction], now: float) -> list[OutboxItem]:
        keys = {i.key for i in self.outbox.values()}
        created = []
        for a in actions:
            if a.key in keys:
                continue
            keys.add(a.key)
            item = OutboxItem(id=next(self._ids), key=a.key, kind=a.kind, payload=json.loads(json.dumps(a.payload)),
                              created_at=now, next_attempt_at=a.not_before)
            self.outbox[item.id] = item
            created.append(item)
        return created

    async def record_matches(
        self, event: UploadEvent, sha1: str, matches: Sequence[Match], actions: Sequence[NewAction]
    ) -> list[OutboxItem]:
        now = self.clock()
        have = {(r["wiki"], r["title"], r["sha1"], r["matcher"], r["bank"], r["hash_id"]) for r in self.matches}
        for m in matches:
            key = (event.wiki, event.title, sha1, m.matcher, m.bank, m.hash_id)
            if key in have:
                continue
            have.add(key)
            self.matches.append({
                "id": len(self.matches) + 1, "event_id": event.event_id, "wiki": event.wiki, "title": event.title,
                "sha1": sha1, "uploader": event.uploader, "upload_time": event.upload_time.isoformat(),
                "log_action": event.log_action, "page_url": event.page_url, "matcher": m.matcher, "bank": m.bank,
                "category": m.category, "hash_id": m.hash_id, "hash_value": m.hash_value, "distance": m.distance,
                "source": m.source, "details": json.dumps(dict(m.details)), "created_at": now,
            })
        return self._insert_actions(actions, now)

    async def list_matches(self, limit: int = 100) -> list[dict[str, Any]]:
        return [dict(r) for r in sorted(self.matches, key=lambda r: -r["id"])[:limit]]

    async def add_actions(self, actions: Sequence[NewAction]) -> list[OutboxItem]:
        return self._insert_actions(actions, self.clock())

    async def due_actions(self, kind: str, now: float, limit: int) -> list[OutboxItem]:
        due = [i for i in self.outbox.values() if i.state == "pending" and i.kind == kind and i.next_attempt_at <= now]
        return sorted(due, key=lambda i: (i.next_attempt_at, i.id))[:limit]

    async def next_due_time(self) -> float | None:
        return min((i.next_attempt_at for i in self.outbox.values() if i.state == "pending"), default=None)

    async def get_action(self, item_id: int) -> OutboxItem | None:
        return self.outbox.get(item_id)

    async def list_actions(self, state: str | None = None) -> list[OutboxItem]:
        return [i for _, i in sorted(self.outbox.items()) if state is None or i.state == state]

    def _update(self, item_id: int, **changes: Any) -> None:
        item = self.outbox.get(item_id)
        if item is not None:
            self.outbox[item_id] = dataclasses.replace(item, attempts=item.attempts + 1, **changes)

    async def mark_done(self, item_id: int, result: str) -> None:
        self._update(item_id, state="done", result=result, last_error=None)

    async def mark_retry(self, item_id: int, error: str, next_attempt_at: float) -> None:
        self._update(item_id, last_error=error, next_attempt_at=next_attempt_at)

    async def mark_failed(self, item_id: int, error: str) -> None:
        self._update(item_id, state="failed", last_error=error)

    async def pending_count(self) -> int:
        now = self.clock()
        return sum(1 for i in self.outbox.values()
                   if i.state == "pending"
                   and not (i.kind in SCHEDULED_KINDS and i.attempts == 0 and i.next_attempt_at > now))

    # ------------------------------------------------------------------ remote scans and budgets

    def _put_remote(self, r: RemoteScan) -> None:
        old = self.remote.get((r.sha1, r.matcher))
        if r.state == REMOTE_SEEN:
            if old is not None and r.upload is not None:
                self.remote[(r.sha1, r.matcher)] = dataclasses.replace(old, upload=r.upload)
            return
        failures, next_at, clean_at = r.transition(old.failures if old else None, old.clean_at if old else None)
        self.remote[(r.sha1, r.matcher)] = RemoteScanRow(
            sha1=r.sha1, matcher=r.matcher, state=r.state, scanned_at=r.at, clean_at=clean_at, failures=failures,
            next_attempt_at=next_at, upload=r.upload if r.upload is not None else (old.upload if old else None),
            last_error=r.error)

    async def put_remote_scans(self, scans: Sequence[RemoteScan]) -> None:
        for r in scans:
            self._put_remote(r)

    async def get_remote_scan(self, sha1: str, matcher: str) -> RemoteScanRow | None:
        return self.remote.get((sha1, matcher))

    async def list_remote_scans(self, matcher: str) -> list[RemoteScanRow]:
        return sorted((r for r in self.remote.values() if r.matcher == matcher), key=lambda r: r.scanned_at)

    async def due_remote_retries(self, matcher: str, now: float, limit: int) -> list[RemoteScanRow]:
        rows = [r for r in self.remote.values() if r.matcher == matcher and r.state == REMOTE_FAILED
                and r.next_attempt_at is not None and r.next_attempt_at <= now]
        return sorted(rows, key=lambda r: (r.next_attempt_at or 0.0, r.scanned_at))[:limit]

    async def stale_remote_scans(self, matcher: str, clean_before: float, limit: int) -> list[RemoteScanRow]:
        rows = [r for r in self.remote.values() if r.matcher == matcher and r.state == REMOTE_CLEAN
                and r.clean_at is not None and r.clean_at < clean_before]
        return sorted(rows, key=lambda r: (r.clean_at or 0.0, r.sha1))[:limit]

    async def retry_remote_failures_now(self, matcher: str, now: float) -> int:
        n = 0
        for key, r in list(self.remote.items()):
            if r.matcher == matcher and r.state == REMOTE_FAILED and (r.next_attempt_at is None
                                                                      or r.next_attempt_at > now):
                self.remote[key] = dataclasses.replace(r, next_attempt_at=now)
                n += 1
        return n

    async def reserve_budget(self, name: str, period: str, want: int, limit: int) -> tuple[int, int]:
        used = self.budgets.get((name, period), 0)
        granted = max(0, min(want, limit - used))
        self.budgets[(name, period)] = used + granted
        return granted, used + granted

    async def release_budget(self, name: str, period: str, count: int) -> None:
        if (name, period) in self.budgets:
            self.budgets[(name, period)] = max(0, self.budgets[(name, period)] - count)

    async def budget_used(self, name: str, period: str) -> int:
        return self.budgets.get((name, period), 0)

    # ------------------------------------------------------------------ review: allowlist, audit, decisions

    async def allowlisted_banks(self, sha1: str) -> frozenset[str]:
        return frozenset(bank for s, bank in self.allowlist if s == sha1)

    async def list_allowlist(self, limit: int = 500) -> list[AllowlistEntry]:
        return sorted(self.allowlist.values(), key=lambda r: (-r.added_at, r.sha1))[:limit]

    async def allowlist_pdqs(self) -> list[AllowlistEntry]:
        return [e for e in self.allowlist.values() if e.pdq is not None]

    async def allowlist_version(self) -> tuple[int, float]:
        return len(self.allowlist), max((e.added_at for e in self.allowlist.values()), default=0.0)

    async def content_pdq(self, sha1: str) -> str | None:
        scan = self.scans.get(sha1)
        return scan.pdq if scan else None

    async def add_allowlist(self, entry: AllowlistEntry) -> bool:
        if (entry.sha1, entry.bank) in self.allowlist:
            return False
        self.allowlist[(entry.sha1, entry.bank)] = entry
        self._append_audit(entry.added_at, entry.added_by, "allowlist-add", entry.sha1, None, None, entry.note,
                           {"bank": entry.bank, "pdq": entry.pdq})
        return True

    async def remove_allowlist(self, sha1: str, bank: str, actor: str, note: str = "") -> bool:
        row = self.allowlist.pop((sha1, bank), None)
        if row is None:
            return False
        self._append_audit(self.clock(), actor, "allowlist-undo", sha1, None, None, note,
                           {"bank": bank, "pdq": row.pdq, "added_by": row.added_by, "added_at": row.added_at,
                            "added_note": row.note})
        return True

    # ------------------------------------------------------------------ review: claims

    async def claim_case(self, sha1: str, reviewer: str, now: float, ttl: float, *, take_over: bool = False) -> Claim:
        old = self.claims.get(sha1)
        if old is None or take_over or old.reviewer == reviewer or old.expires_at <= now:
            since = old.claimed_at if old is not None and old.reviewer == reviewer else now
            self.claims[sha1] = Claim(sha1=sha1, reviewer=reviewer, claimed_at=since, expires_at=now + ttl)
        return self.claims[sha1]

    async def case_claims(self, sha1s: Sequence[str], now: float) -> dict[str, Claim]:
        return {s: c for s in sha1s if (c := self.claims.get(s)) is not None and c.expires_at > now}

    async def release_claim(self, sha1: str, reviewer: str) -> None:
        if (c := self.claims.get(sha1)) is not None and c.reviewer == reviewer:
            del self.claims[sha1]

    # ------------------------------------------------------------------ reviewers and sign-ins

    async def add_reviewer(self, name: str, password_hash: str, role: str) -> bool:
        if name in self.reviewers:
            return False
        now = self.clock()
        self.reviewers[name] = Reviewer(name=name, password_hash=password_hash, role=role, disabled_at=None,
                                        created_at=now, updated_at=now)
        return True

    async def get_reviewer(self, name: str) -> Reviewer | None:
        return self.reviewers.get(name)

    async def list_reviewers(self) -> list[Reviewer]:
        return [self.reviewers[n] for n in sorted(self.reviewers)]

    async def update_reviewer(self, name: str, *, password_hash: str | None = None, role: str | None = None,
                              disabled: bool | None = None) -> bool:
        old = self.reviewers.get(name)
        if old is None:
            return False
        now = self.clock()
        self.reviewers[name] = dataclasses.replace(
            old, updated_at=now, password_hash=old.password_hash if password_hash is None else password_hash,
            role=old.role if role is None else role,
            disabled_at=old.disabled_at if disabled is None else (now if disabled else None))
        return True

    async def record_signin(self, name: str, address: str, result: str) -> None:
        self.signins.append(SignIn(id=len(self.signins) + 1, at=self.clock(), name=name, address=address,
                                   result=result))

    async def signin_counts(self, name: str, address: str, since: float) -> SignInCounts:
        last_ok = max((x.id for x in self.signins if (x.name, x.address, x.result) == (name, address, "ok")),
                      default=0)
        failed = [x for x in self.signins if x.result == "bad-password" and x.at > since]
        return SignInCounts(pair=sum((x.name, x.address) == (name, address) and x.id > last_ok for x in failed),
                            address=sum(x.address == address for x in failed), name=sum(x.name == name for x in failed))

    async def list_signins(self, limit: int, before_id: int | None = None) -> list[SignIn]:
        return [x for x in reversed(self.signins) if before_id is None or x.id < before_id][:limit]

    def _append_audit(self, at: float, actor: str, action: str, sha1: str | None, wiki: str | None,
                      title: str | None, note: str, detail: dict[str, Any]) -> int:
        entry = AuditEntry(id=len(self.audit) + 1, at=at, actor=actor, action=action, sha1=sha1, wiki=wiki,
                           title=title, note=note, detail=json.loads(json.dumps(detail, sort_keys=True)))
        self.audit.append(entry)
        return entry.id

    async def append_audit(
        self, actor: str, action: str, *, sha1: str | None = None, wiki: str | None = None,
        title: str | None = None, note: str = "", detail: dict[str, Any] | None = None,
    ) -> int:
        return self._append_audit(self.clock(), actor, action, sha1, wiki, title, note, detail or {})

    async def list_audit(self, limit: int, before_id: int | None = None, sha1: str | None = None) -> list[AuditEntry]:
        rows = [e for e in reversed(self.audit)
                if (before_id is None or e.id < before_id) and (sha1 is None or e.sha1 == sha1)]
        return rows[:limit]

    async def record_decision(self, decision: Decision) -> tuple[int, list[OutboxItem]]:
        now, d = self.clock(), decision
        audit_id = self._append_audit(now, d.reviewer, d.action, d.sha1, None, d.title, d.note, dict(d.detail))
        self.review_state[d.sha1] = {"state": d.state, "reviewer": d.reviewer, "decided_at": now, "note": d.note}
        for bank in d.allowlist_banks:
            self.allowlist.setdefault((d.sha1, bank), AllowlistEntry(sha1=d.sha1, bank=bank, added_by=d.reviewer,
                                                                     added_at=now, note=d.note, pdq=d.allowlist_pdq))
        self.claims.pop(d.sha1, None)
        items = self._insert_actions(d.actions, now)
        for item in list(self.outbox.values()):
            if item.key in d.retry_keys and item.state == "failed":
                self.outbox[item.id] = dataclasses.replace(item, state="pending", next_attempt_at=now)
                items.append(self.outbox[item.id])
        return audit_id, sorted(items, key=lambda i: i.id)

    async def mark_removed(self, sha1: str, at: float) -> None:
        old = self.review_state.get(sha1)
        newest = max((r["created_at"] for r in self.matches if r["sha1"] == sha1), default=None)
        if old is None or old["state"] == "removed" or (newest is not None and old["decided_at"] < newest):
            self.review_state[sha1] = {"state": "removed", "reviewer": "system", "decided_at": at,
                                       "note": old["note"] if old else ""}

    # ------------------------------------------------------------------ review: queue

    def _case(self, sha1: str) -> ReviewCase | None:
        rows = [r for r in self.matches if r["sha1"] == sha1]
        if not rows:
            return None
        last = max(r["created_at"] for r in rows)
        decided = self.review_state.get(sha1)
        if decided is not None and decided["state"] == "dismissed":
            state = "dismissed"
        elif decided is None or decided["decided_at"] < last:
            state = "open"
        else:
            state = decided["state"]
        return ReviewCase(
            sha1=sha1, first_seen=min(r["created_at"] for r in rows), last_seen=last, state=state,
            categories=tuple(sorted({r["category"] for r in rows})), wikis=tuple(sorted({r["wiki"] for r in rows})),
            matchers=tuple(sorted({r["matcher"] for r in rows})), banks=tuple(sorted({r["bank"] for r in rows})),
            uploads=len({(r["wiki"], r["title"]) for r in rows}),
            decided_by=decided["reviewer"] if decided else None, decided_at=decided["decided_at"] if decided else None)

    async def review_cases(self, filt: CaseFilter, limit: int, offset: int) -> tuple[list[ReviewCase], int]:
        cases = [c for c in (self._case(s) for s in {r["sha1"] for r in self.matches}) if c is not None]
        if filt.category:
            cases = [c for c in cases if filt.category in c.categories]
        if filt.wiki:
            cases = [c for c in cases if filt.wiki in c.wikis]
        if filt.matcher:
            cases = [c for c in cases if filt.matcher in c.matchers]
        if filt.uploader:
            mine = {r["sha1"] for r in self.matches if r["uploader"] == filt.uploader}
            cases = [c for c in cases if c.sha1 in mine]
        if filt.query and filt.query.strip():
            found = {r["sha1"] for r in self.matches if _found(r, filt.query.strip())}
            cases = [c for c in cases if c.sha1 in found]
        if filt.state == "todo":
            cases = [c for c in cases if c.state in ("open", "escalated")]
        elif filt.state:
            cases = [c for c in cases if c.state == filt.state]
        cases.sort(key=lambda c: c.sha1)
        cases.sort(key=lambda c: c.last_seen, reverse=True)
        return cases[offset:offset + limit], len(cases)

    async def pending_by_category(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for case in (self._case(s) for s in {r["sha1"] for r in self.matches}):
            if case is not None and case.state in ("open", "escalated"):
                for category in case.categories:
                    counts[category] = counts.get(category, 0) + 1
        return counts

    async def review_case(self, sha1: str) -> ReviewCase | None:
        return self._case(sha1)

    async def case_matches(self, sha1: str) -> list[dict[str, Any]]:
        rows = sorted((r for r in self.matches if r["sha1"] == sha1), key=lambda r: (-r["created_at"], r["id"]))
        return [{**r, "details": json.loads(r["details"] or "{}")} for r in rows]

    async def case_actions(self, sha1: str) -> list[OutboxItem]:
        return [i for _, i in sorted(self.outbox.items())
                if i.key.endswith(f":{sha1}") or i.key.startswith(f"escalate:{sha1}:")]

    async def case_titles(self, sha1s: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        newest: dict[tuple[str, str, str], float] = {}
        for r in self.matches:
            if r["sha1"] in sha1s:
                key = (r["sha1"], r["wiki"], r["title"])
                newest[key] = max(newest.get(key, r["created_at"]), r["created_at"])
        out: dict[str, list[tuple[str, str]]] = {}
        for (sha1, wiki, title), _ in sorted(newest.items(), key=lambda kv: -kv[1]):
            out.setdefault(sha1, []).append((wiki, title))
        return out

    async def filter_values(self) -> dict[str, list[str]]:
        return {col: sorted({r[col] for r in self.matches}) for col in ("category", "wiki", "matcher", "bank")}

    # ------------------------------------------------------------------ review: sessions

    async def create_session(self, session: ReviewSession) -> None:
        if session.token_hash in self.sessions:
            raise StoreError("session exists")
        self.sessions[session.token_hash] = session

    async def get_session(self, token_hash: str) -> ReviewSession | None:
        return self.sessions.get(token_hash)

    async def touch_session(self, token_hash: str, now: float) -> None:
        s = self.sessions.get(token_hash)
        if s is not None:
            self.sessions[token_hash] = dataclasses.replace(s, last_seen=now)

    async def delete_session(self, token_hash: str) -> None:
        self.sessions.pop(token_hash, None)

    async def prune_sessions(self, now: float) -> int:
        old = [k for k, s in self.sessions.items() if s.expires_at < now]
        for k in old:
            del self.sessions[k]
        return len(old)

    # ------------------------------------------------------------------ retroactive matching

    async def put_file_hashes(self, files: Sequence[FileHashes]) -> None:
        for x in files:
            key = (x.event.wiki, x.event.title, x.sha1)
            old = self.file_hashes.get(key)
            self.file_hashes[key] = dataclasses.replace(x, id=old.id if old else next(self._file_ids))

    async def count_file_hashes(self) -> int:
        return len(self.file_hashes)

    async def file_pdqs(self, after_id: int, limit: int) -> list[tuple[int, str, int, bytes | None]]:
        rows = sorted((x.id, x.pdq, x.pdq_quality or 0, x.pdq_variants) for x in self.file_hashes.values()
                      if x.pdq is not None and x.id > after_id)
        return [(i, p, q, v) for i, p, q, v in rows[:limit] if p is not None]

    async def files_by_hash(self, kind: str, values: Sequence[str]) -> list[FileHashes]:
        wanted = set(values)
        return sorted((x for x in self.file_hashes.values() if getattr(x, kind) in wanted), key=lambda x: x.id)

    async def files_by_id(self, ids: Sequence[int]) -> list[FileHashes]:
        wanted = set(ids)
        return sorted((x for x in self.file_hashes.values() if x.id in wanted), key=lambda x: x.id)

    async def add_retro_delta(self, bank: str, added_at: float, entries: Sequence[tuple[str, str, str, str]]) -> int:
        now = self.clock()
        delta_id = len(self.retro_deltas) + 1
        self.retro_deltas[delta_id] = RetroDelta(id=delta_id, bank=bank, added_at=added_at, entries=tuple(entries),
                                                 state="matching", created_at=now, updated_at=now)
        return delta_id

    async def get_retro_delta(self, delta_id: int) -> RetroDelta | None:
        return self.retro_deltas.get(delta_id)

    async def list_retro_deltas(self, states: Sequence[str] = ()) -> list[RetroDelta]:
        return [x for _, x in sorted(self.retro_deltas.items()) if not states or x.state in states]

    async def retro_delta_status(self, states: Sequence[str]) -> list[RetroDeltaStatus]:
        return [RetroDeltaStatus(x.id, x.bank, x.state, x.progress, len(x.entries), x.created_at)
                for _, x in sorted(self.retro_deltas.items()) if x.state in states]

    async def update_retro_delta(self, delta_id: int, *, state: str, progress: int,
                                 hits: Sequence[tuple[int, int, int | None]] | None = None,
                                 note: str | None = None) -> None:
        old = self.retro_deltas.get(delta_id)
        if old is None:
            return
        self.retro_deltas[delta_id] = dataclasses.replace(
            old, state=state, progress=progress, hits=old.hits if hits is None else tuple(hits),
            note=old.note if note is None else note, updated_at=self.clock())
    # ------------------------------------------------------------------ bank sync

    async def bank_sync_states(self) -> list[BankSyncState]:
        return [self.bank_sync[b] for b in sorted(self.bank_sync)]

    async def bank_sync_state(self, bank: str) -> BankSyncState | None:
        return self.bank_sync.get(bank)

    async def bank_hashes(self, bank: str) -> list[BankHash]:
        rows = {(r.record, r.kind, r.hash): r for rs in self.bank_rows.get(bank, {}).values() for r in rs}
        return [rows[k] for k in sorted(rows)]

    def _set_bank_checkpoint(self, bank: str, checkpoint: Any) -> None:
        old = self.bank_sync.get(bank) or BankSyncState(bank=bank)
        self.bank_sync[bank] = dataclasses.replace(old, checkpoint=json.loads(json.dumps(checkpoint)))

    async def apply_bank_delta(self, bank: str, records: Sequence[str], rows: Sequence[BankHash],
                               checkpoint: Any) -> None:
        table = self.bank_rows.setdefault(bank, {})
        for key in records:
            table.pop(key, None)
        for r in rows:
            table.setdefault(r.record, []).append(r)
        self._set_bank_checkpoint(bank, checkpoint)

    async def replace_bank(self, bank: str, rows: Sequence[BankHash], checkpoint: Any) -> None:
        self.bank_rows[bank] = {}
        await self.apply_bank_delta(bank, (), rows, checkpoint)

    async def record_bank_sync(self, bank: str, *, error: str | None) -> None:
        now = self.clock()
        old = self.bank_sync.get(bank) or BankSyncState(bank=bank)
        if error is None:
            self.bank_sync[bank] = dataclasses.replace(old, last_attempt=now, last_success=now, last_error=None,
                                                       errors=0)
        else:
            self.bank_sync[bank] = dataclasses.replace(old, last_attempt=now, last_error=error,
                                                       errors=old.errors + 1)

    # ------------------------------------------------------------------ Trust & Safety workflow

    async def fold_notification(self, item_key: str, group_keys: Sequence[str], payload: dict[str, Any],
                                now: float, window: float) -> str | None:
        if item_key in self.digests:
            return self.digests[item_key][0]
        keys = sorted(set(group_keys))
        rows = sorted((self.notify_groups[k] for k in keys if k in self.notify_groups),
                      key=lambda r: (r["first_at"], r["group_key"]))
        by_key = {i.key: i for i in self.outbox.values()}
        for row in rows:
            if row["lead_key"] == item_key:
                return None
            digest = by_key.get(row["digest_key"])
            if row["first_at"] > now - window and (digest is None or digest.state == "pending"):
                self.digests[item_key] = (row["digest_key"], json.loads(json.dumps(payload)))
                self._insert_actions([NewAction(key=row["digest_key"], kind="digest",
                                                payload={"group": row["group_key"], "first_at": row["first_at"]},
                                                not_before=row["first_at"] + window)], now)
                return str(row["digest_key"])
        for key in keys:
            self.notify_groups[key] = {"group_key": key, "lead_key": item_key, "first_at": now,
                                       "digest_key": f"digest:{key}:{int(now)}"}
        return None

    async def digest_entries(self, digest_key: str) -> list[dict[str, Any]]:
        return [dict(p) for k, p in self.digests.values() if k == digest_key]

    async def unscannable_cases(self, state: str | None, limit: int, offset: int = 0) -> list[UnscannableCase]:
        rows = sorted((c for c in self.unscannable.values() if state is None or c.state == state),
                      key=lambda c: (-c.created_at, c.event_id))
        return rows[offset:offset + limit]

    async def unscannable_case(self, event_id: str) -> UnscannableCase | None:
        return self.unscannable.get(event_id)

    async def decide_unscannable(self, event_id: str, state: str, reviewer: str, note: str = "") -> bool:
        case = self.unscannable.get(event_id)
        if case is None:
            return False
        now = self.clock()
        self.unscannable[event_id] = dataclasses.replace(case, state=state, decided_by=reviewer, decided_at=now)
        self._append_audit(now, reviewer, f"unscannable-{state}", case.sha1, case.wiki, case.title, note,
                           {"event_id": event_id, "reason": case.reason})
        return True

    async def record_preservation(self, record: Preservation) -> None:
        key = (record.wiki, record.title, record.sha1)
        old = self.preserved.get(key)
        self.preserved[key] = record if old is None else dataclasses.replace(
            old, filearchive_ids=record.filearchive_ids, suppressed=record.suppressed)

    async def preservation(self, sha1: str) -> list[Preservation]:
        return sorted((p for p in self.preserved.values() if p.sha1 == sha1), key=lambda p: p.removed_at)

    async def case_stats(self) -> CaseStats:
        counts: dict[tuple[str, str], int] = {}
        oldest: float | None = None
        for sha1 in {r["sha1"] for r in self.matches}:
            case = self._case(sha1)
            if case is None or case.state not in ("open", "escalated"):
                continue
            for category in case.categories or ("unknown",):
                counts[("match", category)] = counts.get(("match", category), 0) + 1
            oldest = case.first_seen if oldest is None else min(oldest, case.first_seen)
        for c in self.unscannable.values():
            if c.state == "open":
                counts[("unscannable", c.reason)] = counts.get(("unscannable", c.reason), 0) + 1
                oldest = c.created_at if oldest is None else min(oldest, c.created_at)
        return CaseStats(counts, oldest)

    async def activity(self, since: float) -> dict[str, dict[str, int]]:
        outcomes: dict[str, int] = {}
        for _, outcome, at in self.events.values():
            if at >= since:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        uploads: dict[str, set[tuple[str, str, str]]] = {}
        for r in self.matches:
            if r["created_at"] >= since:
                uploads.setdefault(r["category"], set()).add((r["wiki"], r["title"], r["sha1"]))
        return {"outcomes": outcomes, "categories": {k: len(v) for k, v in uploads.items()}}


def _found(row: dict[str, Any], query: str) -> bool:
    """The free-text search of :class:`~service.store.base.CaseFilter` (as :func:`service.store.review._search`)."""
    q = query.lower()
    return (q in row["title"].lower() or q in (row["uploader"] or "").lower() or row["hash_id"] == query
            or (SEARCH_HEX_RE.match(q) is not None and row["sha1"].startswith(q)))
