"""Narrow store interfaces.  Each component receives only the protocol it needs.

:class:`service.store.Stores` hands them out one field each; the SQL implementations (one per concern,
for SQLite and PostgreSQL alike) are the ``Sql*`` classes of this package, the in-memory ones
:class:`service.store.memory.MemoryStore`.  All times are Unix seconds (float).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.errors import ServiceError
from service.models import Match, UploadEvent


class StoreError(ServiceError):
    """The store cannot be opened or used (the database is down, locked, corrupt or too new)."""

    retriable = True
    reason = "store"


@dataclass(frozen=True, slots=True)
class ScanRecord:
    """The result of scanning one file content (by SHA-1) against one version of the banks."""

    sha1: str
    outcome: str
    bank_version: str
    scanned_at: float
    pdq: str | None = None
    pdq_quality: int | None = None
    md5: str | None = None
    matches: tuple[Match, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One effect (email, takedown, ...) to perform exactly once, keyed by ``key``."""

    id: int
    key: str
    kind: str
    payload: dict[str, Any]
    attempts: int = 0
    state: str = "pending"  # pending / done / failed (gave up, needs a human)
    next_attempt_at: float = 0.0
    created_at: float = 0.0
    last_error: str | None = None
    result: str | None = None


@dataclass(frozen=True, slots=True)
class NewAction:
    key: str
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    not_before: float = 0.0  # Unix time before which the item is not performed (0: at once)


# States of a remote matcher's scan of one content (see RemoteScan).
REMOTE_CLEAN = "clean"
REMOTE_MATCH = "match"
REMOTE_UNSCANNABLE = "unscannable"
REMOTE_FAILED = "failed"  # retried on the schedule
REMOTE_GONE = "gone"  # the upload to re-fetch it from no longer shows this content
REMOTE_SEEN = "seen"  # not a verdict: only remember ``upload`` as the latest upload of this content


@dataclass(frozen=True, slots=True)
class RemoteScan:
    """What one remote matcher (PhotoDNA) made of one content (SHA-1), and where to fetch it again.

    ``upload`` is the latest upload seen with this content: the rescanner re-fetches it from there and
    reports a later match against it.  For ``failed``, the store counts consecutive failures and sets
    the next attempt ``retry_delays[failures - 1]`` seconds after ``at`` (the last delay repeats).
    """

    sha1: str
    matcher: str
    state: str
    at: float
    upload: UploadEvent | None = None
    error: str | None = None
    retry_delays: tuple[float, ...] = ()

    def transition(
        self, old_failures: int | None, old_clean_at: float | None
    ) -> tuple[int, float | None, float | None]:
        """(failures, next_attempt_at, clean_at) to store, given the stored row's values (None: no row).

        The one rule every store applies: a failure counts up and schedules the next attempt from
        ``retry_delays`` (the last delay repeats); a clean verdict stamps ``clean_at``; anything else
        resets the failures and keeps the last clean time.
        """
        if self.state == REMOTE_FAILED:
            failures = (old_failures or 0) + 1
            next_at = (self.at + self.retry_delays[min(failures, len(self.retry_delays)) - 1]
                       if self.retry_delays else None)
            return failures, next_at, old_clean_at
        return 0, None, self.at if self.state == REMOTE_CLEAN else old_clean_at


@dataclass(frozen=True, slots=True)
class RemoteScanRow:
    sha1: str
    matcher: str
    state: str
    scanned_at: float
    clean_at: float | None
    failures: int
    next_attempt_at: float | None
    upload: UploadEvent | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class FileHashes:
    """The hashes of one scanned upload version (never its media) and what acting on it later needs.

    ``md5`` only when the original was fetched; ``pdq`` (64 hex digits, the image as shown) with its
    quality when the file was decoded, and ``pdq_variants``: the PDQ hashes of the seven rotated and mirrored
    versions of the image as shown (32 bytes each, in :data:`service.media.pdq.DIHEDRAL_VARIANTS` order after
    the first), so that a bank hash of the original finds an upload that was rotated or mirrored.  ``id`` is
    the store's row id (0 before it is stored)."""

    event: UploadEvent
    sha1: str
    md5: str | None = None
    pdq: str | None = None
    pdq_quality: int | None = None
    scanned_at: float = 0.0
    id: int = 0
    pdq_variants: bytes | None = None


