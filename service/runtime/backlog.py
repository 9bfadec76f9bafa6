"""The review backlog gauge: a cheap periodic count of the cases still to do, from the review store.

``mediamoderation_review_pending{category}`` is the queue reviewers see as "to do" (open and escalated
cases).  Counted every ``interval`` seconds, and soon after :meth:`ReviewBacklog.kick` (new matches, a
decision), at most once per ``min_gap`` seconds.  It is counted from the store, not from events, so it is
right after a restart and on every replica that shares a PostgreSQL store (dashboards take the ``max``).
A category whose last case was decided drops to 0 instead of keeping its last value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from service.errors import ServiceError
from service.metrics import Metrics

log = logging.getLogger(__name__)

INTERVAL = 30.0
MIN_GAP = 2.0  # a burst of matches or decisions costs one count per MIN_GAP per replica


class PendingCounts(Protocol):
    async def pending_by_category(self) -> dict[str, int]: ...


class ReviewBacklog:
    """Sets ``review_pending`` from ``store`` every ``interval`` seconds until ``stop`` is set."""

    def __init__(self, store: PendingCounts, metrics: Metrics, interval: float = INTERVAL,
                 min_gap: float = MIN_GAP) -> None:
        self.store = store
        self.metrics = metrics
        self.interval = interval
        self.min_gap = min_gap
        self._seen: set[str] = set()
        self._kicked = asyncio.Event()

    def kick(self) -> None:
        """Something changed the queue (a match, a decision): count again soon."""
        self._kicked.set()

    async def refresh(self) -> dict[str, int]:
        counts = await self.store.pending_by_category()
        for category in self._seen - counts.keys():
            self.metrics.review_pending.labels(category).set(0)
        for category, n in counts.items():
            self.metrics.review_pending.labels(category).set(n)
        self._seen |= counts.keys()
        return counts

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._kicked.clear()
            try:
                await self.refresh()
            except ServiceError as exc:  # the store is down: keep the last values, try again next round
                log.warning("counting the review backlog failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):  # a burst of kicks is one count per min_gap
                await asyncio.wait_for(stop.wait(), timeout=self.min_gap)
            await _first(stop, self._kicked, timeout=max(0.0, self.interval - self.min_gap))


async def _first(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of ``events`` is set, at most ``timeout`` seconds."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
