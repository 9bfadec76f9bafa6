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
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from service.actions.notify import review_link
from service.actions.plan import takedown_payload, upload_key
from service.actions.policy import TakedownPolicy
from service.config import Config
from service.errors import FetchError, FileGone, ServiceError, Unscannable
from service.links import page_url
from service.media.download import discard
from service.media.frames import matched_picture
from service.metrics import Metrics
from service.pipeline import Fetcher
from service.store.base import CaseFilter, Decision, NewAction, OutboxItem, ReviewSession, ReviewStore
from service.web.review import preview, views
from service.web.review.auth import Auth, same
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
}
_Key = getattr(web, "RequestKey", None)  # aiohttp >= 3.13; plain string keys before
SESSION_KEY: Any = _Key("review_session", object) if _Key else "review_session"
NEW_TOKEN_KEY: Any = _Key("review_new_token", str) if _Key else "review_new_token"


def _match_dict(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("matcher", "bank", "category", "hash_id", "hash_value", "distance", "source", "details")
    return {k: row.get(k) for k in keys}


class ReviewUI:
    def __init__(
        self,
        cfg: Config,
        *,
        store: ReviewStore,
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
        self.policy = TakedownPolicy(cfg.actions.takedown)
        self.auth = Auth(cfg.review, store, clock, sleep=sleep)
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

    def mount(self, parent: web.Application) -> None:
        parent.router.add_get(BASE, self._to_queue)
        parent.add_subapp(BASE, self.app)

    async def _to_queue(self, request: web.Request) -> web.StreamResponse:
        return _redirect(f"{BASE}/")

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
        proxied = self.auth.proxy_user(request.remote, request.headers.get(header)) if header else None
        if header and proxied is None and header in request.headers \
                and request.remote in self.rcfg.proxy_auth.trusted_proxies:
            session = None  # the proxy names someone who is not a reviewer: its word beats an old cookie
        if proxied is not None and (session is None or session.reviewer != proxied):
            token, session = await self.auth.new_session(proxied)
            request[NEW_TOKEN_KEY] = token
            self.metrics.review_logins.labels("proxy").inc()
            await self.store.append_audit(proxied, "login", note=f"single sign-on ({header})")
        request[SESSION_KEY] = session
        if session is None and not public:
            if request.method == "GET" and "/preview/" not in path:
                return _redirect(f"{BASE}/login?next={quote(request.path_qs, safe='')}")
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

    @staticmethod
    def _session(request: web.Request) -> ReviewSession:
        session = request[SESSION_KEY]
        assert isinstance(session, ReviewSession)
        return session

    # ------------------------------------------------------------------ sign-in

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if request.get(SESSION_KEY) is not None:
            return _redirect(_next(request.query.get("next")))
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
        if result == "throttled":
            return self._login_page(request, next_url, "Too many failed sign-ins from this address. Wait 15 "
                                    "minutes.", 429)
        if result != "ok":
            log.warning("review: failed sign-in for %r from %s", name, address)
            return self._login_page(request, next_url, "Unknown reviewer or wrong password.", 401)
        await self.auth.end_session(request.cookies.get(self.auth.cookie))
        token, _ = await self.auth.new_session(name)
        await self.store.append_audit(name, "login", note=f"from {address}")
        resp = _redirect(next_url)
        self._set_cookie(resp, self.auth.cookie, token, max_age=int(self.rcfg.session_max))
        resp.del_cookie(self.auth.login_cookie, path="/")
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        await self.auth.end_session(request.cookies.get(self.auth.cookie))
        await self.store.append_audit(session.reviewer, "logout")
        resp = _redirect(f"{BASE}/login")
        resp.del_cookie(self.auth.cookie, path="/")
        return resp

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=STATIC[name], content_type=STATIC_TYPES[name],
                            headers={"Cache-Control": "private, max-age=300"})

    # ------------------------------------------------------------------ pages

    async def queue(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        q = request.query
        state = q.get("state", "todo")
        if state not in {k for k, _ in views.STATE_FILTERS}:
            state = "todo"
        filters = {"state": state, "category": q.get("category", ""), "wiki": q.get("wiki", ""),
                   "matcher": q.get("matcher", "")}
        try:
            page = max(1, int(q.get("page", "1")))
        except ValueError:
            page = 1
        size = self.rcfg.page_size
        filt = CaseFilter(state=None if state == "all" else state, category=filters["category"] or None,
                          wiki=filters["wiki"] or None, matcher=filters["matcher"] or None)
        cases, total = await self.store.review_cases(filt, size, (page - 1) * size)
        titles = await self.store.case_titles([c.sha1 for c in cases])
        takedowns = {c.sha1: _takedown_summary(await self.store.case_actions(c.sha1)) for c in cases}
        view = views.QueueView(cases=cases, total=total, page=page, page_size=size, filters=filters,
                               options=await self.store.filter_values(), titles=titles, takedowns=takedowns,
                               mode=self.policy.mode)
        return _html(views.queue_page(view, user=s.reviewer, csrf=s.csrf))

    async def _case(self, request: web.Request) -> tuple[str, Any, list[dict[str, Any]]]:
        sha1 = request.match_info["sha1"].lower()
        if not SHA1_RE.match(sha1):
            raise web.HTTPNotFound(text="No such match")
        case = await self.store.review_case(sha1)
        if case is None:
            raise web.HTTPNotFound(text="No such match")
        return sha1, case, await self.store.case_matches(sha1)

    async def detail(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        sha1, case, rows = await self._case(request)
        items = {i.key: i for i in await self.store.case_actions(sha1)}
        uploads: list[views.Upload] = []
        for row in _uploads(rows):
            wiki, title = row["wiki"], row["title"]
            uploads.append(views.Upload(
                match_id=row["id"], wiki=wiki, title=title, page_url=self._page_url(wiki, title),
                uploader=row["uploader"],
                upload_time=row["upload_time"], log_action=row["log_action"], recorded=row["created_at"],
                takedown=items.get(upload_key("takedown", wiki, title, sha1))
                or items.get(upload_key("dryrun", wiki, title, sha1)),
                email=items.get(upload_key("notify", wiki, title, sha1))))
        try:
            clear = int(request.query.get("clear", ""))
        except ValueError:
            clear = None
        view = views.DetailView(
            case=case, uploads=uploads, matches=rows, audit=await self.store.list_audit(100, sha1=sha1),
            mode=self.policy.mode, escalations=[i for k, i in items.items() if k.startswith("escalate:")],
            nonce=secrets.token_urlsafe(16), clear=clear, flash=FLASH.get(request.query.get("done", "")))
        return _html(views.detail_page(view, user=s.reviewer, csrf=s.csrf))

    def _payload(self, sha1: str, upload: dict[str, Any], rows: Sequence[dict[str, Any]],
                 link: str | None) -> dict[str, Any]:
        return _payload(sha1, upload, rows, link, self._page_url(upload["wiki"], upload["title"]))

    def _page_url(self, wiki_id: str, title: str) -> str | None:
        """The file page from the configuration, never the URL stored with the match (it came from the event)."""
        wiki = self.cfg.wiki(wiki_id)
        return page_url(wiki, title) if wiki is not None else None

    async def audit(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        try:
            before = int(request.query["before"]) if "before" in request.query else None
        except ValueError:
            before = None
        size = 100
        entries = await self.store.list_audit(size + 1, before_id=before)
        more = entries[size - 1].id if len(entries) > size else None
        return _html(views.audit_page(entries[:size], next_before=more, user=s.reviewer, csrf=s.csrf))

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
        link = review_link(self.cfg.actions.notify.review_url, sha1)
        uploads = _uploads(rows)
        flash = choice
        if choice == "confirm":
            kind = self.policy.confirm_kind
            if kind is None:
                return _html(views.message_page("Takedown is off", "actions.takedown.mode is off: nothing can be "
                                                "deleted from here.", user=s.reviewer, csrf=s.csrf), status=409)
            actions = tuple(
                NewAction(key=upload_key(kind, u["wiki"], u["title"], sha1), kind="takedown",
                          payload=takedown_payload(self._payload(sha1, u, rows, link), dry_run=kind == "dryrun",
                                                   requested_by=s.reviewer))
                for u in uploads)
            decision = Decision(sha1=sha1, state="confirmed", reviewer=s.reviewer, action="confirm", note=note,
                                actions=actions, retry_keys=tuple(a.key for a in actions),
                                detail={"uploads": [f"{u['wiki']}:{u['title']}" for u in uploads], "kind": kind})
            flash = "confirm-dry" if kind == "dryrun" else "confirm"
        elif choice == "dismiss":
            decision = Decision(sha1=sha1, state="dismissed", reviewer=s.reviewer, action="dismiss", note=note,
                                allowlist_banks=case.banks, detail={"banks": list(case.banks)})
            items = await self.store.case_actions(sha1)
            if any(i.key.startswith("takedown:") and i.state == "done" for i in items):
                flash = "dismiss-removed"
        elif choice == "escalate":
            latest = uploads[0]
            payload = self._payload(sha1, latest, rows, link)
            payload["recipients"] = list(self.rcfg.escalate_recipients or self.cfg.actions.notify.recipients)
            payload["alert"] = f"ESCALATED by {s.reviewer}" + (f": {note}" if note else "")
            payload["subject_prefix"] = "ESCALATED:"
            payload["done"] = [f"escalated by reviewer {s.reviewer}"]
            decision = Decision(sha1=sha1, state="escalated", reviewer=s.reviewer, action="escalate", note=note,
                                actions=(NewAction(key=f"escalate:{sha1}:{nonce}", kind="notify", payload=payload),))
        else:
            raise web.HTTPBadRequest(text="Unknown decision")
        decision = dataclasses.replace(decision, title=uploads[0]["title"] if uploads else None)
        _, items = await self.store.record_decision(decision)
        self.metrics.review_decisions.labels(choice).inc()
        log.info("review: %s %s %s (%d action(s))", s.reviewer, choice, sha1, len(items))
        self.kick()  # the dispatchers look for the new items; the review backlog gauge is counted again
        return _redirect(f"{BASE}/matches/{sha1}?done={flash}")


# --------------------------------------------------------------------------- helpers


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html")


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


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


def _uploads(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per upload (wiki, title), most recently matched first."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        seen.setdefault((r["wiki"], r["title"]), r)
    return list(seen.values())


def _payload(sha1: str, upload: dict[str, Any], rows: Sequence[dict[str, Any]], link: str | None,
             page: str | None) -> dict[str, Any]:
    """A notification-shaped payload for one upload, from the stored match rows (``page``: from the config)."""
    mine = [r for r in rows if (r["wiki"], r["title"]) == (upload["wiki"], upload["title"])]
    return {
        "wiki": upload["wiki"], "title": upload["title"], "page_url": page,
        "uploader": upload["uploader"], "upload_time": upload["upload_time"], "log_action": upload["log_action"],
        "sha1": sha1, "event_id": upload["event_id"], "matches": [_match_dict(r) for r in mine],
        "categories": sorted({r["category"] for r in mine}), "done": [], "review_url": link,
    }


def _takedown_summary(items: Sequence[OutboxItem]) -> str:
    takedowns = [i for i in items if i.kind == "takedown"]
    if not takedowns:
        return "none"
    failed = sum(i.state == "failed" for i in takedowns)
    pending = sum(i.state == "pending" for i in takedowns)
    done = [i for i in takedowns if i.state == "done"]
    dry = sum(i.key.startswith("dryrun:") for i in done)
    parts = []
    if failed:
        parts.append(f"FAILED {failed}")
    if pending:
        parts.append(f"pending {pending}")
    if len(done) - dry:
        parts.append(f"deleted {len(done) - dry}")
    if dry:
        parts.append(f"dry-run {dry}")
    return ", ".join(parts)