# States of a retroactive delta (see RetroDelta).
RETRO_MATCHING = "matching"  # new hashes being matched against the stored file hashes
RETRO_ACTING = "acting"  # hits being recorded and acted on
RETRO_QUARANTINED = "quarantined"  # the flood guard held it: hits in review, nothing else until released
RETRO_DONE = "done"
RETRO_STATES = (RETRO_MATCHING, RETRO_ACTING, RETRO_QUARANTINED, RETRO_DONE)


@dataclass(frozen=True, slots=True)
class RetroDelta:
    """One bank change's added hashes, matched against every stored file hash, with its progress.

    ``entries``: (hash, category, source, id) of each added hash.  ``progress`` counts entries matched
    (state ``matching``) or hits acted on (state ``acting``); ``hits`` are (file id, entry index,
    distance or None) found so far.  Written after each step, so a restart resumes instead of repeating."""

    id: int
    bank: str
    added_at: float
    entries: tuple[tuple[str, str, str, str], ...]
    state: str
    progress: int = 0
    hits: tuple[tuple[int, int, int | None], ...] = ()
    note: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class RetroDeltaStatus:
    """Where a delta stands, without its entries and hits (cheap to poll)."""

    id: int
    bank: str
    state: str
    progress: int
    size: int
    created_at: float


class CheckpointStore(Protocol):
    async def get_checkpoint(self, name: str) -> Any | None: ...
    async def set_checkpoint(self, name: str, value: Any) -> None: ...


class OutcomeLedger(Protocol):
    """Outcomes a later result replaces: an upload's error while a remote matcher could not answer becomes
    the verdict a rescan got for its content."""

    async def supersede_outcomes(self, sha1: str, event_id: str | None, prefix: str, outcome: str) -> list[str]:
        """Give ``outcome`` to every recorded event of content ``sha1`` (and to event ``event_id``, in case it
        was recorded without a SHA-1) whose outcome starts with ``prefix``, in one transaction.  The ledger
        keeps the history: each replaced outcome is appended, with its time, to the event's ``history``.
        Returns the replaced outcomes, one per event changed (none when already settled)."""
        ...


class EventLedger(OutcomeLedger, Protocol):
    """Which events were already handled (de-duplication across reconnects, replays and restarts)."""

    async def event_seen(self, event_id: str) -> bool: ...
    async def record_event(self, event: UploadEvent, outcome: str) -> None: ...
    async def prune_events(self, older_than: float) -> int: ...


class ScanStore(Protocol):
    async def get_scan(self, sha1: str) -> ScanRecord | None: ...
    async def put_scan(self, record: ScanRecord) -> None: ...


class MatchStore(Protocol):
    async def record_matches(
        self, event: UploadEvent, sha1: str, matches: Sequence[Match], actions: Sequence[NewAction]
    ) -> list[OutboxItem]:
        """Store the matches and enqueue the actions in one transaction.

        Returns the outbox items that were newly created; an action whose key already exists is not
        added again (that is what makes replays and restarts safe).
        """
        ...


class Outbox(Protocol):
    async def add_actions(self, actions: Sequence[NewAction]) -> list[OutboxItem]: ...
    async def due_actions(self, kind: str, now: float, limit: int) -> list[OutboxItem]: ...
    async def get_action(self, item_id: int) -> OutboxItem | None: ...
    async def mark_done(self, item_id: int, result: str) -> None: ...
    async def mark_retry(self, item_id: int, error: str, next_attempt_at: float) -> None: ...
    async def mark_failed(self, item_id: int, error: str) -> None: ...
    async def pending_count(self) -> int: ...


