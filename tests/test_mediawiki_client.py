"""The one MediaWiki client, against the in-memory MockTransport (the real-wiki paths are covered by
test_fetch, test_mwapi, test_backfill and test_takedown, which all go through this client)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from service.config import Secret, WikiAuthSection, WikiSection
from service.errors import (
    HostNotAllowed,
    ServiceError,
    WikiApiRefused,
    WikiApiTransient,
    WikiBadResponse,
    WikiBadToken,
    WikiHttpError,
    WikiHttpTransient,
    WikiLagged,
    WikiLoginFailed,
    WikiPermissionDenied,
    WikiResponseTooLarge,
    WikiSessionLost,
    WikiTooManyRedirects,
    WikiUnreachable,
)
from service.mediawiki import WikiApi
from service.mediawiki.allowlist import origin_allowed
from service.mediawiki.client import MediaWikiClient, RetryPolicy, api_error
from service.mediawiki.transport import MockTransport, Request, Response, response
from service.metrics import Metrics

UA = "mediamoderation-test/0.1 (ts@example.org)"
API = "https://wiki.example/w/api.php"


def params_of(request: Request) -> dict[str, str]:
    return {**dict(request.url.query), **dict(request.data or {})}


class Harness:
    def __init__(self, handler: Callable[[Request], Response], *, media_hosts: tuple[str, ...] = (),
                 policy: RetryPolicy | None = None, auth: WikiAuthSection | None = None) -> None:
        self.transport = MockTransport(handler)
        self.sleeps: list[float] = []
        self.observed: list[tuple[str, str]] = []

        async def sleep(seconds: float) -> None:  # record the wait, do not spend it
            self.sleeps.append(seconds)

        self.client = MediaWikiClient(
            WikiSection(id="w", api_url=API, media_hosts=media_hosts), user_agent=UA, transport=self.transport,
            policy=policy or RetryPolicy(), auth=auth,
            observe=lambda what, result: self.observed.append((what, result)), sleep=sleep, rng=random.Random(1))

    @property
    def urls(self) -> list[str]:
        return [str(r.url.with_query(None)) for r in self.transport.requests]


def lagged(retry_after: str | None) -> Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return response(json={"error": {"code": "maxlag", "info": "Waiting for db1: 7 seconds lagged"}},
                    headers=headers)


# --------------------------------------------------------------------------- maxlag and Retry-After


@pytest.mark.parametrize(("retry_after", "expected"), [("8", 8.0), ("1", 5.0), (None, 5.0), ("100000", 120.0)])
async def test_maxlag_waits_retry_after_at_least_the_floor(retry_after: str | None, expected: float) -> None:
    answers = [lagged(retry_after), response(json={"query": {"ok": 1}})]
    h = Harness(lambda r: answers.pop(0))
    data = await h.client.api({"action": "query", "meta": "siteinfo"}, what="siteinfo")
    assert data == {"query": {"ok": 1}}
    assert h.sleeps == [expected]
    assert all(params_of(r)["maxlag"] == "5" for r in h.transport.requests)
    assert h.observed == [("siteinfo", "maxlag"), ("siteinfo", "ok")]


async def test_persistent_maxlag_gives_up_with_a_retriable_error() -> None:
    h = Harness(lambda r: lagged("6"), policy=RetryPolicy(maxlag_retries=2))
    with pytest.raises(WikiLagged) as ei:
        await h.client.api({"action": "query"}, what="q")
    assert ei.value.retriable and ei.value.reason == "maxlag" and ei.value.code == "maxlag"
    assert h.sleeps == [6.0, 6.0] and len(h.transport.requests) == 3


async def test_503_is_retried_honouring_retry_after_then_succeeds() -> None:
    answers = [response(503, headers={"Retry-After": "3"}), response(502),
               response(json={"query": {}})]
    h = Harness(lambda r: answers.pop(0), policy=RetryPolicy(retries=3, initial_delay=1.0))
    await h.client.api({"action": "query"}, what="q")
    assert h.sleeps[0] == 3.0 and 0.5 <= h.sleeps[1] <= 1.5  # Retry-After, then backoff with jitter
    assert h.observed == [("q", "retry"), ("q", "retry"), ("q", "ok")]


async def test_transport_failures_exhaust_retries_as_retriable_errors() -> None:
    def down(_: Request) -> Response:
        raise WikiUnreachable("connection refused")

    h = Harness(down, policy=RetryPolicy(retries=2, initial_delay=0.5, jitter=(1.0, 1.0)))
    with pytest.raises(WikiUnreachable) as ei:
        await h.client.get(API, what="probe", limit=100)
    assert ei.value.retriable and ei.value.reason == "connection"
    assert h.sleeps == [0.5, 1.0]

    h2 = Harness(lambda r: response(503), policy=RetryPolicy(retries=0))
    with pytest.raises(WikiHttpTransient) as e2:
        await h2.client.api({"action": "query"}, what="q")
    assert (e2.value.retriable, e2.value.reason, e2.value.status) == (True, "http-503", 503)


# --------------------------------------------------------------------------- byte caps


async def test_byte_cap_per_call() -> None:
    big = b"x" * 5000
    h = Harness(lambda r: response(body=big))
    assert await h.client.get("https://wiki.example/a.png", what="original", limit=5000) == \
        Response(200, response().headers, big, URL("https://wiki.example/a.png"))
    with pytest.raises(WikiResponseTooLarge) as ei:
        await h.client.get("https://wiki.example/a.png", what="thumbnail", limit=4999)
    assert not ei.value.retriable and ei.value.reason == "too-large" and ei.value.seen == 5000

    h2 = Harness(lambda r: response(json={"query": {"pad": "y" * 3000}}))
    with pytest.raises(WikiResponseTooLarge):
        await h2.client.api({"action": "query"}, what="q", limit=1000)
    assert len(h2.transport.requests) == 1  # a cap is not retried


# --------------------------------------------------------------------------- allowlist


def redirect_to(location: str) -> Response:
    return response(302, headers={"Location": location})


async def test_redirect_to_another_port_on_an_allowed_host_is_refused() -> None:
    h = Harness(lambda r: redirect_to("https://wiki.example:8443/img.png"))
    with pytest.raises(HostNotAllowed):
        await h.client.get("https://wiki.example/img.png", what="thumbnail", limit=1000)
    assert h.urls == ["https://wiki.example/img.png"]  # the other port was never contacted


@pytest.mark.parametrize("location", [
    "http://wiki.example/img.png",  # same host, other scheme
    "https://upload.example/img.png",  # host not listed
    "https://upload.example.evil/img.png",
    "https://user:pw@wiki.example/img.png",  # credentials in the URL
    "file:///etc/passwd",
])
async def test_redirects_outside_the_allowlist_are_refused(location: str) -> None:
    h = Harness(lambda r: redirect_to(location))
    with pytest.raises(HostNotAllowed):
        await h.client.get("https://wiki.example/img.png", what="thumbnail", limit=1000)
    assert len(h.transport.requests) == 1


async def test_redirects_within_the_allowlist_are_followed() -> None:
    def handler(request: Request) -> Response:
        if request.url.host == "wiki.example":
            return redirect_to("https://upload.example/a/img.png")
        if request.url.path == "/a/img.png":
            return redirect_to("/b/img.png")  # relative: resolved against upload.example
        return response(body=b"PNG")

    h = Harness(handler, media_hosts=("upload.example",))
    resp = await h.client.get("https://wiki.example/img.png", what="thumbnail", limit=1000)
    assert resp.body == b"PNG"
    assert h.urls == ["https://wiki.example/img.png", "https://upload.example/a/img.png",
                      "https://upload.example/b/img.png"]

    looping = Harness(lambda r: redirect_to("/again"), policy=RetryPolicy(max_redirects=2))
    with pytest.raises(WikiTooManyRedirects):
        await looping.client.get("https://wiki.example/x", what="thumbnail", limit=1000)
    assert len(looping.transport.requests) == 3


def test_allowlist_compares_scheme_host_and_port() -> None:
    wiki = WikiSection(id="w", api_url="http://127.0.0.1:8080/w/api.php",
                       media_hosts=("localhost", "media.example:9000"))
    for ok in ("http://127.0.0.1:8080/x", "http://localhost/a.png", "http://localhost:80/a.png",
               "http://media.example:9000/a.png"):
        assert origin_allowed(wiki, URL(ok)), ok
    for bad in ("http://127.0.0.1/x", "http://127.0.0.1:8081/x", "https://127.0.0.1:8080/x",
                "http://localhost:8080/a.png", "http://media.example/a.png", "http://u:p@localhost/a.png"):
        assert not origin_allowed(wiki, URL(bad)), bad


async def test_api_url_outside_the_allowlist_is_never_contacted() -> None:
    h = Harness(lambda r: response(json={}))
    with pytest.raises(HostNotAllowed):
        await h.client.get("https://wiki.example:444/w/api.php", what="q", limit=100)
    assert h.transport.requests == []


# --------------------------------------------------------------------------- errors, by class


def test_api_errors_are_classified_once_by_class() -> None:
    cases: dict[str, tuple[type[WikiApiRefused], bool, bool]] = {
        "maxlag": (WikiLagged, True, False),
        "readonly": (WikiApiTransient, True, False),
        "internal_api_error_DBQueryError": (WikiApiTransient, True, False),
        "ratelimited": (WikiApiTransient, True, False),
        "permissiondenied": (WikiPermissionDenied, False, True),
        "badtoken": (WikiBadToken, False, False),
        "assertuserfailed": (WikiSessionLost, False, False),
        "badvalue": (WikiApiRefused, False, False),
    }
    for code, (cls, retriable, permission) in cases.items():
        err = api_error("m", code, "info")
        assert type(err) is cls and err.code == code, code
        assert (err.retriable, err.permission) == (retriable, permission), code
        # retriable is the class's, not set on the instance
        assert "retriable" not in vars(err) and type(err).retriable is retriable
    assert api_error("m", "badvalue", "").reason == "api-badvalue"
    assert WikiHttpError.for_status("m", 404).retriable is False
    assert WikiHttpError.for_status("m", 429).retriable is True
    assert ServiceError.reason == "error" and WikiBadResponse.reason == "bad-response"


async def test_unreadable_answers() -> None:
    h = Harness(lambda r: response(body=b"<html>proxy error</html>"))
    with pytest.raises(WikiBadResponse):
        await h.client.api({"action": "query"}, what="q")
    assert h.observed == [("q", "bad-response")]

    # polling retries unreadable answers in place; the others hand them to their caller
    answers = [response(body=b"[]"), response(json={"error": {"code": "readonly", "info": "maintenance"}}),
               response(json={"query": {}})]
    polling = Harness(lambda r: answers.pop(0), policy=RetryPolicy(retry_answers=True, jitter=(1.0, 1.0)))
    assert await polling.client.query({"list": "logevents"}, what="logevents") == {"query": {}}
    assert polling.sleeps == [0.5, 1.0]
    assert [r for _, r in polling.observed] == ["retry", "retry", "ok"]


# --------------------------------------------------------------------------- login and CSRF tokens


def secret(tmp_path: Path, name: str, value: str) -> Secret:
    path = tmp_path / name
    path.write_text(value)
    return Secret(file=str(path))


class FakeWiki:
    """Just enough of the API for login and writes: tokens, login, a write that checks its token."""

    def __init__(self) -> None:
        self.csrf = "token-1"
        self.logged_in = False
        self.calls: list[str] = []
        self.expire_token_once = False
        self.drop_session_once = False

    def __call__(self, request: Request) -> Response:
        p = params_of(request)
        self.calls.append(f"{request.method} {p.get('action')}:{p.get('type') or p.get('meta') or ''}")
        if p.get("meta") == "tokens" and p.get("type") == "login":
            return response(json={"query": {"tokens": {"logintoken": "L+\\"}}})
        if p.get("action") == "login":
            ok = p.get("lgname") == "Admin@mm" and p.get("lgpassword") == "s3cret" and p.get("lgtoken") == "L+\\"
            self.logged_in = ok
            return response(json={"login": {"result": "Success" if ok else "Failed", "reason": "bad password"}})
        if p.get("assert") == "user" and not self.logged_in:
            return response(json={"error": {"code": "assertuserfailed", "info": "not logged in"}})
        if p.get("meta") == "tokens":
            return response(json={"query": {"tokens": {"csrftoken": self.csrf}}})
        if p.get("action") == "delete":
            if self.drop_session_once:
                self.drop_session_once, self.logged_in = False, False
                return response(json={"error": {"code": "assertuserfailed", "info": "session lost"}})
            if self.expire_token_once:
                self.expire_token_once, self.csrf = False, "token-2"
            if p.get("token") != self.csrf:
                return response(json={"error": {"code": "badtoken", "info": "Invalid CSRF token."}})
            return response(json={"delete": {"title": p["title"]}})
        return response(json={"query": {}})


def bot(tmp_path: Path, password: str = "s3cret") -> WikiAuthSection:
    return WikiAuthSection(username="Admin@mm", password=secret(tmp_path, "pw", password))


async def test_bot_password_login_then_csrf_token_refreshed_once_on_badtoken(tmp_path: Path) -> None:
    wiki = FakeWiki()
    h = Harness(wiki, auth=bot(tmp_path))
    wiki.expire_token_once = True
    data = await h.client.call({"action": "delete", "title": "File:A.png"}, method="POST", write=True)
    assert data == {"delete": {"title": "File:A.png"}}
    assert wiki.calls == ["GET query:login", "POST login:", "GET query:csrf", "POST delete:",
                          "GET query:csrf", "POST delete:"]
    assert ("delete", "badtoken") in h.observed
    login_post = next(r for r in h.transport.requests if params_of(r).get("action") == "login")
    assert login_post.method == "POST" and "lgpassword" not in login_post.url.query  # never in a URL

    # The token is kept between writes; a token refused twice in a row is an error, not a loop.
    wiki.calls.clear()
    await h.client.call({"action": "delete", "title": "File:B.png"}, method="POST", write=True)
    assert wiki.calls == ["POST delete:"]
    wiki.csrf = "always-new"
    original = wiki.__call__

    def rotating(request: Request) -> Response:
        wiki.csrf += "!"
        return original(request)

    h.transport._handler = rotating
    with pytest.raises(WikiBadToken):
        await h.client.call({"action": "delete", "title": "File:C.png"}, method="POST", write=True)


async def test_lost_session_logs_in_again_once(tmp_path: Path) -> None:
    wiki = FakeWiki()
    h = Harness(wiki, auth=bot(tmp_path))
    await h.client.call({"action": "query", "meta": "userinfo"})
    wiki.calls.clear()
    wiki.drop_session_once = True
    await h.client.call({"action": "delete", "title": "File:A.png"}, method="POST", write=True)
    assert wiki.calls == ["GET query:csrf", "POST delete:", "GET query:login", "POST login:", "GET query:csrf",
                          "POST delete:"]


async def test_login_failures_need_a_human(tmp_path: Path) -> None:
    h = Harness(FakeWiki(), auth=bot(tmp_path, password="wrong"))
    with pytest.raises(WikiLoginFailed) as ei:
        await h.client.call({"action": "query", "meta": "userinfo"})
    assert ei.value.permission and not ei.value.retriable and ei.value.code == "login-failed"
    empty = Harness(FakeWiki(), auth=WikiAuthSection(username="Admin@mm", password=Secret(env="MM_UNSET_VAR_X")))
    with pytest.raises(WikiLoginFailed) as e2:
        await empty.client.call({"action": "query"})
    assert e2.value.code == "no-credentials"
    assert empty.transport.requests == []


async def test_oauth_bearer_goes_to_the_api_origin_only(tmp_path: Path) -> None:
    def handler(request: Request) -> Response:
        if request.url.host == "wiki.example" and request.url.path == "/w/api.php":
            return response(json={"query": {"userinfo": {"name": "Bot"}}})
        if request.url.host == "wiki.example":
            return redirect_to("https://upload.example/img.png")
        return response(body=b"img")

    auth = WikiAuthSection(method="oauth2", token=secret(tmp_path, "tok", "t0ken"))
    h = Harness(handler, media_hosts=("upload.example",), auth=auth)
    await h.client.call({"action": "query", "meta": "userinfo"})
    await h.client.get("https://wiki.example/img.png", what="original", limit=100)
    sent = {str(r.url.with_query(None)): r.headers.get("Authorization") for r in h.transport.requests}
    assert sent == {API: "Bearer t0ken", "https://wiki.example/img.png": "Bearer t0ken",
                    "https://upload.example/img.png": None}


# --------------------------------------------------------------------------- continuation


async def test_pages_follow_continuation_to_the_end() -> None:
    def handler(request: Request) -> Response:
        p = params_of(request)
        at = int(p.get("aicontinue", "0"))
        body: dict[str, Any] = {"query": {"allimages": [{"name": f"F{at}"}, {"name": f"F{at + 1}"}]}}
        if at < 4:
            body["continue"] = {"aicontinue": str(at + 2), "continue": "-||"}
        return response(json=body)

    h = Harness(handler)
    seen = [(p.data["query"]["allimages"][0]["name"], p.next)
            async for p in h.client.pages({"list": "allimages"}, what="allimages")]
    assert seen == [("F0", {"aicontinue": "2", "continue": "-||"}), ("F2", {"aicontinue": "4", "continue": "-||"}),
                    ("F4", None)]
    sent = [params_of(r) for r in h.transport.requests]
    assert [s.get("aicontinue") for s in sent] == [None, "2", "4"]
    assert all(s["list"] == "allimages" and s["action"] == "query" for s in sent)

    resumed = Harness(handler)
    names = [p.data["query"]["allimages"][0]["name"]
             async for p in resumed.client.pages({"list": "allimages"}, what="allimages", start={"aicontinue": "4"})]
    assert names == ["F4"]


async def test_api_requests_to_one_wiki_are_serial() -> None:
    active = peak = 0

    async def handler(request: Request) -> Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        active -= 1
        return response(json={"query": {}})

    transport = MockTransport(handler)
    client = MediaWikiClient(WikiSection(id="w", api_url=API), user_agent=UA, transport=transport)
    await asyncio.gather(*(client.api({"action": "query"}, what="q") for _ in range(5)))
    assert peak == 1 and len(transport.requests) == 5
    await client.aclose()
    assert not transport.closed  # an injected transport belongs to its owner


def test_mock_transport_answers_json() -> None:
    r = response(json={"a": 1})
    assert json.loads(r.body) == {"a": 1} and r.status == 200


# --------------------------------------------------------------------------- the takedown's operations on the client


async def test_takedown_filearchive_follows_continuation_through_the_client(tmp_path: Path) -> None:
    def handler(request: Request) -> Response:
        p = params_of(request)
        assert request.headers.get("Authorization") == "Bearer t0ken" and p["assert"] == "user"
        if p.get("facontinue") is None:
            rows = [{"id": 1, "name": "A_b.jpg", "sha1": "AA", "timestamp": "t1"},
                    {"id": 2, "name": "A_b.jpg.old", "sha1": "bb"}]  # a longer name with the same prefix
            return response(json={"query": {"filearchive": rows}, "continue": {"facontinue": "A_b.jpg|2"}})
        return response(json={"query": {"filearchive": [{"id": 3, "name": "A_b.jpg", "suppressed": True}]}})

    metrics = Metrics()
    auth = WikiAuthSection(method="oauth2", token=secret(tmp_path, "t", "t0ken"))
    api = WikiApi(WikiSection(id="w", api_url=API), auth, UA, metrics, transport=MockTransport(handler))
    rows = await api.filearchive("File:A b.jpg")
    assert [(r.id, r.sha1, r.suppressed) for r in rows] == [(1, "aa", False), (3, None, True)]
    assert metrics.registry.get_sample_value("mediamoderation_wiki_api_requests_total",
                                             {"action": "query", "result": "ok"}) == 2
