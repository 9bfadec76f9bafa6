"""Email Trust & Safety about a match.

The payload is built once, when the match is recorded (:func:`notification_payload`), and stored in
the outbox; :class:`EmailNotifier` renders and sends it later, as often as needed.  The email carries
the file *page* link and the match details, never the media, its thumbnail or its original URL.
Titles and user names are attacker-controlled: control characters are removed everywhere and the
HTML part escapes everything.  Links are built when the email is rendered, from the configured wiki
and review URL plus the title and SHA-1 (:func:`email_links`): a URL stored in a payload, even one
written by an older version from a forged event, never reaches the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import logging
import os
import re
import ssl
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email import policy
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib

from service.config import NotifySection, WikiSection
from service.errors import NotifyError, PermanentNotifyError
from service.links import page_url as wiki_page_url
from service.media.views import describe_view
from service.metrics import Metrics
from service.models import Match, UploadEvent, where_matched
from service.store.base import OutboxItem

log = logging.getLogger(__name__)

_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------- payload


def review_link(review_url: str | None, sha1: str | None) -> str | None:
    if not review_url:
        return None
    base = review_url.rstrip("/")
    return f"{base}/matches/{sha1}" if sha1 and _SHA1_RE.match(sha1) else base


def email_links(payload: Mapping[str, Any], wikis: Mapping[str, WikiSection],
                review_url: str | None) -> tuple[str | None, str | None]:
    """(file page, review page) for a payload, from the configuration and the payload's wiki, title and SHA-1."""
    wiki = wikis.get(str(payload.get("wiki")))
    title = payload.get("title")
    page = wiki_page_url(wiki, title) if wiki is not None and isinstance(title, str) and title.strip() else None
    if payload.get("kind") == "unscannable":
        return page, f"{review_url.rstrip('/')}/unscannable" if review_url else None
    sha1 = payload.get("sha1")
    return page, review_link(review_url, sha1 if isinstance(sha1, str) else None)


def notification_payload(
    event: UploadEvent, matches: Sequence[Match], *, done: Sequence[str], review_url: str | None
) -> dict[str, Any]:
    """Everything the email needs, JSON-serialisable, stored with the outbox item."""
    return {
        "wiki": event.wiki,
        "title": event.title,
        "page_url": event.page_url,
        "uploader": event.uploader,
        "upload_time": event.upload_time.isoformat(),
        "log_action": event.log_action,
        "sha1": event.sha1,
        "event_id": event.event_id,
        "matches": [m.to_dict() for m in matches],
        "categories": sorted({m.category for m in matches}),
        "done": list(done),
        "review_url": review_link(review_url, event.sha1),
    }


def unscannable_payload(event: UploadEvent, reason: str) -> dict[str, Any]:
    """The notification of an upload that could not be scanned (its review case is opened with it)."""
    return {
        "kind": "unscannable", "reason": reason, "wiki": event.wiki, "title": event.title,
        "uploader": event.uploader, "upload_time": event.upload_time.isoformat(), "log_action": event.log_action,
        "sha1": event.sha1, "event_id": event.event_id, "matches": [], "categories": [],
        "done": [f"could not be scanned: {reason}", "an unscannable review case was opened; nothing was removed"],
    }


def unscannable_key(event: UploadEvent) -> str:
    return f"unscannable:{event.wiki}:{event.title}:{event.sha1 or event.event_id}"


# --------------------------------------------------------------------------- rendering