class PipelineStore(MatchStore, Protocol):
    """What the pipeline needs: one round trip when an event enters, one when it ends."""

    async def admit(self, event_id: str, sha1: str | None) -> tuple[bool, ScanRecord | None]:
        """(already handled with a non-error outcome?, the scan record of ``sha1`` if any)."""
        ...

    async def finish(
        self, event: UploadEvent, outcome: str, scan: ScanRecord | None, remote: Sequence[RemoteScan] = (),
        actions: Sequence[NewAction] = (),
    ) -> None:
        """Record the outcome, and a new scan result and remote matchers' states when given, atomically.

        An ``unscannable:<reason>`` outcome also opens an unscannable review case (once per event) and
        enqueues ``actions`` (its notification) in the same transaction."""
        ...


class RemoteScanStore(Protocol):
    """Remote matchers' per-content states: what the rescanner retries and re-scans."""

    async def put_remote_scans(self, scans: Sequence[RemoteScan]) -> None: ...
    async def get_remote_scan(self, sha1: str, matcher: str) -> RemoteScanRow | None: ...

    async def due_remote_retries(self, matcher: str, now: float, limit: int) -> list[RemoteScanRow]:
        """Failed scans whose next attempt is due, the longest-waiting first."""
        ...

    async def stale_remote_scans(self, matcher: str, clean_before: float, limit: int) -> list[RemoteScanRow]:
        """Contents found clean before ``clean_before``, the oldest clean verdict first."""
        ...

    async def retry_remote_failures_now(self, matcher: str, now: float) -> int:
        """Make every failed scan due at once (the remote service works again); returns how many."""
        ...


class RescanStore(RemoteScanStore, ScanStore, MatchStore, OutcomeLedger, Protocol):
    """What the rescanner needs."""


class FileHashStore(Protocol):
    """The hashes of every scanned file, for retroactive matching."""

    async def put_file_hashes(self, files: Sequence[FileHashes]) -> None:
        """Insert or refresh (same wiki, title and SHA-1: the latest event wins) in one transaction."""
        ...

    async def count_file_hashes(self) -> int: ...

    async def file_pdqs(self, after_id: int, limit: int) -> list[tuple[int, str, int, bytes | None]]:
        """(id, PDQ hex, quality, variants) of stored files with a PDQ hash and ``id > after_id``, by id."""
        ...

    async def files_by_hash(self, kind: str, values: Sequence[str]) -> list[FileHashes]:
        """Stored files whose ``kind`` (``sha1`` or ``md5``) is one of ``values`` (lower-case hex)."""
        ...

    async def files_by_id(self, ids: Sequence[int]) -> list[FileHashes]: ...


class RetroDeltaStore(Protocol):
    async def add_retro_delta(self, bank: str, added_at: float,
                              entries: Sequence[tuple[str, str, str, str]]) -> int: ...
    async def get_retro_delta(self, delta_id: int) -> RetroDelta | None: ...

    async def list_retro_deltas(self, states: Sequence[str] = ()) -> list[RetroDelta]:
        """Deltas in any of ``states`` (all when empty), oldest first."""
        ...

    async def retro_delta_status(self, states: Sequence[str]) -> list[RetroDeltaStatus]:
        """Where the deltas in any of ``states`` stand, oldest first (no entries or hits read)."""
        ...

    async def update_retro_delta(self, delta_id: int, *, state: str, progress: int,
                                 hits: Sequence[tuple[int, int, int | None]] | None = None,
                                 note: str | None = None) -> None:
        """Move a delta on; ``hits`` and ``note`` are kept when None."""
        ...


class RetroStore(FileHashStore, RetroDeltaStore, MatchStore, Protocol):
    """What the retroactive matcher needs: file hashes, deltas, matches with their actions, and the outbox."""

    async def add_actions(self, actions: Sequence[NewAction]) -> list[OutboxItem]: ...


class BudgetStore(Protocol):
    """Per-period request counters (a paid API's monthly budget) that survive restarts."""

    async def reserve_budget(self, name: str, period: str, want: int, limit: int) -> tuple[int, int]:
        """Add up to ``want`` (never past ``limit``) to the count; return (granted, count after)."""
        ...

    async def release_budget(self, name: str, period: str, count: int) -> None: ...
    async def budget_used(self, name: str, period: str) -> int: ...


