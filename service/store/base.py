"""Narrow store interfaces.  Each component receives only the protocol it needs.

SQLite implements all of them today (``service.store.sqlite``); PostgreSQL will implement the same.
All times are Unix seconds (float).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.models import Match, UploadEvent


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


class CheckpointStore(Protocol):
    async def get_checkpoint(self, name: str) -> Any | None: ...
    async def set_checkpoint(self, name: str, value: Any) -> None: ...


class EventLedger(Protocol):
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

    async def finish(self, event: UploadEvent, outcome: str, scan: ScanRecord | None) -> None:
        """Record the outcome, and a new scan result when given, atomically."""
        ...


class Store(CheckpointStore, EventLedger, ScanStore, PipelineStore, Outbox, Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
