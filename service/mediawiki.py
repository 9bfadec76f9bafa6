"""An authenticated MediaWiki Action API client for takedowns: login, tokens, delete, suppression.

* Bot password (``action=login`` with ``User@Bot``) or OAuth 2 owner-only access token
  (``Authorization: Bearer``); cookies kept in a per-wiki jar either way.
* Every write carries a CSRF token; on ``badtoken`` the token is fetched again and the call repeated
  once.  A lost session (``assertuserfailed``, ``notloggedin``) logs in again once.
* Requests to one wiki are serial and carry ``maxlag``; a ``maxlag`` answer waits ``Retry-After``
  (at least ``maxlag_min_wait``) and tries again a bounded number of times.
* Only the wiki's API URL is ever contacted (no redirects are followed).

Errors are :class:`WikiApiError` with ``code`` (MediaWiki's error code), ``retriable`` and ``permission``
(the account lacks a right or a grant: a human must fix it, retrying will not help).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from service.backoff import parse_retry_after
from service.config import WikiAuthSection, WikiSection
from service.errors import ServiceError
from service.metrics import Metrics

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

PERMISSION_CODES = frozenset({
    "permissiondenied", "badaccess-groups", "writeapidenied", "readapidenied", "protectedpage",
    "cascadeprotected", "protectednamespace", "protectedtitle", "blocked", "autoblocked",
    "mwoauth-invalid-authorization", "mwoauth-invalid-authorization-invalid-user",
    "mwoauth-invalid-authorization-wrong-user", "mwoauth-invalid-authorization-not-approved",
    "mwoauth-invalid-authorization-blocked-user", "cantdelete-permission",
})
# "readonly": the wiki is in maintenance; "ratelimited": slow down; the rest are server trouble.
TRANSIENT_CODES = frozenset({"readonly", "ratelimited", "internal_api_error", "maxlag", "actionthrottled"})
_RELOGIN_CODES = frozenset({"assertuserfailed", "assertbotfailed", "notloggedin", "assertnameduserfailed"})
_MAX_BODY = 5_000_000


class WikiApiError(ServiceError):
    """The wiki refused a call or could not be reached."""

    def __init__(self, message: str, *, code: str = "", retriable: bool = False, permission: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable
        self.permission = permission


@dataclass(frozen=True, slots=True)
class FileVersion:
    sha1: str
    timestamp: str
    archivename: str | None  # None for the current version


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    """One ``list=filearchive`` row: a deleted version."""

    id: int
    sha1: str | None  # hidden from accounts without viewsuppressed once suppressed
    timestamp: str
    file_hidden: bool
    comment_hidden: bool
    user_hidden: bool
    suppressed: bool


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    groups: tuple[str, ...]
    rights: frozenset[str]


def db_key(title: str) -> str:
    """``File:A b.jpg`` → ``A_b.jpg`` (the name as filearchive stores it)."""
    name = title.split(":", 1)[1] if title.startswith("File:") else title
    return name.replace(" ", "_")


class WikiApi:
    """One logged-in account on one wiki.  Create, ``await start()``, use, ``await aclose()``."""

    def __init__(
        self,
        wiki: WikiSection,
        auth: WikiAuthSection,
        user_agent: str,
        metrics: Metrics,
        *,
        timeout: float = 30.0,
        maxlag: int = 5,
        maxlag_retries: int = 3,
        maxlag_min_wait: float = 5.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.wiki = wiki
        self._auth = auth
        self._headers = {"User-Agent": user_agent}
        self._metrics = metrics
        self._timeout = timeout
        self._maxlag = maxlag
        self._maxlag_retries = maxlag_retries
        self._maxlag_min_wait = maxlag_min_wait
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()  # requests to one wiki are serial
        self._csrf: str | None = None
        self._logged_in = False

    @property
    def account_label(self) -> str:
        return self._auth.username if self._auth.method == "bot-password" else "OAuth 2 owner-only consumer"

    async def start(self) -> None:
        if self._session is None:
            headers = dict(self._headers)
            if self._auth.method == "oauth2":
                token = self._auth.token.get()
                if not token:
                    raise WikiApiError(f"{self.wiki.id}: no OAuth 2 access token available from {self._auth.token!r}",
                                       code="no-credentials", permission=True)
                headers["Authorization"] = f"Bearer {token}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                cookie_jar=aiohttp.CookieJar(unsafe=True),  # keep cookies also for IP-address hosts
            )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._logged_in = False
        self._csrf = None

    # ------------------------------------------------------------------ transport

    async def _request(self, method: str, params: dict[str, str], *, action: str) -> dict[str, Any]:
        """One API call with maxlag handling; returns the JSON body or raises WikiApiError."""
        await self.start()
        session = self._session
        assert session is not None
        params = {"format": "json", "formatversion": "2", "maxlag": str(self._maxlag), **params}
        url = URL(self.wiki.api_url)
        waits = 0
        while True:
            try:
                if method == "GET":
                    ctx = session.get(url.update_query(params), allow_redirects=False)
                else:
                    ctx = session.post(url, data=params, allow_redirects=False)
                async with ctx as resp:
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(65536):
                        body += chunk
                        if len(body) > _MAX_BODY:
                            break
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._metrics.wiki_api_requests.labels(action, "connection").inc()
                raise WikiApiError(f"{self.wiki.id} API {action}: {type(exc).__name__}: {exc}",
                                   code="connection", retriable=True) from exc
            if status != 200 or len(body) > _MAX_BODY:
                self._metrics.wiki_api_requests.labels(action, f"http-{status}").inc()
                raise WikiApiError(f"{self.wiki.id} API {action}: HTTP {status}", code=f"http-{status}",
                                   retriable=status == 429 or status >= 500)
            try:
                data = json.loads(body)
            except ValueError as exc:
                self._metrics.wiki_api_requests.labels(action, "bad-response").inc()
                raise WikiApiError(f"{self.wiki.id} API {action}: answer is not JSON", code="bad-response",
                                   retriable=True) from exc
            error = data.get("error") if isinstance(data, dict) else None
            if not isinstance(error, dict):
                self._metrics.wiki_api_requests.labels(action, "ok").inc()
                return data if isinstance(data, dict) else {}
            code = str(error.get("code") or "unknown")
            info = str(error.get("info") or "")
            self._metrics.wiki_api_requests.labels(action, code).inc()
            if code == "maxlag" and waits < self._maxlag_retries:
                wait = max(parse_retry_after(retry_after) or 0.0, self._maxlag_min_wait)
                log.info("%s is lagged (%s); waiting %.1f s before %s", self.wiki.id, info, wait, action)
                await self._sleep(min(wait, 120.0))
                waits += 1
                continue
            raise WikiApiError(f"{self.wiki.id} API {action}: {code}: {info}", code=code,
                               retriable=code in TRANSIENT_CODES, permission=code in PERMISSION_CODES)

    async def _login(self) -> None:
        if self._auth.method == "oauth2":
            self._logged_in = True  # the bearer header authenticates every request
            return
        password = self._auth.password.get()
        if not password:
            raise WikiApiError(f"{self.wiki.id}: no bot password available from {self._auth.password!r}",
                               code="no-credentials", permission=True)
        data = await self._request("GET", {"action": "query", "meta": "tokens", "type": "login"}, action="login")
        token = str(data.get("query", {}).get("tokens", {}).get("logintoken", ""))
        data = await self._request("POST", {"action": "login", "lgname": self._auth.username,
                                            "lgpassword": password, "lgtoken": token}, action="login")
        result = data.get("login", {})
        if result.get("result") != "Success":
            status = str(result.get("result") or "unknown")
            raise WikiApiError(
                f"{self.wiki.id}: login as {self._auth.username!r} failed: {status}: {result.get('reason', '')}",
                code=f"login-{status.lower()}", retriable=status == "Throttled", permission=status != "Throttled")
        self._logged_in = True
        self._csrf = None

    async def call(self, method: str, params: dict[str, str], *, write: bool = False) -> dict[str, Any]:
        """Logged-in call; ``write`` adds a CSRF token (refreshed once on badtoken)."""
        action = params.get("action", "?")
        async with self._lock:
            relogged = refreshed = False
            while True:
                if not self._logged_in:
                    await self._login()
                full = {**params, "assert": "user"}
                if write:
                    if self._csrf is None:
                        data = await self._request("GET", {"action": "query", "meta": "tokens", "type": "csrf",
                                                           "assert": "user"}, action="tokens")
                        self._csrf = str(data.get("query", {}).get("tokens", {}).get("csrftoken", ""))
                    full["token"] = self._csrf
                try:
                    return await self._request(method, full, action=action)
                except WikiApiError as exc:
                    if exc.code == "badtoken" and write and not refreshed:
                        log.info("%s: CSRF token expired; fetching a new one", self.wiki.id)
                        self._csrf, refreshed = None, True
                        continue
                    if exc.code in _RELOGIN_CODES and not relogged and self._auth.method == "bot-password":
                        log.info("%s: session lost (%s); logging in again", self.wiki.id, exc.code)
                        self._logged_in, self._csrf, relogged = False, None, True
                        continue
                    raise

    # ------------------------------------------------------------------ operations

    async def account(self) -> Account:
        data = await self.call("GET", {"action": "query", "meta": "userinfo", "uiprop": "rights|groups"})
        info = data.get("query", {}).get("userinfo", {})
        return Account(name=str(info.get("name", "")), groups=tuple(info.get("groups") or ()),
                       rights=frozenset(info.get("rights") or ()))

    async def file_versions(self, title: str) -> list[FileVersion] | None:
        """Every version of a file, newest (current) first; None when the file page does not exist."""
        data = await self.call("GET", {"action": "query", "prop": "imageinfo", "titles": title,
                                       "iiprop": "sha1|timestamp|archivename", "iilimit": "max"})
        pages = data.get("query", {}).get("pages") or []
        page = pages[0] if pages and isinstance(pages[0], dict) else {}
        if page.get("invalid"):
            raise WikiApiError(f"{self.wiki.id}: invalid title {title!r}", code="invalidtitle")
        infos = page.get("imageinfo") or []
        if page.get("missing") or not infos:
            return None
        return [FileVersion(sha1=str(i.get("sha1", "")).lower(), timestamp=str(i.get("timestamp", "")),
                            archivename=i.get("archivename") or None) for i in infos if not i.get("filemissing")]

    async def delete(self, title: str, *, reason: str, tags: tuple[str, ...] = (),
                     oldimage: str | None = None) -> bool:
        """Delete the file page (every version), or one old version; False when it was already gone."""
        params = {"action": "delete", "title": title, "reason": reason}
        if tags:
            params["tags"] = "|".join(tags)
        if oldimage:
            params["oldimage"] = oldimage
        try:
            await self.call("POST", params, write=True)
        except WikiApiError as exc:
            if exc.code in ("missingtitle", "nodeleteablefile", "filedeleteerror-missing"):
                return False
            raise
        return True

    async def filearchive(self, title: str) -> list[ArchivedFile]:
        """Deleted versions of exactly this file (``faprefix`` matches prefixes; others are dropped)."""
        name = db_key(title)
        out: list[ArchivedFile] = []
        cont: dict[str, str] = {}
        while True:
            data = await self.call("GET", {"action": "query", "list": "filearchive", "faprefix": name,
                                           "faprop": "sha1|timestamp", "falimit": "max", **cont})
            for row in data.get("query", {}).get("filearchive") or []:
                if str(row.get("name", "")) != name:
                    continue
                out.append(ArchivedFile(
                    id=int(row["id"]), sha1=str(row["sha1"]).lower() if row.get("sha1") else None,
                    timestamp=str(row.get("timestamp", "")), file_hidden=bool(row.get("filehidden")),
                    comment_hidden=bool(row.get("commenthidden")), user_hidden=bool(row.get("userhidden")),
                    suppressed=bool(row.get("suppressed"))))
            nxt = data.get("continue")
            if not isinstance(nxt, dict) or not nxt:
                return out
            cont = {str(k): str(v) for k, v in nxt.items()}

    async def suppress_archived(self, title: str, ids: list[int], *, reason: str,
                                tags: tuple[str, ...] = ()) -> None:
        """Hide the deleted versions' content, comment and uploader from administrators too."""
        params = {"action": "revisiondelete", "type": "filearchive", "target": title,
                  "ids": "|".join(str(i) for i in ids), "hide": "content|comment|user", "suppress": "yes",
                  "reason": reason}
        if tags:
            params["tags"] = "|".join(tags)
        data = await self.call("POST", params, write=True)
        items = data.get("revisiondelete", {}).get("items") or []
        failed = [i for i in items if isinstance(i, dict) and i.get("status") != "Success"]
        if data.get("revisiondelete", {}).get("status") != "Success" or failed:
            raise WikiApiError(f"{self.wiki.id}: suppressing {title!r} ids {ids} did not succeed: "
                               f"{json.dumps(data.get('revisiondelete'))[:300]}", code="revisiondelete-failed",
                               retriable=True)