class Lifecycle(Protocol):
    """Opening (connect, migrate), closing and the readiness probe of a store."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...


# --------------------------------------------------------------------------- review queue (issue 4)

# Review states of one content (SHA-1).  "open" and "escalated" need a reviewer; "removed" means an
# automatic takedown took it down with nobody having to look at it.
REVIEW_STATES = ("open", "escalated", "confirmed", "removed", "dismissed")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str  # confirm, dismiss, escalate, takedown, login, logout, ...
    sha1: str | None
    wiki: str | None
    title: str | None
    note: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    """A reviewer's decision on one content, written with its audit line, allowlist rows and actions."""

    sha1: str
    state: str  # the case's new state: confirmed / dismissed / escalated
    reviewer: str
    action: str  # the audit action: confirm / dismiss / escalate
    note: str = ""
    allowlist_banks: tuple[str, ...] = ()
    allowlist_pdq: str | None = None  # the content's PDQ (hex), kept with its allowlist rows (near copies)
    actions: tuple[NewAction, ...] = ()
    retry_keys: tuple[str, ...] = ()  # failed outbox items to try again (e.g. a takedown after a fixed right)
    title: str | None = None  # the latest upload's title, for the audit log
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReviewCase:
    """One matched content (SHA-1) and everything the queue shows about it."""

    sha1: str
    first_seen: float
    last_seen: float
    state: str
    categories: tuple[str, ...]
    wikis: tuple[str, ...]
    matchers: tuple[str, ...]
    banks: tuple[str, ...]
    uploads: int
    decided_by: str | None = None
    decided_at: float | None = None


@dataclass(frozen=True, slots=True)
class CaseFilter:
    state: str | None = None  # one of REVIEW_STATES, "todo" (open + escalated) or None (all)
    category: str | None = None
    wiki: str | None = None
    matcher: str | None = None
    # Free text: a title or uploader substring, a SHA-1 (or its first 6+ hex digits) or a bank hash id.
    query: str | None = None
    uploader: str | None = None  # exactly this uploader's uploads


@dataclass(frozen=True, slots=True)
class Claim:
    """A reviewer working on a case until ``expires_at``."""

    sha1: str
    reviewer: str
    claimed_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class AllowlistEntry:
    """One negative-bank row: matches of ``bank`` (``*``: any bank) for this content, or a near copy of its PDQ,
    never alert."""

    sha1: str
    bank: str
    added_by: str
    added_at: float
    note: str = ""
    pdq: str | None = None


ANY_BANK = "*"
SEARCH_HEX_RE = re.compile(r"^[0-9a-f]{6,40}$")  # a search that may be the start of a SHA-1
ROLES = ("reviewer", "admin")


@dataclass(frozen=True, slots=True)
class Reviewer:
    name: str
    password_hash: str
    role: str  # one of ROLES
    disabled_at: float | None
    created_at: float
    updated_at: float

    @property
    def active(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True, slots=True)
class SignIn:
    id: int
    at: float
    name: str
    address: str
    result: str  # ok, bad-password, throttled, disabled


@dataclass(frozen=True, slots=True)
class SignInCounts:
    """Failed sign-ins since a time: for one (name, address) since its last success there, per address, per name."""

    pair: int
    address: int
    name: int


@dataclass(frozen=True, slots=True)
class ReviewSession:
    token_hash: str
    reviewer: str
    csrf: str
    created_at: float
    last_seen: float
    expires_at: float


class AllowlistStore(Protocol):
    async def allowlisted_banks(self, sha1: str) -> frozenset[str]:
        """The banks whose matches of this content a reviewer dismissed as false positives (``*``: all)."""
        ...

    async def allowlist_pdqs(self) -> list[AllowlistEntry]:
        """Every allowlist row that has a PDQ (for the in-process index of near copies)."""
        ...

    async def allowlist_version(self) -> tuple[int, float]:
        """(rows, newest added_at): changes whenever a row is added or removed, so an index knows to reload."""
        ...

    async def content_pdq(self, sha1: str) -> str | None:
        """The PDQ (hex) the scan cache holds for this content, if any."""
        ...


