"""The one MediaWiki Action API client: every request the service makes to a wiki goes through here.

* **Allowlist**: every URL, and every redirect hop, must match one of the wiki's origins (scheme, host
  and port; see :func:`~service.mediawiki.allowlist.origin_allowed`).  Redirects are followed by hand
  (GET only), at most ``policy.max_redirects``; an OAuth bearer token goes to the API's origin only.
* **Byte caps** per call: a body beyond ``limit`` stops being read (WikiResponseTooLarge).
* **Retries**: connection failures, timeouts (``timeout`` bounds each attempt), HTTP 429 and 5xx are
  retried ``policy.retries`` times with exponential backoff and jitter, honouring ``Retry-After``.
* **maxlag**: every API call carries ``maxlag``; a lagged answer waits ``Retry-After`` (at least
  ``policy.maxlag_min_wait``) and tries again up to ``policy.maxlag_retries`` times.  API calls to
  one wiki are serial.
* **Errors** are classified once, by type (:mod:`service.errors`): ``retriable``, ``reason`` and
  ``permission`` are on the classes.
* **Login**: bot password (``action=login``) or OAuth 2 owner-only token (``Authorization: Bearer``);
  **CSRF tokens** for writes, fetched again once on ``badtoken``; a lost session logs in again once.
* **Continuation**: :meth:`MediaWikiClient.pages` iterates a query's pages.

The HTTP transport is injectable (:mod:`service.mediawiki.transport`), as httpx's is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from yarl import URL

from service.backoff import exponential_backoff, parse_retry_after
from service.config import WikiAuthSection, WikiSection
from service.errors import (
    HostNotAllowed,
    WikiApiError,
    WikiApiRefused,
    WikiApiTransient,
    WikiBadResponse,
    WikiBadToken,
    WikiBadUrl,
    WikiHttpError,
    WikiHttpTransient,
    WikiLagged,
    WikiLoginFailed,
    WikiLoginThrottled,
    WikiPermissionDenied,
    WikiSessionLost,
    WikiTimeout,
    WikiTooManyRedirects,
    WikiUnreachable,
)
from service.mediawiki.allowlist import origin, origin_allowed
from service.mediawiki.transport import AiohttpTransport, Request, Response, Sink, Transport
from service.net import Proxies

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Observer = Callable[[str, str], None]  # (what, result): "ok", "retry", "maxlag", or the failure's code

API_MAX_BYTES = 5_000_000  # one API answer (imageinfo, tokens, a write)
LIST_MAX_BYTES = 50_000_000  # one page of a listing (5000 allimages rows with URLs)

PERMISSION_CODES = frozenset({
    "permissiondenied", "badaccess-groups", "writeapidenied", "readapidenied", "protectedpage",
    "cascadeprotected", "protectednamespace", "protectedtitle", "blocked", "autoblocked",
    "mwoauth-invalid-authorization", "mwoauth-invalid-authorization-invalid-user",
    "mwoauth-invalid-authorization-wrong-user", "mwoauth-invalid-authorization-not-approved",
    "mwoauth-invalid-authorization-blocked-user", "cantdelete-permission",
})
# "readonly": maintenance; "ratelimited"/"actionthrottled": slow down; internal_api_error_*: server trouble.
TRANSIENT_CODES = ("readonly", "ratelimited", "actionthrottled", "internal_api_error")
RELOGIN_CODES = frozenset({"assertuserfailed", "assertbotfailed", "notloggedin", "assertnameduserfailed"})


def api_error(message: str, code: str, info: str, retry_after: float | None = None) -> WikiApiRefused:
    """The error class for MediaWiki's error ``code``: the one place API errors are classified."""
    if code == "maxlag":
        return WikiLagged(message, info=info, retry_after=retry_after)
    if code.startswith(TRANSIENT_CODES):
        return WikiApiTransient(message, code=code, info=info)
    if code in PERMISSION_CODES:
        return WikiPermissionDenied(message, code=code, info=info)
    if code == "badtoken":
        return WikiBadToken(message, code=code, info=info)
    if code in RELOGIN_CODES:
        return WikiSessionLost(message, code=code, info=info)
    return WikiApiRefused(message, code=code, info=info)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 3  # per request: connection failures, timeouts, HTTP 429 and 5xx
    initial_delay: float = 0.5
    max_delay: float = 60.0
    jitter: tuple[float, float] = (0.5, 1.5)
    max_retry_after: float = 120.0  # a server's Retry-After never parks us longer than this per attempt
    maxlag_retries: int = 3
    maxlag_min_wait: float = 5.0  # Wikimedia: on maxlag wait Retry-After, at least 5 seconds
    retry_answers: bool = False  # also retry unreadable answers and transient API errors in place
    max_redirects: int = 5