def clean(value: object, limit: int = 500) -> str:
    """Text safe for a header or a line: no control, format-bidi or line-breaking characters."""
    text = "" if value is None else str(value)
    out = []
    for ch in text:
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(" " if ch in "\r\n\t\u2028\u2029" else "\ufffd")
        else:
            out.append(ch)
    text = re.sub(r" {2,}", " ", "".join(out)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _safe_url(value: object) -> str | None:
    url = clean(value, 2000)
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") and parts.netloc and " " not in url else None


def _e(value: object, limit: int = 500) -> str:
    return html.escape(clean(value, limit), quote=True)


def _link(url: str | None, text: object) -> str:
    if url is None:
        return _e(text)
    return f'<a href="{html.escape(url, quote=True)}">{_e(text)}</a>'


def message_id(key: str, sender: str) -> str:
    """A Message-ID that is the same for every attempt of one outbox item, so duplicates are recognisable."""
    domain = sender.rsplit("@", 1)[1] if "@" in sender else "mediamoderation.invalid"
    domain = re.sub(r"[^A-Za-z0-9.-]", "", domain) or "mediamoderation.invalid"
    return f"<mm-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:40]}@{domain}>"


def _match_rows(matches: Sequence[Mapping[str, Any]]) -> list[list[tuple[str, str]]]:
    rows = []
    for m in matches:
        rows.append([
            ("Matcher", clean(m.get("matcher"))),
            ("Bank", clean(m.get("bank"))),
            ("Category", clean(m.get("category"))),
            ("Match id", clean(m.get("hash_id") or m.get("hash_value"))),
            ("Distance", "exact" if m.get("distance") is None else clean(m.get("distance"))),
            ("Source", clean(m.get("source") or "-")),
            ("Details", _details(m.get("details"))),
        ])
    return rows


def _details(details: object) -> str:
    """The parts of a match's details a reviewer needs in the email (PhotoDNA violations and
    TrackingId for reports; the PDQ view and variant that matched, in words); the rest stays in the store."""
    if not isinstance(details, Mapping):
        return "-"
    parts = []
    violations = details.get("violations")
    if isinstance(violations, list | tuple) and violations:
        parts.append("violations " + ", ".join(clean(v, 20) for v in violations))
    if details.get("tracking_id"):
        parts.append(f"TrackingId {clean(details['tracking_id'], 200)}")
    how = describe_view(details.get("view"))
    if details.get("variant") and details.get("variant") != "original":
        how = f"{how} as {clean(details['variant'], 40)}" if how else f"as {clean(details['variant'], 40)}"
    if how:
        parts.append(f"matched {clean(how, 120)}")
    if details.get("quality") is not None:
        parts.append(f"PDQ quality {clean(details['quality'], 10)}")
    where = where_matched(details)
    if where:
        parts.append(clean(where, 300))
    if details.get("retroactive"):
        parts.append(clean(details["retroactive"], 200))
    return "; ".join(parts) or "-"


def render_email(
    payload: Mapping[str, Any], sender: str, recipients: Sequence[str], *, page_url: str | None,
    review_url: str | None, key: str | None = None, now: datetime | None = None,
) -> EmailMessage:
    """Build the notification: plain text and HTML alternatives, no attachments, no media URLs.

    ``page_url`` and ``review_url`` are the only links (see :func:`email_links`); the payload's own
    ``page_url`` / ``review_url`` are ignored.
    """
    wiki = clean(payload.get("wiki"), 100)
    title = clean(payload.get("title"), 300)
    categories = [clean(c, 100) for c in payload.get("categories") or []]
    category = ", ".join(categories) or "unknown"
    page_url = _safe_url(page_url) if page_url else None
    review = _safe_url(review_url) if review_url else None
    uploader = clean(payload.get("uploader") or "(unknown)", 300)
    matches = list(payload.get("matches") or [])
    done = [clean(d, 300) for d in payload.get("done") or []]
    facts = [
        ("Wiki", wiki),
        ("File", title),
        ("Uploader", uploader),
        ("Upload time", clean(payload.get("upload_time"))),
        ("Action", clean(payload.get("log_action"))),
        ("SHA-1", clean(payload.get("sha1") or "-")),
        ("Event id", clean(payload.get("event_id"))),
    ]
    rows = _match_rows(matches)

    alert = clean(payload.get("alert"), 2000) if payload.get("alert") else None
    unscannable = payload.get("kind") == "unscannable"
    headline = (f"A file on {wiki} could not be scanned ({clean(payload.get('reason'), 100)})." if unscannable
                else f"A file on {wiki} matched {len(matches)} known hash(es) ({category}).")
    text = ([f"*** {alert} ***", ""] if alert else [])
    intro = clean(payload.get("summary"), 2000) if payload.get("summary") else headline
    text += [intro, ""]
    text.append(f"File page: {page_url or '(no valid link)'}")
    text += [f"{k}: {v}" for k, v in facts]
    text += ["", "Matches:"]
    for i, row in enumerate(rows, 1):
        text.append(f"  {i}. " + "; ".join(f"{k.lower()}: {v}" for k, v in row))
    text += ["", "What was done:"] + [f"  - {d}" for d in done or ["nothing yet"]]
    if review:
        text += ["", f"Review: {review}"]
    text += ["", "The media itself is deliberately not included in this message.",
             "Do not forward it outside Trust & Safety.", ""]

    h = ['<!DOCTYPE html><html><body style="font-family:sans-serif">',
         *([f'<p style="color:#a00000"><strong>{_e(alert, 2000)}</strong></p>'] if alert else []),
         f"<p>{_e(intro, 2000)}</p>",
         f"<p>File page: {_link(page_url, title)}</p>",
         "<table>"]
    h += [f"<tr><th align=\"left\">{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts]
    h += ["</table>", "<h3>Matches</h3>", '<table border="1" cellpadding="4" style="border-collapse:collapse">',
          "<tr>" + "".join(f"<th>{_e(k)}</th>" for k, _ in (rows[0] if rows else [])) + "</tr>"]
    h += ["<tr>" + "".join(f"<td>{_e(v)}</td>" for _, v in row) + "</tr>" for row in rows]
    h += ["</table>", "<h3>What was done</h3>", "<ul>"]
    h += [f"<li>{_e(d)}</li>" for d in done or ["nothing yet"]]
    h.append("</ul>")
    if review:
        h.append(f"<p>{_link(review, 'Open the review page')}</p>")
    h += ["<p><small>The media itself is deliberately not included in this message. "
          "Do not forward it outside Trust &amp; Safety.</small></p>", "</body></html>"]

    msg = EmailMessage(policy=policy.SMTP)
    prefix = f"[mediamoderation] {clean(payload.get('subject_prefix'), 60)} " if payload.get("subject_prefix") \
        else "[mediamoderation] "
    what = "unscannable upload" if unscannable else f"{category} match"
    msg.set_raw("Subject", folded_subject(f"{prefix}{what} on {wiki}: {title}"))
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = message_id(key or f"{payload.get('event_id')}:{payload.get('sha1')}", sender)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("\n".join(text))
    msg.add_alternative("\n".join(h) + "\n", subtype="html")
    return msg


def folded_subject(subject: str, *, width: int = 78) -> str:
    """``subject`` encoded and folded for the Subject header, every line within ``width`` characters
    (the first one after ``Subject: ``), to be stored with :meth:`EmailMessage.set_raw`.

    The email package keeps such a value as given.  Left to its own folding, a value a little longer
    than one line can be folded right after ``Subject:``, and readers then see it start with a space.
    Plain ASCII folds at spaces; a value with other characters, with ``=?`` (which readers would take
    for an encoded word), or with a word too long for a line becomes RFC 2047 encoded words, which fold
    anywhere.
    """
    value = ""
    plain = subject.isascii() and "=?" not in subject
    for charset in ("us-ascii", "utf-8") if plain else ("utf-8",):
        value = Header(subject, charset, maxlinelen=width, header_name="Subject").encode(splitchars=" ", linesep="\n")
        lines = value.split("\n")
        if len("Subject: ") + len(lines[0]) <= width and all(len(line) <= width for line in lines[1:]):
            break
    return value


def spool_name(key: str) -> str:
    """A file name for one outbox key: readable prefix plus a hash (same key, same file)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80].strip("._-") or "notification"
    return f"{readable}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:16]}.eml"


# --------------------------------------------------------------------------- the action


class EmailNotifier:
    """The ``notify`` action: SMTP when configured, otherwise .eml files in ``outbox_dir``."""

    name = "notify"

    def __init__(self, config: NotifySection, metrics: Metrics, *, wikis: Sequence[WikiSection],
                 tls_context: ssl.SSLContext | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._wikis = {w.id: w for w in wikis}  # links are built from these, never taken from the payload
        self._tls_context = tls_context  # for a private CA; None means the system's trust store
        self._warned_spool = False

    async def perform(self, item: OutboxItem) -> str:
        cfg = self._config
        try:
            # Per-category routing and escalations name their recipients in the payload.
            recipients = [str(r) for r in item.payload.get("recipients") or cfg.recipients]
            page, review = email_links(item.payload, self._wikis, cfg.review_url)
            msg = render_email(item.payload, cfg.sender, recipients, page_url=page, review_url=review, key=item.key)
        except (TypeError, ValueError, AttributeError) as exc:
            self._metrics.notifications.labels("rejected").inc()
            raise PermanentNotifyError(f"cannot render notification {item.key!r}: {exc}") from exc
        return await self.deliver(msg, item.key, recipients)

    def links(self, payload: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(file page, review page) of a payload, from the configuration (see :func:`email_links`)."""
        return email_links(payload, self._wikis, self._config.review_url)

    async def deliver(self, msg: EmailMessage, key: str, recipients: Sequence[str]) -> str:
        """Send ``msg`` (or spool it without SMTP); ``"sent"`` or ``"spooled"``."""
        if self._config.smtp is None:
            path = await self._spool(msg, key)
            self._metrics.notifications.labels("spooled").inc()
            log.info("notification %s written to %s", msg["Message-ID"], path)
            return "spooled"
        try:
            await self._send(msg, recipients)
        except NotifyError as exc:
            self._metrics.notifications.labels("failed" if exc.retriable else "rejected").inc()
            raise
        self._metrics.notifications.labels("sent").inc()
        return "sent"

    async def _send(self, msg: EmailMessage, recipients: Sequence[str] = ()) -> None:
        smtp = self._config.smtp
        assert smtp is not None
        password: str | None = None
        if smtp.username:
            password = smtp.password.get()
            if not password:
                raise NotifyError(f"SMTP password for {smtp.username!r} is not available from {smtp.password!r}")
        where = f"{smtp.host}:{smtp.port}"
        client = aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            use_tls=smtp.security == "tls",
            start_tls=smtp.security == "starttls",
            tls_context=self._tls_context,
            timeout=smtp.timeout,
        )
        try:
            await client.connect()
            if smtp.username:
                await client.login(smtp.username, password or "")
            refused, _ = await client.send_message(
                msg, sender=self._config.sender, recipients=list(recipients or self._config.recipients)
            )
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit()
        except asyncio.CancelledError:
            # Shutting down: drop the connection at once instead of waiting (up to the timeout) for a
            # QUIT reply from a stuck server.  The item stays pending and is sent after the restart.
            client.close()
            raise
        except aiosmtplib.SMTPRecipientsRefused as exc:
            permanent = bool(exc.recipients) and all(r.code >= 500 for r in exc.recipients)
            detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            raise (PermanentNotifyError if permanent else NotifyError)(
                f"{where} refused every recipient: {detail}") from exc
        except aiosmtplib.SMTPDataError as exc:
            raise (NotifyError if exc.code < 500 else PermanentNotifyError)(
                f"{where} refused the message: {exc.code} {exc.message}") from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            # A credentials problem is fixed by an operator; keep the notification until then.
            log.error("SMTP login as %r at %s refused: %s %s", smtp.username, where, exc.code, exc.message)
            raise NotifyError(f"{where} refused the login: {exc.code}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise NotifyError(f"{where} answered {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise NotifyError(f"cannot send through {where}: {type(exc).__name__}: {exc}") from exc
        finally:
            if client.is_connected:
                client.close()
        if refused:
            self._metrics.notifications.labels("partial").inc()
            log.warning("notification %s: %s refused some recipients: %s", msg["Message-ID"], where,
                        "; ".join(f"{r}: {resp.code} {resp.message}" for r, resp in refused.items()))

    async def _spool(self, msg: EmailMessage, key: str) -> Path:
        if not self._warned_spool:
            self._warned_spool = True
            log.warning("SMTP is not configured: notifications are written as .eml files to %s",
                        self._config.outbox_dir)
        try:
            return await asyncio.to_thread(write_atomically, Path(self._config.outbox_dir) / spool_name(key),
                                           msg.as_bytes(policy=policy.default))
        except OSError as exc:
            raise NotifyError(f"cannot write the notification to {self._config.outbox_dir}: {exc}") from exc


def write_atomically(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".eml")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
