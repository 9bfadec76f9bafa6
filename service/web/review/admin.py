"""Admin pages of the review queue: the allowlist (add, undo), the reviewers and the sign-in log.

Only reviewers with the ``admin`` role (and the deprecated config-file reviewers) reach them; everyone
else gets a 403.  Every change is in the audit log.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from service.config import ReviewSection
from service.negative_bank import pdq_row
from service.store.base import ANY_BANK, AllowlistEntry, ReviewerStore, ReviewStore
from service.web.review import admin_views, http, views
from service.web.review.views import BASE

log = logging.getLogger(__name__)

SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FLASH = {"added": "Added to the allowlist.", "exists": "That content is already on the allowlist for this bank.",
         "undone": "Removed from the allowlist: its matches alert again.", "gone": "That row was already removed."}


def admin_only(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not http.is_admin(request):
            return http.html(views.message_page("Admins only", "This page is for reviewers with the admin role.",
                                                **http.nav(request)), status=403)
        return await handler(request)
    return guarded


class AdminPages:
    def __init__(self, store: ReviewStore, reviewers: ReviewerStore, cfg: ReviewSection, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.reviewers = reviewers
        self.cfg = cfg
        self.clock = clock

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/allowlist", admin_only(self.allowlist))
        r.add_post("/allowlist/add", admin_only(self.allowlist_add))
        r.add_post("/allowlist/undo", admin_only(self.allowlist_undo))
        r.add_get("/reviewers", admin_only(self.reviewer_list))
        r.add_get("/signins", admin_only(self.signins))

    async def allowlist(self, request: web.Request) -> web.StreamResponse:
        entries = await self.store.list_allowlist(1000)
        banks = sorted({*(await self.store.filter_values())["bank"], *(a.bank for a in entries if a.bank != ANY_BANK)})
        return http.html(admin_views.allowlist_page(entries, banks, distance=self.cfg.allowlist_pdq_distance,
                                                    flash=FLASH.get(request.query.get("done", "")),
                                                    **_nav(request)))

    async def allowlist_add(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        me = http.session(request).reviewer
        sha1 = str(form.get("sha1", "")).strip().lower()
        pdq = str(form.get("pdq", "")).strip().lower() or None
        bank = str(form.get("bank", "")).strip()[:200] or ANY_BANK
        note = str(form.get("note", "")).strip()[:2000]
        if not SHA1_RE.match(sha1) or (pdq is not None and pdq_row(pdq) is None) or not note:
            return http.html(views.message_page("Not added", "Give the content's SHA-1 (40 hex digits), optionally "
                                                "its PDQ (64 hex digits), and why.", **http.nav(request)), status=400)
        if pdq is None:
            pdq = await self.store.content_pdq(sha1)
        added = await self.store.add_allowlist(AllowlistEntry(sha1=sha1, bank=bank, added_by=me, added_at=self.clock(),
                                                              note=note, pdq=pdq))
        log.info("review: %s added %s (bank %s) to the allowlist", me, sha1, bank)
        return http.redirect(f"{BASE}/allowlist?{urlencode({'done': 'added' if added else 'exists'})}")

    async def allowlist_undo(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        me = http.session(request).reviewer
        sha1, bank = str(form.get("sha1", "")).lower(), str(form.get("bank", ""))
        removed = await self.store.remove_allowlist(sha1, bank, me, str(form.get("note", "")).strip()[:2000])
        log.info("review: %s removed %s (bank %s) from the allowlist", me, sha1, bank)
        return http.redirect(f"{BASE}/allowlist?{urlencode({'done': 'undone' if removed else 'gone'})}")

    async def reviewer_list(self, request: web.Request) -> web.StreamResponse:
        stored = await self.reviewers.list_reviewers()
        return http.html(admin_views.reviewers_page(stored, self.cfg.reviewers, **_nav(request)))

    async def signins(self, request: web.Request) -> web.StreamResponse:
        try:
            before = int(request.query["before"]) if "before" in request.query else None
        except ValueError:
            before = None
        size = 100
        entries = await self.reviewers.list_signins(size + 1, before)
        more = entries[size - 1].id if len(entries) > size else None
        return http.html(admin_views.signins_page(entries[:size], next_before=more, **_nav(request)))


def _nav(request: web.Request) -> dict[str, str]:
    s = http.session(request)
    return {"user": s.reviewer, "csrf": s.csrf}
