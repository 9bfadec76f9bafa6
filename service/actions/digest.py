"""Grouped notifications: the first match of a known hash (or from an uploader) is emailed at once; further
ones within ``actions.notify.group_window`` seconds go into one digest email sent when the window ends.

:class:`GroupedNotifier` is the ``notify`` action: it asks the store (:meth:`fold_notification`, one
transaction keyed by the item's key) whether the item leads its group (send it now, through
:class:`~service.actions.notify.EmailNotifier`) or joins the group's digest.  :class:`DigestNotifier` is
the ``digest`` action: the digest's outbox item falls due when the window ends and renders every item
folded into it.  Alerts (failed takedowns), escalations and reminders are never grouped.  Exactly once
across restarts: a notification item performed again after a crash gets the same answer from the
store, and each email's Message-ID derives from its outbox key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from service.actions.notify import EmailNotifier, _e, _link, _safe_url, clean, folded_subject, message_id
from service.config import NotifySection
from service.errors import PermanentNotifyError
from service.metrics import Metrics
from service.store.base import NotifyGroupStore, OutboxItem

log = logging.getLogger(__name__)

# Outbox keys of the notifications that may be grouped: matches, unscannable uploads, takedown reports.
GROUPED_PREFIXES = ("notify:", "unscannable:", "report:")


def group_keys(item: OutboxItem, cfg: NotifySection) -> list[str]:
    """The groups one notification belongs to (none: it is always sent on its own)."""
    p = item.payload
    if not item.key.startswith(GROUPED_PREFIXES) or p.get("alert"):
        return []
    wiki = str(p.get("wiki") or "")
    keys: list[str] = []
    if "hash" in cfg.group_by:
        for m in p.get("matches") or []:
            if isinstance(m, Mapping):
                keys.append(f"hash:{m.get('bank')}:{m.get('hash_id') or m.get('hash_value')}")
    if "uploader" in cfg.group_by and p.get("uploader"):
        keys.append(f"uploader:{wiki}:{p['uploader']}")
    if p.get("kind") == "unscannable":
        keys.append(f"unscannable:{wiki}")
    return keys


class GroupedNotifier:
    """The ``notify`` action with grouping in front of :class:`EmailNotifier`."""

    name = "notify"

    def __init__(self, email: EmailNotifier, store: NotifyGroupStore, cfg: NotifySection, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self._email = email
        self._store = store
        self._cfg = cfg
        self._metrics = metrics
        self._clock = clock

    async def perform(self, item: OutboxItem) -> str:
        keys = group_keys(item, self._cfg) if self._cfg.group_window > 0 else []
        if keys:
            digest = await self._store.fold_notification(item.key, keys, item.payload, self._clock(),
                                                         self._cfg.group_window)
            if digest is not None:
                self._metrics.notifications.labels("digested").inc()
                return f"digested into {digest}"
        return await self._email.perform(item)


class DigestNotifier:
    """The ``digest`` action: one email with every notification folded into a group's digest."""

    name = "digest"

    def __init__(self, email: EmailNotifier, store: NotifyGroupStore, cfg: NotifySection) -> None:
        self._email = email
        self._store = store
        self._cfg = cfg

    async def perform(self, item: OutboxItem) -> str:
        entries = await self._store.digest_entries(item.key)
        if not entries:
            return "empty digest: nothing to send"
        recipients: list[str] = []
        for e in entries:
            for r in e.get("recipients") or self._cfg.recipients:
                if str(r) not in recipients:
                    recipients.append(str(r))
        try:
            msg = render_digest(entries, str(item.payload.get("group") or ""), self._cfg.sender, recipients,
                                links=self._email.links, key=item.key)
        except (TypeError, ValueError, AttributeError) as exc:
            raise PermanentNotifyError(f"cannot render digest {item.key!r}: {exc}") from exc
        result = await self._email.deliver(msg, item.key, recipients)
        return f"{result} ({len(entries)} notification(s))"


def describe_group(group: str) -> str:
    kind, _, rest = group.partition(":")
    if kind == "hash":
        return f"known hash {rest}"
    if kind == "uploader":
        wiki, _, user = rest.partition(":")
        return f"uploader {user} on {wiki}"
    if kind == "unscannable":
        return f"unscannable uploads on {rest}"
    return group


def _entry_lines(e: Mapping[str, Any]) -> tuple[str, list[str]]:
    if e.get("kind") == "unscannable":
        head = f"could not be scanned ({clean(e.get('reason'), 100)})"
    else:
        cats = ", ".join(clean(c, 100) for c in e.get("categories") or []) or "unknown"
        matches = e.get("matches") or []
        hits = "; ".join(
            f"{clean(m.get('matcher'))} {clean(m.get('bank'))}/{clean(m.get('hash_id') or m.get('hash_value'))}"
            + ("" if m.get("distance") is None else f" distance {clean(m.get('distance'))}")
            for m in matches if isinstance(m, Mapping))
        head = f"{cats} match: {hits or '-'}"
    details = [f"uploader {clean(e.get('uploader') or '(unknown)', 300)}", f"uploaded {clean(e.get('upload_time'))}",
               f"SHA-1 {clean(e.get('sha1') or '-')}"]
    return head, details + [clean(d, 300) for d in e.get("done") or []]


def render_digest(entries: Sequence[Mapping[str, Any]], group: str, sender: str, recipients: Sequence[str], *,
                  links: Callable[[Mapping[str, Any]], tuple[str | None, str | None]], key: str,
                  now: datetime | None = None) -> EmailMessage:
    """One email listing the grouped notifications: file page and review links only, never media."""
    about = clean(describe_group(group), 300)
    wikis = sorted({clean(e.get("wiki"), 100) for e in entries})
    text = [f"{len(entries)} further notification(s) about {about} since the first email.", ""]
    h = ['<!DOCTYPE html><html><body style="font-family:sans-serif">',
         f"<p>{len(entries)} further notification(s) about <strong>{_e(about)}</strong> since the first email.</p>",
         "<ol>"]
    for i, e in enumerate(entries, 1):
        page, review = links(e)
        page, review = (_safe_url(page) if page else None), (_safe_url(review) if review else None)
        title = clean(e.get("title"), 300)
        head, lines = _entry_lines(e)
        text.append(f"{i}. {title} ({clean(e.get('wiki'), 100)}): {head}")
        text.append(f"   File page: {page or '(no valid link)'}")
        text += [f"   - {line}" for line in lines]
        if review:
            text.append(f"   Review: {review}")
        h.append(f"<li><p>{_link(page, title)} ({_e(e.get('wiki'))}): {_e(head)}</p><ul>"
                 + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>"
                 + (f"<p>{_link(review, 'Open the review page')}</p>" if review else "") + "</li>")
    text += ["", "The media itself is deliberately not included in this message.",
             "Do not forward it outside Trust & Safety.", ""]
    h += ["</ol>", "<p><small>The media itself is deliberately not included in this message. "
          "Do not forward it outside Trust &amp; Safety.</small></p>", "</body></html>"]
    msg = EmailMessage(policy=policy.SMTP)
    msg.set_raw("Subject", folded_subject(
        f"[mediamoderation] digest: {len(entries)} more about {about} on {', '.join(wikis) or '?'}"))
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = message_id(key, sender)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("\n".join(text))
    msg.add_alternative("\n".join(h) + "\n", subtype="html")
    return msg
