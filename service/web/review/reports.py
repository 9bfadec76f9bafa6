"""Review-queue routes of the Trust & Safety workflow, registered on :class:`~service.web.review.app.ReviewUI`:

* ``GET /review/matches/{sha1}/report.xml`` / ``report.json``: the case's CyberTipline report draft as a
  download (never submitted by the service; no media);
* ``GET /review/unscannable`` and ``POST /review/unscannable/{event_id}/decide``: unscannable uploads, a
  review case kind of its own (reason, file link, uploader; no preview);
* the extra sections of the queue page (unscannable cases waiting) and of a case page (why an automatic
  takedown was refused, preservation state, report draft links).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from service.actions.policy import TakedownPolicy
from service.config import Config
from service.links import page_url
from service.metrics import Metrics
from service.models import Match
from service.reporting import DraftError, draft_for_case, to_json, to_xml
from service.reporting.draft import CHILD_PROTECTION, REPORTABLE_STATES
from service.store.base import ReviewCase, ReviewStore, ScanStore, UnscannableCase, WorkflowStore
from service.web.review import http
from service.web.review.views import BASE, e, iso_when, layout, safe_href, when

log = logging.getLogger(__name__)

UNSCANNABLE_DECISIONS = {"dismiss": "dismissed", "confirm": "confirmed"}


class ReviewHost(Protocol):
    """What the routes need from the review UI: its application and its page extras."""

    app: web.Application
    extras: list[Any]


def _matches(rows: Sequence[Mapping[str, Any]]) -> list[Match]:
    return [Match(matcher=str(r["matcher"]), bank=str(r["bank"]), category=str(r["category"]),
                  hash_id=str(r["hash_id"]), hash_value=str(r["hash_value"]), distance=r.get("distance"))
            for r in rows]


class WorkflowRoutes:
    def __init__(self, cfg: Config, *, review: ReviewStore, scans: ScanStore, workflow: WorkflowStore,
                 metrics: Metrics) -> None:
        self.cfg = cfg
        self.review = review
        self.scans = scans
        self.workflow = workflow
        self.metrics = metrics
        self.policy = TakedownPolicy(cfg.actions.takedown)
    def register(self, host: ReviewHost) -> None:
        r = host.app.router
        r.add_get("/matches/{sha1}/report.{fmt:xml|json}", self.draft)
        r.add_get("/unscannable", self.unscannable)
        r.add_post("/unscannable/{event_id}/decide", self.decide_unscannable)
        host.extras.append(self)

    # ------------------------------------------------------------------ report drafts

    async def draft(self, request: web.Request) -> web.StreamResponse:
        s = http.session(request)
        sha1, fmt = request.match_info["sha1"].lower(), request.match_info["fmt"]
        if len(sha1) != 40 or any(ch not in "0123456789abcdef" for ch in sha1):
            raise web.HTTPNotFound(text="No such case")
        try:
            draft = await draft_for_case(sha1, review=self.review, scans=self.scans, workflow=self.workflow,
                                         cfg=self.cfg, now=time.time())
        except DraftError as exc:
            return web.Response(status=409, text=f"No report draft: {exc}", content_type="text/plain")
        await self.review.append_audit(s.reviewer, "report-draft", sha1=sha1, note=f"downloaded as {fmt}")
        self.metrics.reports_drafted.labels(fmt).inc()
        body = to_xml(draft) if fmt == "xml" else to_json(draft)
        return web.Response(text=body, content_type="application/xml" if fmt == "xml" else "application/json",
                            headers={"Content-Disposition":
                                     f'attachment; filename="cybertipline-draft-{sha1[:12]}.{fmt}"'})

    # ------------------------------------------------------------------ unscannable cases

    def _file_link(self, c: UnscannableCase) -> str:
        wiki = self.cfg.wiki(c.wiki)
        href = safe_href(page_url(wiki, c.title)) if wiki is not None else None
        return f'<a href="{e(href)}" rel="noreferrer">{e(c.title)}</a>' if href else e(c.title)

    def unscannable_table(self, cases: Sequence[UnscannableCase], *, csrf: str | None) -> str:
        if not cases:
            return "<p>No unscannable uploads.</p>"
        head = ("<tr><th>File</th><th>Wiki</th><th>Uploader</th><th>Reason</th><th>Uploaded</th><th>Recorded</th>"
                "<th>State</th>" + ("<th>Decision</th>" if csrf else "") + "</tr>")
        rows = []
        for c in cases:
            decide = ""
            if csrf:
                decide = (f'<td><form method="post" action="{BASE}/unscannable/{e(c.event_id)}/decide">'
                          f'<input type="hidden" name="csrf" value="{e(csrf)}">'
                          '<button name="decision" value="dismiss">Dismiss</button> '
                          '<button name="decision" value="confirm">Checked by hand</button></form></td>'
                          if c.state == "open" else f"<td>{e(c.decided_by or '-')}</td>")
            rows.append(f'<tr class="unscannable"><td>{self._file_link(c)}</td><td>{e(c.wiki)}</td>'
                        f"<td>{e(c.uploader or '(unknown)')}</td><td>{e(c.reason)}</td>"
                        f"<td>{iso_when(c.upload_time)}</td><td>{when(c.created_at)}</td><td>{e(c.state)}</td>"
                        f"{decide}</tr>")
        return f'<table class="unscannable-cases">{head}{"".join(rows)}</table>'

    async def unscannable(self, request: web.Request) -> web.StreamResponse:
        s = http.session(request)
        state = request.query.get("state", "open")
        cases = await self.workflow.unscannable_cases(None if state == "all" else state, 200)
        body = ("<h1>Unscannable uploads</h1><p>Files the service could not scan (corrupt, too large, an "
                "unsupported format). Nothing was matched or removed: open each file page and check it by hand. "
                "There is no preview.</p>"
                f'<p><a href="{BASE}/unscannable?state=open">Open</a> · <a href="{BASE}/unscannable?state=all">'
                "All</a></p>" + self.unscannable_table(cases, csrf=s.csrf))
        return http.html(layout("Unscannable uploads", body, **http.nav(request)))

    async def decide_unscannable(self, request: web.Request) -> web.StreamResponse:
        s = http.session(request)
        form = await request.post()
        state = UNSCANNABLE_DECISIONS.get(str(form.get("decision", "")))
        if state is None:
            raise web.HTTPBadRequest(text="Unknown decision")
        event_id = request.match_info["event_id"]
        if not await self.workflow.decide_unscannable(event_id, state, s.reviewer, str(form.get("note", ""))[:2000]):
            raise web.HTTPNotFound(text="No such case")
        role = "admin" if http.is_admin(request) else "reviewer"
        self.metrics.review_decisions.labels(f"unscannable-{state}", role).inc()
        return http.redirect(f"{BASE}/unscannable")

    # ------------------------------------------------------------------ page extras

    async def queue_html(self) -> str:
        cases = await self.workflow.unscannable_cases("open", 20)
        if not cases:
            return ""
        return ('<section aria-labelledby="unscannable-h"><h2 id="unscannable-h">Unscannable uploads waiting '
                f'({len(cases)}{"+" if len(cases) == 20 else ""})</h2>'
                + self.unscannable_table(cases, csrf=None)
                + f'<p><a href="{BASE}/unscannable">Review unscannable uploads</a></p></section>')

    async def detail_html(self, case: ReviewCase, rows: Sequence[Mapping[str, Any]]) -> str:
        parts: list[str] = []
        verdict = self.policy.decide(_matches(rows)) if self.policy.mode in ("auto", "dry-run") else None
        if verdict is not None and verdict.reason:
            parts.append(f'<p class="notice">Automatic takedown refused by policy: {e(verdict.reason)}. '
                         "A reviewer decides.</p>")
        kept = await self.workflow.preservation(case.sha1)
        if kept:
            items = "".join(
                f"<li>{e(p.wiki)} {e(p.title)}: filearchive id(s) {e(', '.join(map(str, p.filearchive_ids)) or '-')}"
                f"{' (suppressed)' if p.suppressed else ''}; removed {when(p.removed_at)}; keep until "
                f"{when(p.preserve_until)}</li>" for p in kept)
            parts.append(f"<h3>Preservation</h3><ul>{items}</ul>")
        if CHILD_PROTECTION in case.categories and case.state in REPORTABLE_STATES:
            parts.append(f'<h3>Report draft</h3><p>Download the CyberTipline report draft: '
                         f'<a href="{BASE}/matches/{case.sha1}/report.xml">XML</a> · '
                         f'<a href="{BASE}/matches/{case.sha1}/report.json">JSON</a>. '
                         "The service never submits it: complete it and submit it yourself.</p>")
        return f'<section class="workflow">{"".join(parts)}</section>' if parts else ""