@dataclass(frozen=True, slots=True)
class Page:
    """One answer of a continued query; ``next`` holds the parameters of the following one (None: last)."""

    data: dict[str, Any]
    next: dict[str, str] | None


class MediaWikiClient:
    """One wiki's API (and media) through one transport.  ``await aclose()`` when done."""

    def __init__(
        self,
        wiki: WikiSection,
        *,
        user_agent: str,
        transport: Transport | None = None,
        proxies: Proxies | None = None,
        timeout: float = 30.0,
        maxlag: int = 5,
        policy: RetryPolicy = RetryPolicy(),
        auth: WikiAuthSection | None = None,
        observe: Observer | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not user_agent.strip():
            raise ValueError("a descriptive User-Agent is required")
        self.wiki = wiki
        self.maxlag = maxlag
        self.policy = policy
        self.timeout = timeout
        self.requests = 0  # HTTP requests sent, redirect hops included
        self._api_url = URL(wiki.api_url)
        self._api_origin = origin(self._api_url)
        self._owns_transport = transport is None
        self._transport: Transport = transport or AiohttpTransport(
            user_agent=user_agent, timeout=timeout, cookies=auth is not None, proxies=proxies)
        self._auth = auth
        self._observe = observe or (lambda what, result: None)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._api_lock = asyncio.Lock()  # API calls to one wiki are serial
        self._session_lock = asyncio.Lock()  # login, token and the call that uses them go together
        self._bearer: str | None = None
        self._logged_in = False
        self._csrf: str | None = None
        self._siteinfo: dict[str, Any] | None = None

    async def aclose(self) -> None:
        self._logged_in, self._csrf, self._bearer = False, None, None
        if self._owns_transport:
            await self._transport.aclose()

    # ------------------------------------------------------------------ HTTP

    async def get(self, url: URL | str, *, what: str, limit: int, sink: Sink | None = None,
                  timeout: float | None = None) -> Response:
        """GET ``url`` with the allowlist, redirects, the byte cap and retries.

        With ``sink``, a 2xx body is streamed into it (reset before each attempt) instead of memory;
        ``timeout`` replaces the client's per-attempt timeout (a large original takes longer).
        Returns any answer but 429/5xx (those are retried, then raised as WikiHttpTransient); raises
        HostNotAllowed, WikiTooManyRedirects, WikiResponseTooLarge, WikiUnreachable or WikiTimeout.
        """
        return await self._send("GET", URL(url, encoded=True) if isinstance(url, str) else url,
                                None, what=what, limit=limit, sink=sink, timeout=timeout)

    async def _send(self, method: str, url: URL, data: Mapping[str, str] | None, *, what: str,
                    limit: int, sink: Sink | None = None, timeout: float | None = None) -> Response:
        attempt = 0
        timeout = timeout or self.timeout
        while True:
            retry_after: float | None = None
            if sink is not None:
                sink.reset()
            try:
                async with asyncio.timeout(timeout):
                    resp = await self._follow(method, url, data, limit, sink)
            except TimeoutError:
                err: WikiApiError = WikiTimeout(f"{self.wiki.id} {what} {url}: no answer within {timeout} s")
            except WikiUnreachable as exc:
                err = exc
            else:
                if resp.status != 429 and resp.status < 500:
                    return resp
                err = WikiHttpTransient(f"{self.wiki.id} {what} {url}: HTTP {resp.status}", status=resp.status)
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if attempt >= self.policy.retries:
                log.info("%s %s: %s after %d attempt(s)", what, url, err.reason, attempt + 1)
                raise err
            delay = (min(retry_after, self.policy.max_retry_after) if retry_after is not None
                     else exponential_backoff(attempt, initial=self.policy.initial_delay,
                                              maximum=self.policy.max_delay, jitter=self.policy.jitter,
                                              rng=self._rng))
            self._observe(what, "retry")
            log.info("%s %s: %s, retrying in %.2f s", what, url, err.reason, delay)
            await self._sleep(delay)
            attempt += 1

    async def _follow(self, method: str, url: URL, data: Mapping[str, str] | None, limit: int,
                      sink: Sink | None = None) -> Response:
        hops = 0
        while True:
            if not origin_allowed(self.wiki, url):
                raise HostNotAllowed(str(url))
            headers = {"Authorization": f"Bearer {self._bearer}"} \
                if self._bearer and origin(url) == self._api_origin else {}
            self.requests += 1
            resp = await self._transport.handle(Request(method, url, data, headers, sink), limit=limit)
            if not resp.redirect or method != "GET":
                return resp
            hops += 1
            if hops > self.policy.max_redirects:
                raise WikiTooManyRedirects(f"more than {self.policy.max_redirects} redirects from {url}")
            location = resp.headers["Location"]
            try:
                url = resp.url.join(URL(location))
            except ValueError as exc:
                raise WikiBadUrl(f"bad redirect target {location!r}") from exc

    # ------------------------------------------------------------------ the API

    async def api(self, params: Mapping[str, str], *, what: str, method: str = "GET",
                  limit: int = API_MAX_BYTES) -> dict[str, Any]:
        """One Action API call (``format=json``, ``formatversion=2``, ``maxlag`` added); its JSON object."""
        full = {"format": "json", "formatversion": "2", "maxlag": str(self.maxlag), **params}
        async with self._api_lock:
            lag_waits = answer_retries = 0
            while True:
                try:
                    data = await self._api_once(full, what=what, method=method, limit=limit)
                except WikiLagged as exc:
                    self._observe(what, "maxlag")
                    if lag_waits >= self.policy.maxlag_retries:
                        raise
                    wait = min(max(exc.retry_after or 0.0, self.policy.maxlag_min_wait), self.policy.max_retry_after)
                    log.info("%s is lagged (%s); waiting %.1f s before %s", self.wiki.id, exc.info, wait, what)
                    await self._sleep(wait)
                    lag_waits += 1
                    continue
                except (WikiBadResponse, WikiApiTransient) as exc:
                    if not self.policy.retry_answers or answer_retries >= self.policy.retries:
                        self._observe(what, exc.code)
                        raise
                    delay = exponential_backoff(answer_retries, initial=self.policy.initial_delay,
                                                maximum=self.policy.max_delay, jitter=self.policy.jitter,
                                                rng=self._rng)
                    self._observe(what, "retry")
                    log.info("%s API %s: %s; retrying in %.1f s", self.wiki.id, what, exc, delay)
                    await self._sleep(delay)
                    answer_retries += 1
                    continue
                except WikiApiError as exc:
                    self._observe(what, exc.code)
                    raise
                self._observe(what, "ok")
                return data

    async def _api_once(self, params: dict[str, str], *, what: str, method: str, limit: int) -> dict[str, Any]:
        if method == "GET":
            resp = await self._send("GET", self._api_url.update_query(params), None, what=what, limit=limit)
        else:
            resp = await self._send(method, self._api_url, params, what=what, limit=limit)
        if resp.status != 200:
            raise WikiHttpError.for_status(f"{self.wiki.id} API {what}: HTTP {resp.status}", resp.status)
        try:
            data = json.loads(resp.body)
        except ValueError as exc:
            raise WikiBadResponse(f"{self.wiki.id} API {what}: the answer is not JSON") from exc
        if not isinstance(data, dict):
            raise WikiBadResponse(f"{self.wiki.id} API {what}: the answer is not a JSON object")
        error = data.get("error")
        if not isinstance(error, dict):
            return data
        code = str(error.get("code") or "unknown")
        info = str(error.get("info") or "")
        raise api_error(f"{self.wiki.id} API {what}: {code}: {info}", code, info,
                        parse_retry_after(resp.headers.get("Retry-After")))

    async def query(self, params: Mapping[str, str], *, what: str, limit: int = LIST_MAX_BYTES) -> dict[str, Any]:
        """``action=query`` with ``params``, anonymous."""
        return await self.api({"action": "query", **params}, what=what, limit=limit)

    async def pages(self, params: Mapping[str, str], *, what: str, start: Mapping[str, str] | None = None,
                    authenticated: bool = False) -> AsyncGenerator[Page, None]:
        """Every page of a continued ``action=query``, from ``start`` (continuation parameters) on."""
        cont = dict(start or {})
        while True:
            if authenticated:
                data = await self.call({"action": "query", **params, **cont}, what=what)
            else:
                data = await self.query({**params, **cont}, what=what)
            raw = data.get("continue")
            following = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) and raw else None
            yield Page(data, following)
            if following is None:
                return
            cont = following

    async def siteinfo(self) -> dict[str, Any]:
        """``meta=siteinfo`` general settings and statistics (asked once)."""
        if self._siteinfo is None:
            data = await self.api({"action": "query", "meta": "siteinfo", "siprop": "general|statistics"},
                                  what="siteinfo")
            query = data.get("query") or {}
            self._siteinfo = {**(query.get("general") or {}), "statistics": query.get("statistics") or {}}
        return self._siteinfo

    # ------------------------------------------------------------------ logged-in calls

    @property
    def account_label(self) -> str:
        if self._auth is None:
            return "anonymous"
        return self._auth.username if self._auth.method == "bot-password" else "OAuth 2 owner-only consumer"

    async def call(self, params: Mapping[str, str], *, what: str | None = None, method: str = "GET",
                   write: bool = False) -> dict[str, Any]:
        """A logged-in call (``assert=user``); ``write`` adds a CSRF token, fetched again once on badtoken."""
        what = what or params.get("action", "?")
        async with self._session_lock:
            relogged = refreshed = False
            while True:
                if not self._logged_in:
                    await self._login()
                full = {**params, "assert": "user"}
                if write:
                    full["token"] = await self._csrf_token()
                try:
                    return await self.api(full, what=what, method=method)
                except WikiBadToken:
                    if not write or refreshed:
                        raise
                    log.info("%s: CSRF token expired; fetching a new one", self.wiki.id)
                    self._csrf, refreshed = None, True
                except WikiSessionLost as exc:
                    if relogged or self._auth is None or self._auth.method != "bot-password":
                        raise
                    log.info("%s: session lost (%s); logging in again", self.wiki.id, exc.code)
                    self._logged_in, self._csrf, relogged = False, None, True

    async def _csrf_token(self) -> str:
        if self._csrf is None:
            data = await self.api({"action": "query", "meta": "tokens", "type": "csrf", "assert": "user"},
                                  what="tokens")
            self._csrf = str(data.get("query", {}).get("tokens", {}).get("csrftoken", ""))
        return self._csrf

    async def _login(self) -> None:
        auth = self._auth
        if auth is None:
            raise WikiLoginFailed(f"{self.wiki.id}: no account configured", code="no-credentials")
        if auth.method == "oauth2":
            token = auth.token.get()
            if not token:
                raise WikiLoginFailed(f"{self.wiki.id}: no OAuth 2 access token available from {auth.token!r}",
                                      code="no-credentials")
            self._bearer = token  # the bearer header authenticates every API request
            self._logged_in = True
            return
        password = auth.password.get()
        if not password:
            raise WikiLoginFailed(f"{self.wiki.id}: no bot password available from {auth.password!r}",
                                  code="no-credentials")
        data = await self.api({"action": "query", "meta": "tokens", "type": "login"}, what="login")
        token = str(data.get("query", {}).get("tokens", {}).get("logintoken", ""))
        data = await self.api({"action": "login", "lgname": auth.username, "lgpassword": password,
                               "lgtoken": token}, what="login", method="POST")
        result = data.get("login", {})
        if result.get("result") != "Success":
            status = str(result.get("result") or "unknown")
            cls = WikiLoginThrottled if status == "Throttled" else WikiLoginFailed
            raise cls(f"{self.wiki.id}: login as {auth.username!r} failed: {status}: {result.get('reason', '')}",
                      code=f"login-{status.lower()}")
        self._logged_in = True
        self._csrf = None

