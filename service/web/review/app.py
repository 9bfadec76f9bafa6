"""The review queue's routes, mounted at ``/review`` on the service's own aiohttp server.

Nothing under ``/review`` but the sign-in page and the two static files answers without a session;
every POST carries the session's CSRF token; every response forbids caching, framing and referrers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from aiohttp import web

from service.actions.plan import upload_key
from service.config import Config
from service.errors import FetchError, FileGone, ServiceError, Unscannable
from service.media.download import discard
from service.media.frames import matched_picture
from service.metrics import Metrics
from service.pipeline import Fetcher
from service.store.base import CaseFilter, Claim, ReviewCase, ReviewerStore, ReviewStore
from service.web.review import http, preview, team_views, views
from service.web.review.admin import AdminPages
from service.web.review.auth import Auth, same
from service.web.review.decisions import Decider, Refused, file_deleted, takedown_summary, uploads_of
from service.web.review.http import NEW_TOKEN_KEY, ROLE_KEY, SESSION_KEY
from service.web.review.views import BASE

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
STATIC = {name: (Path(__file__).parent / "static" / name).read_bytes() for name in ("review.css", "review.js")}
STATIC_TYPES = {"review.css": "text/css", "review.js": "text/javascript"}
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
FLASH = {
    "confirm": "Confirmed. The takedown runs now; this page shows its result (reload to update).",
    "confirm-dry": "Confirmed. A dry-run takedown was recorded: nothing will be deleted.",
    "dismiss": "Dismissed as a false positive: the content is on the bank allowlist and will not alert again.",
    "dismiss-removed": "Dismissed as a false positive: the content is on the bank allowlist. It was already "
                       "deleted on the wiki: restore it there (Special:Undelete) if that was wrong.",
    "escalate": "Escalated: the escalation list is being emailed.",
    "bulk": "Done: the decision was recorded for the selected cases.",
    "none-left": "No more cases to review for these filters.",
}
FILTER_KEYS = ("state", "category", "wiki", "matcher", "q")
BULK_MAX = 200


class ReviewUI:
    def __init__(
        self,
        cfg: Config,
        *,
        store: ReviewStore,
        reviewers: ReviewerStore,
        fetcher: Fetcher,
        metrics: Metrics,
        kick: Callable[[], None],
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.cfg = cfg
        self.rcfg = cfg.review
        self.store = store
        self.fetcher = fetcher
        self.metrics = metrics
        self.kick = kick
        self.clock = clock
        self.decider = Decider(cfg, store)
        self.policy = self.decider.policy
        self.extras: list[Any] = []  # extra page sections (service.web.review.reports.WorkflowRoutes)
        self.auth = Auth(cfg.review, store, clock, reviewers=reviewers, sleep=sleep)
        self.app = web.Application(middlewares=[self._headers, self._guard], client_max_size=64 * 1024)
        r = self.app.router
        r.add_get("/", self.queue)
        r.add_get("/audit", self.audit)
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/static/{name}", self.static)
        r.add_get("/matches/{sha1}", self.detail)
        r.add_get("/matches/{sha1}/preview/{match_id:\\d+}", self.preview)
        r.add_post("/matches/{sha1}/decide", self.decide)
        r.add_post("/bulk", self.bulk)
        r.add_get("/next", self.next_case)
        self.admin = AdminPages(store, reviewers, cfg.review, clock=clock)
        self.admin.add_routes(r)

    def mount(self, parent: web.Application) -> None:
        parent.router.add_get(BASE, self._to_queue)
        parent.add_subapp(BASE, self.app)

    async def _to_queue(self, request: web.Request) -> web.StreamResponse:
        return http.redirect(f"{BASE}/")

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            resp = web.Response(status=exc.status, text=exc.text or exc.reason, content_type="text/plain")
        h = resp.headers
        h.setdefault("Content-Security-Policy", CSP)
        h["X-Content-Type-Options"] = "nosniff"
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "no-referrer"
        h.setdefault("Cache-Control", "no-store")
        token = request.get(NEW_TOKEN_KEY)
        if token:
            self._set_cookie(resp, self.auth.cookie, token, max_age=int(self.rcfg.session_max))
        return resp

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        public = path == f"{BASE}/login" or path.startswith(f"{BASE}/static/")
        session = await self.auth.session(request.cookies.get(self.auth.cookie))
        header = self.rcfg.proxy_auth.header
        proxied = await self.auth.proxy_user(request.remote, request.headers.get(header)) if header else None
        if header and proxied is None and header in request.headers \
                and request.remote in self.rcfg.proxy_auth.trusted_proxies:
            session = None  # the proxy names someone who is not a reviewer: its word beats an old cookie
        if proxied is not None and (session is None or session.reviewer != proxied):
            token, session = await self.auth.new_session(proxied)
            request[NEW_TOKEN_KEY] = token
            self.metrics.review_logins.labels("proxy").inc()
            await self.store.append_audit(proxied, "login", note=f"single sign-on ({header})")
        request[SESSION_KEY] = session
        role = await self.auth.role(session.reviewer) if session is not None else None
        request[ROLE_KEY] = role or "reviewer"
        if session is None and not public:
            if request.method == "GET" and "/preview/" not in path:
                return http.redirect(f"{BASE}/login?next={quote(request.path_qs, safe='')}")
            return web.Response(status=401 if request.method == "GET" else 403, content_type="text/plain",
                                text="Sign in first: /review/login")
        if request.method == "POST" and path != f"{BASE}/login":
            form = await request.post()
            assert session is not None
            if not same(str(form.get("csrf", "")), session.csrf):
                log.warning("review: POST %s without a valid CSRF token refused (reviewer %s)", path,
                            session.reviewer)
                return web.Response(status=403, content_type="text/html", text=views.message_page(
                    "Request refused", "The form's security token is missing or out of date. Reload the page "
                    "and try again.", user=session.reviewer, csrf=session.csrf))
        return await handler(request)

    def _set_cookie(self, resp: web.StreamResponse, name: str, value: str, *, max_age: int,
                    samesite: str = "Lax") -> None:
        resp.set_cookie(name, value, max_age=max_age, path="/", secure=self.rcfg.secure_cookies, httponly=True,
                        samesite=samesite)

    _session = staticmethod(http.session)
    _nav = staticmethod(http.nav)

    # ------------------------------------------------------------------ sign-in

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if request.get(SESSION_KEY) is not None:
            return http.redirect(_next(request.query.get("next")))
        return self._login_page(request, _next(request.query.get("next")))

    def _login_page(self, request: web.Request, next_url: str, error: str | None = None,
                    status: int = 200) -> web.Response:
        nonce = secrets.token_urlsafe(24)
        resp = web.Response(status=status, content_type="text/html", text=views.login_page(
            csrf=nonce, next_url=next_url, error=error, proxy_header=self.rcfg.proxy_auth.header))
        self._set_cookie(resp, self.auth.login_cookie, nonce, max_age=3600, samesite="Strict")
        return resp

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        next_url = _next(str(form.get("next", "")))
        if not same(str(form.get("csrf", "")), request.cookies.get(self.auth.login_cookie)):
            return self._login_page(request, next_url, "The sign-in form expired. Please try again.", 403)
        name = str(form.get("name", "")).strip()[:200]
        password = str(form.get("password", ""))[:1000]
        address = self.auth.client_address(request.remote, request.headers)
        result = await self.auth.sign_in(name, password, address)
        self.metrics.review_logins.labels(result).inc()
        if result != "ok":
            self.metrics.review_signin_failures.labels(result).inc()
        if result == "throttled":
            return self._login_page(request, next_url, "Too many failed sign-ins from this address. Wait 15 "
                                    "minutes.", 429)
        if result != "ok":
            log.warning("review: failed sign-in for %r from %s", name, address)
            return self._login_page(request, next_url, "Unknown reviewer or wrong password.", 401)
        await self.auth.end_session(request.cookies.get(self.auth.cookie))
        token, _ = await self.auth.new_session(name)
        await self.store.append_audit(name, "login", note=f"from {address}")
        resp = http.redirect(next_url)
        self._set_cookie(resp, self.auth.cookie, token, max_age=int(self.rcfg.session_max))
        resp.del_cookie(self.auth.login_cookie, path="/")
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        await self.auth.end_session(request.cookies.get(self.auth.cookie))
        await self.store.append_audit(session.reviewer, "logout")
        resp = http.redirect(f"{BASE}/login")
        resp.del_cookie(self.auth.cookie, path="/")
        return resp

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=STATIC[name], content_type=STATIC_TYPES[name],
                            headers={"Cache-Control": "private, max-age=300"})

    # ------------------------------------------------------------------ pages

    def _filters(self, query: Any) -> tuple[dict[str, str], CaseFilter]:
        """The queue's filters from a query (kept across pages, cases and decisions) and the store's filter."""
        state = str(query.get("state", "todo"))
        if state not in {k for k, _ in views.STATE_FILTERS}:
            state = "todo"
        filters = {"state": state, **{k: str(query.get(k, "")).strip()[:200] for k in FILTER_KEYS if k != "state"}}
        filt = CaseFilter(state=None if state == "all" else state, category=filters["category"] or None,
                          wiki=filters["wiki"] or None, matcher=filters["matcher"] or None,
                          query=filters["q"] or None)
        return filters, filt

    @staticmethod
    def _kept(request: web.Request, form: Any = None) -> dict[str, str]:
        """The queue filters a page came from (``f``: their query string), to go back to and to find the next case."""
        raw = str((form if form is not None else request.query).get("f", ""))[:1000]
        return {k: v for k, v in parse_qsl(raw) if k in FILTER_KEYS and v}

    async def queue(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        filters, filt = self._filters(q)
        try:
            page = max(1, int(q.get("page", "1")))
        except ValueError:
            page = 1
        size = self.rcfg.page_size
        cases, total = await self.store.review_cases(filt, size, (page - 1) * size)
        sha1s = [c.sha1 for c in cases]
        titles = await self.store.case_titles(sha1s)
        takedowns = {c.sha1: takedown_summary(await self.store.case_actions(c.sha1)) for c in cases}
        view = views.QueueView(cases=cases, total=total, page=page, page_size=size, filters=filters,
                               options=await self.store.filter_values(), titles=titles, takedowns=takedowns,
                               mode=self.policy.mode, claims=await self.store.case_claims(sha1s, self.clock()),
                               flash=FLASH.get(q.get("done", "")), me=self._session(request).reviewer)
        extra = "".join([await x.queue_html() for x in self.extras])
        return http.html(views.queue_page(view, **self._nav(request)).replace("</main>", extra + "</main>", 1))

    async def _case(self, request: web.Request) -> tuple[str, ReviewCase, list[dict[str, Any]]]:
        return await self._case_of(request.match_info["sha1"])

    async def _case_of(self, value: str) -> tuple[str, ReviewCase, list[dict[str, Any]]]:
        sha1 = value.lower()
        if not SHA1_RE.match(sha1):
            raise web.HTTPNotFound(text="No such match")
        case = await self.store.review_case(sha1)
        if case is None:
            raise web.HTTPNotFound(text="No such match")
        return sha1, case, await self.store.case_matches(sha1)

    async def detail(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        sha1, case, rows = await self._case(request)
        all_items = await self.store.case_actions(sha1)
        items = {i.key: i for i in all_items}
        upload_rows = uploads_of(rows)
        uploads: list[views.Upload] = []
        for row in upload_rows:
            wiki, title = row["wiki"], row["title"]
            uploads.append(views.Upload(
                match_id=row["id"], wiki=wiki, title=title, page_url=self.decider.page_url(wiki, title),
                uploader=row["uploader"],
                upload_time=row["upload_time"], log_action=row["log_action"], recorded=row["created_at"],
                takedown=items.get(upload_key("takedown", wiki, title, sha1))
                or items.get(upload_key("dryrun", wiki, title, sha1)),
                email=items.get(upload_key("notify", wiki, title, sha1))))
        try:
            clear = int(request.query.get("clear", ""))
        except ValueError:
            clear = None
        deleted = file_deleted(case, upload_rows, all_items)
        claim: Claim | None = None
        if case.state in ("open", "escalated") and not deleted:  # opening a case to do claims it
            claim = await self.store.claim_case(sha1, s.reviewer, self.clock(), self.rcfg.claim_ttl)
        kept = self._kept(request)
        view = views.DetailView(
            case=case, uploads=uploads, matches=rows, audit=await self.store.list_audit(100, sha1=sha1),
            mode=self.policy.mode, escalations=[i for k, i in items.items() if k.startswith("escalate:")],
            nonce=secrets.token_urlsafe(16), clear=clear, flash=FLASH.get(request.query.get("done", "")),
            deleted=deleted, claim=claim, me=s.reviewer, admin=request[ROLE_KEY] == "admin", kept=kept,
            uploaders=await self._uploaders(sha1, rows))
        extra = "".join([await x.detail_html(case, rows) for x in self.extras])
        return http.html(views.detail_page(view, **self._nav(request)).replace("</main>", extra + "</main>", 1))

    async def _uploaders(self, sha1: str, rows: Sequence[dict[str, Any]]) -> list[views.Uploader]:
        """Each uploader of the content: their other matched uploads with their outcomes, and block links."""
        out = []
        names = dict.fromkeys(r["uploader"] for r in rows if r["uploader"])
        for name in list(names)[:5]:
            cases, total = await self.store.review_cases(CaseFilter(uploader=name), 21, 0)
            others = [c for c in cases if c.sha1 != sha1][:20]
            titles = await self.store.case_titles([c.sha1 for c in others])
            wikis = sorted({r["wiki"] for r in rows if r["uploader"] == name})
            blocks = [(w, url) for w in wikis if (url := self.decider.page_url(w, f"Special:Block/{name}"))]
            out.append(views.Uploader(name=name, others=others, titles=titles, total=max(0, total - 1),
                                      block_links=blocks))
        return out

    async def audit(self, request: web.Request) -> web.StreamResponse:
        try:
            before = int(request.query["before"]) if "before" in request.query else None
        except ValueError:
            before = None
        size = 100
        entries = await self.store.list_audit(size + 1, before_id=before)
        more = entries[size - 1].id if len(entries) > size else None
        return http.html(views.audit_page(entries[:size], next_before=more, **self._nav(request)))

    async def next_case(self, request: web.Request) -> web.StreamResponse:
        """The first case to do under the kept filters that nobody else holds (``after``: the one just decided)."""
        s = self._session(request)
        kept = self._kept(request)
        _, filt = self._filters(kept)
        after = request.query.get("after", "")
        cases, _ = await self.store.review_cases(filt, 100, 0)
        claims = await self.store.case_claims([c.sha1 for c in cases], self.clock())
        for c in cases:
            holder = claims.get(c.sha1)
            free = holder is None or holder.reviewer == s.reviewer
            if c.sha1 != after and c.state in ("open", "escalated") and free:
                return http.redirect(views.case_href(c.sha1, kept))
        return http.redirect(f"{BASE}/?{urlencode({**kept, 'done': 'none-left'})}")

    # ------------------------------------------------------------------ preview

    async def preview(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        sha1, _case, rows = await self._case(request)
        match_id = int(request.match_info["match_id"])
        row = next((r for r in rows if r["id"] == match_id), None)
        mode = request.query.get("mode", "blur")
        if row is None or mode not in preview.MODES:
            raise web.HTTPNotFound(text="No such preview")
        wiki = self.cfg.wiki(row["wiki"])
        if wiki is None:
            return _placeholder("Wiki not configured")
        try:
            fetched = await self.fetcher.fetch(wiki, row["title"])
        except FileGone:
            self.metrics.review_previews.labels(mode, "gone").inc()
            return _placeholder("File deleted: no preview")
        except (FetchError, Unscannable, ServiceError) as exc:
            log.info("review: preview of %s failed: %s", row["title"], exc)
            self.metrics.review_previews.labels(mode, "error").inc()
            return _placeholder("Preview unavailable")
        if fetched.info.sha1 and fetched.info.sha1 != sha1:
            self.metrics.review_previews.labels(mode, "changed").inc()
            discard(fetched)
            return _placeholder("Current version is other content")
        try:
            # A video, animation or document: the matched frame or page, blurred and greyed like an image.
            picture = await asyncio.to_thread(matched_picture, fetched, row.get("details") or {})
            data = await asyncio.to_thread(preview.render, picture, mode, blur_radius=self.rcfg.blur_radius,
                                           max_pixels=self.cfg.thumbnail.max_pixels)
        except Unscannable:
            self.metrics.review_previews.labels(mode, "error").inc()
            return _placeholder("Preview unavailable")
        finally:
            discard(fetched)
        self.metrics.review_previews.labels(mode, "ok").inc()
        if mode != "blur":
            await self.store.append_audit(s.reviewer, "preview-unblurred", sha1=sha1, wiki=row["wiki"],
                                          title=row["title"], detail={"mode": mode})
        return web.Response(body=data, content_type="image/jpeg",
                            headers={"Cache-Control": "no-store, private", "Content-Disposition": "inline"})

    # ------------------------------------------------------------------ decisions

    async def decide(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        sha1, case, rows = await self._case(request)
        form = await request.post()
        choice = str(form.get("decision", ""))
        note = str(form.get("note", "")).strip()[:2000]
        nonce = re.sub(r"[^A-Za-z0-9_-]", "", str(form.get("nonce", "")))[:64] or secrets.token_urlsafe(16)
        kept = self._kept(request, form)
        nav = self._nav(request)
        holder = (await self.store.case_claims([sha1], self.clock())).get(sha1)
        if holder is not None and holder.reviewer != s.reviewer and form.get("take_over") != "1":
            return http.html(team_views.take_over_page([(case, holder)], action=f"{BASE}/matches/{sha1}/decide",
                                              fields={"decision": choice, "note": note, "nonce": nonce,
                                                      "f": urlencode(kept)}, **nav), status=409)
        try:
            decision, flash = await self.decider.decide(case, rows, choice, reviewer=s.reviewer,
                                                        role=request[ROLE_KEY], note=note, nonce=nonce)
        except Refused as exc:
            return http.html(views.message_page(exc.title, exc.text, **nav), status=exc.status)
        await self._record(decision, request)
        done = {"done": flash, **({"f": urlencode(kept)} if kept else {})}
        return http.redirect(f"{BASE}/matches/{sha1}?{urlencode(done)}")

    async def _record(self, decision: Any, request: web.Request) -> None:
        _, items = await self.store.record_decision(decision)
        self.metrics.review_decisions.labels(decision.action, request[ROLE_KEY]).inc()
        log.info("review: %s %s %s (%d action(s))", decision.reviewer, decision.action, decision.sha1, len(items))
        self.kick()  # the dispatchers look for the new items; the review backlog gauge is counted again

    async def bulk(self, request: web.Request) -> web.StreamResponse:
        """Confirm, Dismiss or Escalate many cases: a confirmation page first (naming cases others hold), then each
        case exactly as from its own page."""
        s = self._session(request)
        form = await request.post()
        choice = str(form.get("decision", ""))
        note = str(form.get("note", "")).strip()[:2000]
        kept = self._kept(request, form)
        nav = self._nav(request)
        sha1s = list(dict.fromkeys(str(v).lower() for v in form.getall("sha1", [])))[:BULK_MAX]
        if choice not in ("confirm", "dismiss", "escalate") or not sha1s:
            return http.html(views.message_page("Nothing to do", "Select one or more cases and a decision.", **nav),
                         status=400)
        cases = [await self._case_of(sha1) for sha1 in sha1s]
        claims = await self.store.case_claims(sha1s, self.clock())
        if form.get("confirmed") != "1":
            held = {c: claims[c] for c in sha1s if c in claims and claims[c].reviewer != s.reviewer}
            titles = await self.store.case_titles(sha1s)
            return http.html(team_views.bulk_confirm_page([c for _, c, _ in cases], choice, note=note, titles=titles,
                                                 held=held, kept=kept, mode=self.policy.mode, **nav))
        done, refused = 0, []
        for sha1, case, rows in cases:
            try:
                decision, _ = await self.decider.decide(case, rows, choice, reviewer=s.reviewer, role=request[ROLE_KEY],
                                                        note=note, nonce=secrets.token_urlsafe(16))
            except Refused as exc:
                refused.append(f"{sha1[:12]}: {exc.title}")
                continue
            await self._record(dataclasses.replace(decision, detail={**decision.detail, "bulk": len(cases)}), request)
            done += 1
        if refused:
            title = f"{done} case(s) done, {len(refused)} refused"
            return http.html(views.message_page(title, "; ".join(refused), **nav), status=409)
        return http.redirect(f"{BASE}/?{urlencode({**kept, 'done': 'bulk'})}")


# --------------------------------------------------------------------------- helpers


def _placeholder(text: str) -> web.Response:
    return web.Response(body=preview.placeholder(text), content_type="image/svg+xml",
                        headers={"Cache-Control": "no-store, private"})


def _next(value: str | None) -> str:
    """Where to go after signing in: only a path inside the review UI, never an open redirect.

    Control or space characters (a header-splitting ``%0D%0A``, raw or encoded) are a 400; anything else that is not a
    plain path under /review/ (absolute URLs, ``//host``, backslashes, dot segments) becomes /review/.
    """
    if not value:
        return f"{BASE}/"
    decoded = unquote(value)
    if len(value) > 2000 or any(unicodedata.category(c)[0] in "CZ" for c in value) \
            or any(unicodedata.category(c)[0] == "C" for c in decoded):
        raise web.HTTPBadRequest(text="Bad 'next' parameter")  # also when percent-encoded once more
    parts = urlsplit(value)
    segments = unquote(parts.path).split("/")
    if parts.scheme or parts.netloc or not value.startswith(f"{BASE}/") or "\\" in decoded \
            or "." in segments or ".." in segments:
        return f"{BASE}/"
    return quote(value, safe="/?&=%:@!$'()*+,;-._~")  # stays ASCII in the Location header
