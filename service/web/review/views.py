"""HTML for the review queue.  Every value from the wiki, the store or a reviewer goes through ``e()``.

Plain server-rendered pages: they work without JavaScript and without images (the queue has no
images at all; previews have text alternatives); the small script only adds keyboard shortcuts.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from service.media.views import describe_view
from service.models import where_matched
from service.store.base import AuditEntry, Claim, OutboxItem, ReviewCase

BASE = "/review"

STATE_LABELS = {
    "open": "Needs review",
    "escalated": "Escalated",
    "confirmed": "Confirmed",
    "removed": "Removed automatically",
    "dismissed": "Dismissed (false positive)",
}
STATE_FILTERS = (("todo", "To do (needs review + escalated)"), ("open", "Needs review"), ("escalated", "Escalated"),
                 ("confirmed", "Confirmed"), ("removed", "Removed automatically"),
                 ("dismissed", "Dismissed"), ("all", "All"))
MODE_TEXT = {
    "off": "takedown is off: the service never deletes; Confirm is disabled.",
    "review": "review: nothing is removed until a reviewer confirms. Confirm deletes the file on the wiki.",
    "dry-run": "dry-run: Confirm records what would be deleted; nothing is deleted.",
    "auto": "auto: automatic categories are deleted at once; the rest wait here. Confirm deletes the file.",
}


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return f'<time datetime="{dt.isoformat()}">{dt.strftime("%Y-%m-%d %H:%M:%S")} UTC</time>'


def iso_when(text: str | None) -> str:
    if not text:
        return "-"
    try:
        return when(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return e(text)


def safe_href(url: object) -> str | None:
    parts = urlsplit(str(url or ""))
    return str(url) if parts.scheme in ("http", "https") and parts.netloc else None


def badge(state: str) -> str:
    return f'<span class="badge state-{e(state)}">{e(STATE_LABELS.get(state, state))}</span>'


def case_href(sha1: str, kept: Mapping[str, str] | None = None) -> str:
    """A case's page, carrying the queue filters it was opened from (``f``)."""
    return f"{BASE}/matches/{sha1}" + (f"?{urlencode({'f': urlencode(dict(kept))})}" if kept else "")


def hidden(name: str, value: object) -> str:
    return f'<input type="hidden" name="{e(name)}" value="{e(value)}">'


def claim_text(claim: Claim | None, me: str) -> str:
    if claim is None:
        return ""
    who = "you" if claim.reviewer == me else claim.reviewer
    return f'<span class="claim">Claimed by <strong>{e(who)}</strong> until {when(claim.expires_at)}</span>'


