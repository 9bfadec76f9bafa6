"""Open review cases as metrics, and the optional daily summary email.

:class:`CaseWatch` runs under the service's supervisor: every ``interval`` seconds it sets
``mediamoderation_review_open_cases{kind,category}`` and ``mediamoderation_review_oldest_open_seconds``
from the store and, with ``actions.notify.daily_summary``, makes sure the next summary's outbox item
exists (key ``summary:<date>``, due at ``daily_summary_hour`` UTC: one per day however many replicas
run).  :class:`SummaryNotifier` is the ``summary`` action that renders and sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime

from service.actions.notify import EmailNotifier, clean, folded_subject, message_id
from service.config import NotifySection
from service.errors import ServiceError
from service.metrics import Metrics
from service.store.base import NewAction, Outbox, OutboxItem, WorkflowStore

log = logging.getLogger(__name__)


def next_summary(now: float, hour: int) -> tuple[str, float]:
    """(key, due time) of the next daily summary at ``hour`` UTC after ``now``."""
    at = datetime.fromtimestamp(now, UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
    if at.timestamp() <= now:
        at += timedelta(days=1)
    return f"summary:{at.date().isoformat()}", at.timestamp()


class CaseWatch:
    def __init__(self, store: WorkflowStore, outbox: Outbox, cfg: NotifySection, metrics: Metrics, *,
                 interval: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._outbox = outbox
        self._cfg = cfg
        self._metrics = metrics
        self._interval = interval
        self._clock = clock

    async def round(self) -> None:
        now = self._clock()
        stats = await self._store.case_stats()
        gauge = self._metrics.review_open_cases
        gauge.clear()
        for (kind, category), n in sorted(stats.open_cases.items()):
            gauge.labels(kind, category).set(n)
        self._metrics.review_oldest_open.set(0 if stats.oldest_open is None else max(0.0, now - stats.oldest_open))
        if self._cfg.enabled and self._cfg.daily_summary:
            key, due = next_summary(now, self._cfg.daily_summary_hour)
            await self._outbox.add_actions([NewAction(key=key, kind="summary", payload={"until": due},
                                                      not_before=due)])

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.round()
            except ServiceError as exc:  # the store is down: try again next round
                log.error("case statistics round failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)


class SummaryNotifier:
    """The ``summary`` action: counts by category and outcome in the last day, open cases, the oldest one."""

    name = "summary"

    def __init__(self, email: EmailNotifier, store: WorkflowStore, cfg: NotifySection) -> None:
        self._email = email
        self._store = store
        self._cfg = cfg

    async def perform(self, item: OutboxItem) -> str:
        until = float(item.payload.get("until") or time.time())
        activity = await self._store.activity(until - 86400)
        stats = await self._store.case_stats()
        msg = render_summary(activity, stats.open_cases, stats.oldest_open, until, self._cfg.sender,
                             list(self._cfg.recipients), key=item.key, review_url=self._cfg.review_url)
        return await self._email.deliver(msg, item.key, list(self._cfg.recipients))


def render_summary(activity: dict[str, dict[str, int]], open_cases: dict[tuple[str, str], int],
                   oldest_open: float | None, until: float, sender: str, recipients: list[str], *, key: str,
                   review_url: str | None) -> EmailMessage:
    day = datetime.fromtimestamp(until, UTC)
    lines = [f"mediamoderation daily summary for the 24 hours before {day:%Y-%m-%d %H:%M} UTC.", "",
             "Matched uploads by category:"]
    lines += [f"  {clean(k, 100)}: {n}" for k, n in sorted(activity.get("categories", {}).items())] or ["  none"]
    lines += ["", "Uploads by outcome:"]
    lines += [f"  {clean(k, 100)}: {n}" for k, n in sorted(activity.get("outcomes", {}).items())] or ["  none"]
    lines += ["", f"Open review cases: {sum(open_cases.values())}"]
    lines += [f"  {kind} / {clean(cat, 100)}: {n}" for (kind, cat), n in sorted(open_cases.items())]
    if oldest_open is not None:
        age = max(0.0, until - oldest_open) / 3600
        lines.append(f"Oldest unreviewed case: first seen {datetime.fromtimestamp(oldest_open, UTC):%Y-%m-%d %H:%M}"
                     f" UTC ({age:.1f} hours ago)")
    if review_url:
        lines += ["", f"Review queue: {review_url}"]
    msg = EmailMessage(policy=policy.SMTP)
    msg.set_raw("Subject", folded_subject(f"[mediamoderation] daily summary {day:%Y-%m-%d}: "
                                          f"{sum(open_cases.values())} open case(s)"))
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = format_datetime(day)
    msg["Message-ID"] = message_id(key, sender)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("\n".join(lines) + "\n")
    return msg