class AuditStore(Protocol):
    async def append_audit(
        self, actor: str, action: str, *, sha1: str | None = None, wiki: str | None = None,
        title: str | None = None, note: str = "", detail: dict[str, Any] | None = None,
    ) -> int: ...

    async def mark_removed(self, sha1: str, at: float) -> None:
        """An automatic takedown removed this content: the case leaves the to-do list."""
        ...


class ReviewerStore(Protocol):
    """Reviewers (managed with the CLI), their sign-ins (audit) and the shared sign-in throttle's counts."""

    async def add_reviewer(self, name: str, password_hash: str, role: str) -> bool:
        """False when the name exists already."""
        ...

    async def get_reviewer(self, name: str) -> Reviewer | None: ...
    async def list_reviewers(self) -> list[Reviewer]: ...

    async def update_reviewer(self, name: str, *, password_hash: str | None = None, role: str | None = None,
                              disabled: bool | None = None) -> bool:
        """Change what is given; False when there is no such reviewer."""
        ...

    async def record_signin(self, name: str, address: str, result: str) -> None: ...

    async def signin_counts(self, name: str, address: str, since: float) -> SignInCounts:
        """Failed sign-ins after ``since``: see :class:`SignInCounts`."""
        ...

    async def list_signins(self, limit: int, before_id: int | None = None) -> list[SignIn]: ...


class ReviewStore(AllowlistStore, AuditStore, Protocol):
    async def record_decision(self, decision: Decision) -> tuple[int, list[OutboxItem]]: ...
    async def list_audit(self, limit: int, before_id: int | None = None,
                         sha1: str | None = None) -> list[AuditEntry]: ...
    async def review_cases(self, filt: CaseFilter, limit: int, offset: int) -> tuple[list[ReviewCase], int]: ...
    async def review_case(self, sha1: str) -> ReviewCase | None: ...
    async def case_matches(self, sha1: str) -> list[dict[str, Any]]: ...
    async def case_actions(self, sha1: str) -> list[OutboxItem]: ...
    async def case_titles(self, sha1s: Sequence[str]) -> dict[str, list[tuple[str, str]]]: ...
    async def filter_values(self) -> dict[str, list[str]]: ...
    async def pending_by_category(self) -> dict[str, int]:
        """Cases still to do (open or escalated) per category; a case of two categories counts in both."""
        ...
    async def create_session(self, session: ReviewSession) -> None: ...
    async def get_session(self, token_hash: str) -> ReviewSession | None: ...
    async def touch_session(self, token_hash: str, now: float) -> None: ...
    async def delete_session(self, token_hash: str) -> None: ...
    async def prune_sessions(self, now: float) -> int: ...
    async def list_allowlist(self, limit: int = 500) -> list[AllowlistEntry]: ...

    async def add_allowlist(self, entry: AllowlistEntry) -> bool:
        """Add a row and its audit line in one transaction; False (and no audit line) when it exists."""
        ...

    async def remove_allowlist(self, sha1: str, bank: str, actor: str, note: str = "") -> bool:
        """Undo: remove a row and write its audit line in one transaction; False when there was none."""
        ...

    async def claim_case(self, sha1: str, reviewer: str, now: float, ttl: float, *, take_over: bool = False) -> Claim:
        """Claim a case for ``ttl`` seconds (renewing one's own claim) unless another reviewer's claim is still
        running and ``take_over`` is false; returns the claim that holds afterwards."""
        ...

    async def case_claims(self, sha1s: Sequence[str], now: float) -> dict[str, Claim]:
        """The running claims of these cases."""
        ...

    async def release_claim(self, sha1: str, reviewer: str) -> None:
        """End ``reviewer``'s claim of the case (another reviewer's claim stays)."""
        ...


@dataclass(frozen=True, slots=True)
class BankHash:
    """One hash of a synced bank, under the upstream record (``record``) it came from."""

    record: str
    kind: str  # sha1, md5, pdq
    hash: str
    category: str
    source: str = ""
    entry_id: str = ""