def layout(title: str, body: str, *, user: str | None = None, csrf: str | None = None, active: str = "",
           admin: bool = False) -> str:
    nav = ""
    if user is not None:
        links = [("queue", f"{BASE}/", "Queue"), ("audit", f"{BASE}/audit", "Audit log")]
        if admin:
            links += [("allowlist", f"{BASE}/allowlist", "Allowlist"), ("reviewers", f"{BASE}/reviewers", "Reviewers"),
                      ("signins", f"{BASE}/signins", "Sign-ins")]
        current = ' aria-current="page"'
        nav = '<nav aria-label="Main">' + "".join(
            f'<a href="{href}"{current if key == active else ""}>{label}</a>'
            for key, href, label in links) + "</nav>"
        nav += (f'<form class="logout" method="post" action="{BASE}/logout"><span>Signed in as '
                f'<strong>{e(user)}</strong></span><input type="hidden" name="csrf" value="{e(csrf)}">'
                '<button type="submit">Log out</button></form>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{e(title)} · mediamoderation review</title>
<link rel="stylesheet" href="{BASE}/static/review.css">
<script src="{BASE}/static/review.js" defer></script>
</head><body>
<a class="skip" href="#main">Skip to content</a>
<header class="top"><span class="brand">mediamoderation <span>review</span></span>{nav}</header>
<main id="main" tabindex="-1">
{body}
</main>
<footer><p>Keys: <kbd>j</kbd>/<kbd>k</kbd> next/previous · <kbd>Enter</kbd> open · <kbd>u</kbd> unblur/blur
the focused preview · <kbd>n</kbd> note · <kbd>/</kbd> search · <kbd>g</kbd> queue.
Previews are blurred and greyscale until you ask to see them.</p></footer>
</body></html>
"""


def message_page(title: str, text: str, *, user: str | None = None, csrf: str | None = None,
                 admin: bool = False) -> str:
    body = (f'<h1>{e(title)}</h1><p class="notice" role="alert">{e(text)}</p>'
            f'<p><a href="{BASE}/">Back to the queue</a></p>')
    return layout(title, body, user=user, csrf=csrf, admin=admin)


def login_page(*, csrf: str, next_url: str, error: str | None = None, proxy_header: str | None = None) -> str:
    err = f'<p class="notice error" role="alert">{e(error)}</p>' if error else ""
    sso = (f"<p>Single sign-on: a request through the configured proxy ({e(proxy_header)}) signs you in.</p>"
           if proxy_header else "")
    body = f"""<section class="login">
<h1>Sign in to the review queue</h1>
{err}
<form method="post" action="{BASE}/login">
<input type="hidden" name="csrf" value="{e(csrf)}">
<input type="hidden" name="next" value="{e(next_url)}">
<label for="name">Reviewer name</label>
<input id="name" name="name" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" class="primary">Sign in</button>
</form>
{sso}
<p class="small">Trust &amp; Safety staff only. Every decision is recorded in the audit log.</p>
</section>"""
    return layout("Sign in", body)


# --------------------------------------------------------------------------- queue


@dataclass(frozen=True)
class QueueView:
    cases: Sequence[ReviewCase]
    total: int
    page: int
    page_size: int
    filters: Mapping[str, str]
    options: Mapping[str, list[str]]
    titles: Mapping[str, list[tuple[str, str]]]
    takedowns: Mapping[str, str] = field(default_factory=dict)
    mode: str = "review"
    claims: Mapping[str, Claim] = field(default_factory=dict)
    flash: str | None = None
    me: str = ""


def _select(name: str, label: str, current: str, options: Iterable[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{e(v)}"{" selected" if v == current else ""}>{e(t)}</option>' for v, t in options)
    return f'<label>{e(label)} <select name="{e(name)}">{opts}</select></label>'


def queue_page(v: QueueView, *, user: str, csrf: str, admin: bool = False) -> str:
    f = v.filters
    any_opt = [("", "any")]
    filters = (
        f'<form class="filters" method="get" action="{BASE}/" role="search" aria-label="Search and filter the queue">'
        f'<label>Search <input type="search" name="q" value="{e(f.get("q", ""))}" maxlength="200" '
        'placeholder="title, uploader, SHA-1, hash id"></label>'
        + _select("state", "State", f.get("state", "todo"), STATE_FILTERS)
        + _select("category", "Category", f.get("category", ""), any_opt + [(c, c) for c in v.options["category"]])
        + _select("wiki", "Wiki", f.get("wiki", ""), any_opt + [(w, w) for w in v.options["wiki"]])
        + _select("matcher", "Matcher", f.get("matcher", ""), any_opt + [(m, m) for m in v.options["matcher"]])
        + '<button type="submit">Search</button></form>'
    )
    query = {k: val for k, val in f.items() if val}
    kept = {k: val for k, val in query.items() if k != "page"}
    rows = []
    for c in v.cases:
        titles = v.titles.get(c.sha1, [])
        first = titles[0][1] if titles else c.sha1
        more = f' <span class="muted">+{len(titles) - 1} more</span>' if len(titles) > 1 else ""
        rows.append(
            f'<tr><td><input type="checkbox" name="sha1" value="{e(c.sha1)}" form="bulk" '
            f'aria-label="Select {e(first)}"></td><td>{when(c.last_seen)}</td><td>{badge(c.state)} '
            f'{claim_text(v.claims.get(c.sha1), v.me)}</td>'
            f'<td>{e(", ".join(c.categories))}</td>'
            f'<td><a class="case" href="{e(case_href(c.sha1, kept))}">{e(first)}</a>{more}</td>'
            f'<td>{e(", ".join(c.wikis))}</td><td>{e(", ".join(c.matchers))}</td>'
            f'<td>{e(v.takedowns.get(c.sha1, "none"))}</td></tr>')
    table = ("<p class=\"empty\">Nothing here. The queue is empty for these filters.</p>" if not rows else
             '<div class="scroll"><table class="queue"><caption class="sr">Matched files, newest first</caption>'
             '<thead><tr><th scope="col"><span class="sr">Select</span></th>'
             '<th scope="col">Last match</th><th scope="col">State</th><th scope="col">Category</th>'
             '<th scope="col">File</th><th scope="col">Wiki</th><th scope="col">Matcher</th>'
             '<th scope="col">Takedown</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>")
    bulk = "" if not rows else (
        f'<form id="bulk" class="bulk" method="post" action="{BASE}/bulk">{hidden("csrf", csrf)}'
        f'{hidden("f", urlencode(kept))}<span>With the selected cases:</span>'
        '<button type="submit" name="decision" value="confirm">Confirm…</button>'
        '<button type="submit" name="decision" value="dismiss">Dismiss…</button>'
        '<button type="submit" name="decision" value="escalate">Escalate…</button>'
        '<span class="small">You are asked to confirm first.</span></form>')
    pages = []
    if v.page > 1:
        pages.append(f'<a rel="prev" href="{BASE}/?{e(urlencode({**query, "page": v.page - 1}))}">← Newer</a>')
    if v.page * v.page_size < v.total:
        pages.append(f'<a rel="next" href="{BASE}/?{e(urlencode({**query, "page": v.page + 1}))}">Older →</a>')
    start = (v.page - 1) * v.page_size
    count = f"{start + 1}–{start + len(v.cases)} of {v.total}" if v.cases else "0"
    flash = f'<p class="notice" role="status">{e(v.flash)}</p>' if v.flash else ""
    next_link = f'<a class="next" href="{BASE}/next?{e(urlencode({"f": urlencode(kept)}))}">Start reviewing →</a>'
    body = (f'<h1>Review queue</h1>{flash}<p class="mode">Takedown mode: {e(MODE_TEXT.get(v.mode, v.mode))}</p>'
            f'{filters}<p class="count" aria-live="polite">{count} matched file(s) · {next_link}</p>{bulk}{table}'
            f'<nav class="pages" aria-label="Pages">{" ".join(pages)}</nav>')
    return layout("Queue", body, user=user, csrf=csrf, active="queue", admin=admin)


def case_list(cases: Sequence[ReviewCase], titles: Mapping[str, list[tuple[str, str]]],
               held: Mapping[str, Claim] | None = None) -> str:
    items = []
    for c in cases:
        t = titles.get(c.sha1, [])
        name = t[0][1] if t else c.sha1
        claim = held.get(c.sha1) if held else None
        note = f" — <strong>claimed by {e(claim.reviewer)}</strong>" if claim else ""
        items.append(f'<li><a href="{BASE}/matches/{e(c.sha1)}">{e(name)}</a> {badge(c.state)}{note}</li>')
    return "<ul class=\"cases\">" + "".join(items) + "</ul>"


# --------------------------------------------------------------------------- detail


@dataclass(frozen=True)
class Upload:
    match_id: int
    wiki: str
    title: str
    page_url: str | None  # built from the configured wiki and the title (None: the wiki is no longer configured)
    uploader: str | None
    upload_time: str
    log_action: str
    recorded: float
    takedown: OutboxItem | None
    email: OutboxItem | None


@dataclass(frozen=True)
class DetailView:
    case: ReviewCase
    uploads: Sequence[Upload]
    matches: Sequence[Mapping[str, Any]]
    audit: Sequence[AuditEntry]
    mode: str
    escalations: Sequence[OutboxItem]
    nonce: str
    clear: int | None = None  # the upload whose preview shows unblurred (no-JS path)
    flash: str | None = None
    deleted: bool = False  # every upload is deleted on the wiki: nothing left to decide
    claim: Claim | None = None
    me: str = ""
    admin: bool = False
    kept: Mapping[str, str] = field(default_factory=dict)  # the queue filters the case was opened from
    uploaders: Sequence[Uploader] = ()


@dataclass(frozen=True)
class Uploader:
    """An uploader of the content: their other matched uploads, and their block page on each wiki."""

    name: str
    others: Sequence[ReviewCase]
    titles: Mapping[str, list[tuple[str, str]]]
    total: int
    block_links: Sequence[tuple[str, str]]


def _action_status(item: OutboxItem | None, kind: str) -> str:
    if item is None:
        return {"takedown": "No takedown", "email": "No email"}[kind]
    if item.state == "done":
        if kind == "email" and item.result == "spooled":
            return '<span class="pending">Spooled</span> (written to the outbox directory: no SMTP server is set)'
        if kind == "email":
            return f'<span class="ok">Sent</span>{" (" + e(item.result) + ")" if item.result != "sent" else ""}'
        label = "Dry run" if item.key.startswith("dryrun:") else "Done"
        return f'<span class="ok">{e(label)}</span>: {e(item.result)}'
    if item.state == "failed":
        return f'<span class="bad">FAILED</span>: {e(item.last_error)}'
    extra = f" (attempt {item.attempts + 1}; last error: {e(item.last_error)})" if item.last_error else ""
    return f'<span class="pending">Pending</span>{extra}'


def _details(d: Mapping[str, Any]) -> str:
    if not d:
        return "-"
    labels = {"tracking_id": "Tracking id", "violations": "Violations", "source": "Source", "match_id": "Match id",
              "retroactive": "Retroactive", "delta": "Bank delta"}
    parts = []
    where = where_matched(d)  # video offsets, document pages
    if where:
        parts.append(f"<dt>Found in</dt><dd>{e(where)}</dd>")
    how = describe_view(d.get("view"))
    if how:
        parts.append(f"<dt>Matched</dt><dd>{e(how)}</dd>")
    for k, v in d.items():
        text = ", ".join(map(str, v)) if isinstance(v, list) else (json.dumps(v) if isinstance(v, dict) else v)
        parts.append(f"<dt>{e(labels.get(k, k))}</dt><dd>{e(text)}</dd>")
    return f'<dl class="details">{"".join(parts)}</dl>'


def _uploader_section(v: DetailView) -> str:
    parts = []
    for u in v.uploaders:
        blocks = " · ".join(f'<a href="{e(href)}" rel="noreferrer noopener" target="_blank">Block on {e(w)}</a>'
                            for w, url in u.block_links if (href := safe_href(url)))
        others = case_list(u.others, u.titles) if u.others else "<p>No other matched uploads.</p>"
        more = f'<p class="small">{u.total} other matched upload(s) in all.</p>' if u.total > len(u.others) else ""
        parts.append(f'<div class="uploader"><h3>{e(u.name)}</h3><p>{blocks}</p>{others}{more}</div>')
    if not parts:
        return ""
    return ('<section aria-labelledby="uploader-h"><h2 id="uploader-h">Uploader\'s other matched uploads</h2>'
            + "".join(parts) + "</section>")


def detail_page(v: DetailView, *, user: str, csrf: str, admin: bool = False) -> str:
    c = v.case
    kept_qs = urlencode(dict(v.kept))
    next_href = f"{BASE}/next?" + urlencode({"f": kept_qs, "after": c.sha1})
    flash = (f'<p class="notice" role="status">{e(v.flash)} <a class="next" href="{e(next_href)}">Next case →</a>'
             "</p>") if v.flash else ""
    uploads = []
    for u in v.uploads:
        clear = v.clear == u.match_id
        mode = "clear" if clear else "blur"
        src = f"{BASE}/matches/{e(c.sha1)}/preview/{u.match_id}"
        toggle_href = f"{BASE}/matches/{e(c.sha1)}" + ("" if clear else f"?clear={u.match_id}") + f"#u{u.match_id}"
        href = safe_href(u.page_url)
        link = f'<a href="{e(href)}" rel="noreferrer noopener" target="_blank">{e(u.title)}</a>' if href else e(u.title)
        uploads.append(f"""<article class="upload" id="u{u.match_id}">
<figure class="preview {mode}" data-src="{src}">
<img src="{src}?mode={mode}" width="240" alt="{'Unblurred' if clear else 'Blurred greyscale'} preview of {e(u.title)}"
 data-mode="{mode}">
<figcaption><a class="unblur" href="{toggle_href}" data-preview role="button"
 aria-pressed="{'true' if clear else 'false'}">{'Blur again' if clear else 'Unblur'}</a>
<span class="small">{'Shown unblurred' if clear else 'Blurred and greyscale'}</span></figcaption>
</figure>
<div class="facts"><h3>{link}</h3>
<dl>
<dt>Wiki</dt><dd>{e(u.wiki)}</dd>
<dt>Uploader</dt><dd>{e(u.uploader or "(unknown)")}</dd>
<dt>Uploaded</dt><dd>{iso_when(u.upload_time)} ({e(u.log_action)})</dd>
<dt>Matched</dt><dd>{when(u.recorded)}</dd>
<dt>Takedown</dt><dd>{_action_status(u.takedown, "takedown")}</dd>
<dt>Email</dt><dd>{_action_status(u.email, "email")}</dd>
</dl></div></article>""")
    rows = "".join(
        f"<tr><td>{e(m['matcher'])}</td><td>{e(m['bank'])}</td><td>{e(m['category'])}</td>"
        f"<td class=\"mono\">{e(m['hash_id'] or m['hash_value'])}</td>"
        f"<td>{'exact' if m['distance'] is None else e(m['distance'])}</td><td>{e(m['source'] or '-')}</td>"
        f"<td>{_details(m.get('details') or {})}</td><td>{e(m['title'])}</td></tr>" for m in v.matches)
    matches = ('<div class="scroll"><table class="matches"><caption>Every match</caption><thead><tr>'
               '<th scope="col">Matcher</th>'
               '<th scope="col">Bank</th><th scope="col">Category</th><th scope="col">Hash / match id</th>'
               '<th scope="col">Distance</th><th scope="col">Source</th><th scope="col">Details</th>'
               f'<th scope="col">File</th></tr></thead><tbody>{rows}</tbody></table></div>')
    locked = c.state == "escalated" and not v.admin  # an escalated case is decided by an admin
    off = " disabled" if v.deleted else ""
    can_confirm = v.mode != "off" and not v.deleted and not locked
    confirm_label = "Confirm: record dry-run takedown" if v.mode == "dry-run" else "Confirm: take down"
    confirm_note = ""
    if v.deleted:
        confirm_note = ('<p class="notice" role="status">The file was already deleted on the wiki: there is nothing '
                        "left to decide.</p>")
    elif locked:
        confirm_note = '<p class="small">Escalated: an admin confirms or dismisses this case.</p>'
    elif v.mode == "off":
        confirm_note = '<p class="small">Takedown is off (actions.takedown.mode: off).</p>'
    claim = ""
    if v.claim is not None and v.claim.reviewer != v.me:
        claim = (f'<p class="notice claim" role="alert">{claim_text(v.claim, v.me)}. They are probably working on '
                 "it: you will be asked before your decision takes it over.</p>")
    elif v.claim is not None:
        claim = f'<p class="small">{claim_text(v.claim, v.me)}: other reviewers see that you are on it.</p>'
    decided = (f"<p>Last decision: {badge(c.state)} by <strong>{e(c.decided_by)}</strong> at {when(c.decided_at)}</p>"
               if c.decided_by else "<p>No decision yet.</p>")
    decide = f"""<section class="decide" aria-labelledby="decide-h"><h2 id="decide-h">Decision</h2>
{decided}
{claim}
<form method="post" action="{BASE}/matches/{e(c.sha1)}/decide">
<input type="hidden" name="csrf" value="{e(csrf)}">
<input type="hidden" name="nonce" value="{e(v.nonce)}">
{hidden("f", kept_qs)}
<label for="note">Note for the audit log (optional)</label>
<textarea id="note" name="note" rows="2" maxlength="2000"></textarea>
<div class="buttons">
<button type="submit" name="decision" value="confirm" class="danger" {"" if can_confirm else "disabled"}>
{e(confirm_label)}</button>
<button type="submit" name="decision" value="dismiss"{" disabled" if v.deleted or locked else ""}>
Dismiss as false positive</button>
<button type="submit" name="decision" value="escalate"{off}>Escalate</button>
</div>{confirm_note}
<p class="small">Confirm deletes every upload of this content listed above ({len(v.uploads)}).
Dismiss adds the content to the allowlist of {e(", ".join(c.banks))}: the same file, and re-encoded or resized
copies of it, never alert again.
Escalate emails the escalation list.</p>
</form></section>"""
    audit = "".join(f"<li>{when(a.at)} <strong>{e(a.actor)}</strong> {e(a.action)}"
                    f"{(': ' + e(a.note)) if a.note else ''}</li>" for a in v.audit) or "<li>Nothing yet.</li>"
    back = f"{BASE}/?{kept_qs}" if kept_qs else f"{BASE}/"
    body = f"""<p class="crumbs"><a href="{e(back)}">← Queue</a></p>
<h1>{e(v.uploads[0].title if v.uploads else c.sha1)} {badge(c.state)}</h1>
{flash}
<p class="mode">Takedown mode: {e(MODE_TEXT.get(v.mode, v.mode))}</p>
<dl class="summary"><dt>Content SHA-1</dt><dd class="mono">{e(c.sha1)}</dd>
<dt>Categories</dt><dd>{e(", ".join(c.categories))}</dd><dt>First matched</dt><dd>{when(c.first_seen)}</dd>
<dt>Last matched</dt><dd>{when(c.last_seen)}</dd><dt>Uploads</dt><dd>{c.uploads}</dd></dl>
<section aria-labelledby="uploads-h"><h2 id="uploads-h">Uploads of this content</h2>{"".join(uploads)}</section>
<section aria-labelledby="matches-h"><h2 id="matches-h" class="sr">Matches</h2>{matches}</section>
{decide}
{_uploader_section(v)}
<section aria-labelledby="history-h"><h2 id="history-h">History</h2><ul class="history">{audit}</ul></section>"""
    return layout(v.uploads[0].title if v.uploads else "Match", body, user=user, csrf=csrf, admin=admin)


# --------------------------------------------------------------------------- audit log


def audit_page(entries: Sequence[AuditEntry], *, next_before: int | None, user: str, csrf: str,
               admin: bool = False) -> str:
    def subject(a: AuditEntry) -> str:
        if not a.sha1:
            return e(a.title or "-")
        return f'<a href="{BASE}/matches/{e(a.sha1)}">{e(a.title or a.sha1)}</a>'

    rows = "".join(
        f"<tr><td>{when(a.at)}</td><td>{e(a.actor)}</td><td>{e(a.action)}</td><td>{subject(a)}</td>"
        f"<td>{e(a.note) or '-'}</td></tr>" for a in entries)
    table = ('<div class="scroll"><table class="audit"><caption class="sr">Audit log, newest first</caption><thead><tr>'
             '<th scope="col">Time</th><th scope="col">Who</th><th scope="col">What</th><th scope="col">File</th>'
             f'<th scope="col">Note</th></tr></thead><tbody>{rows}</tbody></table></div>') if rows else "<p>Empty.</p>"
    more = f'<p><a rel="next" href="{BASE}/audit?before={next_before}">Older →</a></p>' if next_before else ""
    body = (f"<h1>Audit log</h1><p>Append-only: every decision, takedown, sign-in and unblurred preview, "
            f"newest first.</p>{table}{more}")
    return layout("Audit log", body, user=user, csrf=csrf, active="audit", admin=admin)