@dataclass(frozen=True, slots=True)
class BankSyncState:
    """Where a ``url`` or ``exchange`` bank's sync resumes, and how its last syncs went."""

    bank: str
    checkpoint: Any | None = None  # JSON value
    last_success: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    errors: int = 0  # consecutive failed syncs


class BankSyncStore(Protocol):
    """Checkpoints and content of banks filled by syncs (see :mod:`service.exchanges.sync`)."""

    async def bank_sync_states(self) -> list[BankSyncState]: ...
    async def bank_sync_state(self, bank: str) -> BankSyncState | None: ...
    async def bank_hashes(self, bank: str) -> list[BankHash]: ...

    async def apply_bank_delta(self, bank: str, records: Sequence[str], rows: Sequence[BankHash],
                               checkpoint: Any) -> None:
        """In one transaction: drop the rows of ``records`` (updated or deleted upstream), insert ``rows`` (each
        one's record must be in ``records``), store ``checkpoint``."""
        ...

    async def replace_bank(self, bank: str, rows: Sequence[BankHash], checkpoint: Any) -> None:
        """In one transaction: the bank's content becomes ``rows``, its checkpoint ``checkpoint``."""
        ...

    async def record_bank_sync(self, bank: str, *, error: str | None) -> None:
        """A sync ended: ``error`` None is a success (errors reset), else one more consecutive failure."""
        ...


# --------------------------------------------------------------------------- Trust & Safety workflow (issue 13)


@dataclass(frozen=True, slots=True)
class UnscannableCase:
    """An upload that could not be scanned: a review case of its own kind (no preview)."""

    event_id: str
    wiki: str
    title: str
    sha1: str | None
    uploader: str | None
    upload_time: str
    reason: str
    created_at: float
    state: str = "open"  # open / dismissed / confirmed
    decided_by: str | None = None
    decided_at: float | None = None


@dataclass(frozen=True, slots=True)
class Preservation:
    """What the wiki keeps of one removed upload and until when (the deleted-file archive rows)."""

    wiki: str
    title: str
    sha1: str
    filearchive_ids: tuple[int, ...]
    suppressed: bool
    removed_at: float
    preserve_until: float


@dataclass(frozen=True, slots=True)
class CaseStats:
    """Open review cases: counts by (kind, category) and when the oldest unreviewed one was first seen."""

    open_cases: dict[tuple[str, str], int]
    oldest_open: float | None


class NotifyGroupStore(Protocol):
    """Grouped notifications, exactly once across restarts."""

    async def fold_notification(self, item_key: str, group_keys: Sequence[str], payload: dict[str, Any],
                                now: float, window: float) -> str | None:
        """In one transaction: if a group of ``group_keys`` was led by another item less than ``window`` seconds
        ago (and its digest is not sent yet), add this item to the group's digest (once per ``item_key``;
        the digest is an outbox item of kind ``digest`` due when the window ends) and return the digest's key;
        otherwise make this item the groups' lead and return None (send it now).  Asking again for the same
        item gives the same answer."""
        ...

    async def digest_entries(self, digest_key: str) -> list[dict[str, Any]]:
        """The payloads folded into one digest, oldest first."""
        ...


class PreservationStore(Protocol):
    """What the wiki keeps of removed uploads (their deleted-file archive rows) and until when."""

    async def record_preservation(self, record: Preservation) -> None: ...
    async def preservation(self, sha1: str) -> list[Preservation]: ...


class WorkflowStore(NotifyGroupStore, PreservationStore, Protocol):
    """Unscannable cases, preservation records and open-case statistics."""

    async def unscannable_cases(self, state: str | None, limit: int, offset: int = 0) -> list[UnscannableCase]: ...
    async def unscannable_case(self, event_id: str) -> UnscannableCase | None: ...
    async def decide_unscannable(self, event_id: str, state: str, reviewer: str, note: str = "") -> bool: ...
    async def case_stats(self) -> CaseStats: ...

    async def activity(self, since: float) -> dict[str, dict[str, int]]:
        """Since ``since``: uploads by outcome (``outcomes``) and matched uploads by category (``categories``)."""
        ...
