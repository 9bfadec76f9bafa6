"""The review queue over HTTP: access control, sessions, CSRF, decisions, previews, the audit log.

(The browser-driven flow against the real wiki is in test_review_ui.py.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image, ImageChops, ImageFilter, ImageStat

from service.config import Config, WikiSection, config_from_dict
from service.errors import FileGone
from service.metrics import Metrics
from service.models import FetchedMedia, FileInfo, Match, UploadEvent
from service.store import Stores, sqlite_stores
from service.web.review.app import ReviewUI
from service.web.review.auth import hash_password
from tests.infra import images

PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD)
SHA1 = "1" * 40
OTHER = "2" * 40


class FakeFetcher:
    """Serves a photo for any title (the real WikiClient is used in test_review_ui.py)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.data = images.jpeg_bytes(images.photo(4242, (320, 240)))

    async def fetch(self, wiki: WikiSection, title: str, *, expected_sha1: str | None = None) -> FetchedMedia:
        self.calls.append(title)
        if "gone" in title:
            raise FileGone(title)
        info = FileInfo(title=title, url="http://w/x.jpg", description_url="", sha1=SHA1, size=len(self.data),
                        width=320, height=240, mime="image/jpeg", mediatype="BITMAP")
        return FetchedMedia(info=info, data=self.data, data_source="thumbnail")


@dataclass
class Ui:
    client: TestClient
    stores: Stores
    ui: ReviewUI
    fetcher: FakeFetcher
    kicks: list[int] = field(default_factory=list)
    clock: list[float] = field(default_factory=lambda: [1_800_000_000.0])

    async def login(self, name: str = "alice", password: str = PASSWORD, *, address: str | None = None,
                    next_url: str = "/review/") -> ClientResponse:
        """Sign in; ``address`` is sent as X-Forwarded-For (believed only when the config trusts this peer)."""
        headers = {"X-Forwarded-For": address} if address else {}
        page = await self.client.get("/review/login", headers=headers)
        csrf = field_value(await page.text(), "csrf")
        return await self.client.post("/review/login", data={"name": name, "password": password, "csrf": csrf,
                                                             "next": next_url},
                                      headers=headers, allow_redirects=False)

    async def csrf(self, path: str = "/review/") -> str:
        return field_value(await (await self.client.get(path)).text(), "csrf")


def field_value(html: str, name: str) -> str:
    marker = f'name="{name}" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


def make_cfg(tmp_path: Path, *, mode: str = "review", secure: bool = False, **review: Any) -> Config:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    return config_from_dict({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:1/api.php"}],
        "banks": {"list": [{"name": "cp-bank", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"],
                               "review_url": "https://mm.example.org/review"},
                    "takedown": {"mode": mode}},
        "review": {"reviewers": [{"name": "alice", "password_hash": HASH},
                                 {"name": "bob", "password_hash": HASH}],
                   "secure_cookies": secure, "escalate_recipients": ["lead@example.org"], **review},
        "store": {"path": str(tmp_path / "db.sqlite3")},
    }, base=tmp_path)


def upload_event(title: str, sha1: str = SHA1, event_id: str = "ev-1") -> UploadEvent:
    return UploadEvent(event_id=event_id, wiki="testwiki", title=title, server_url="https://w.example",
                       page_url=f"https://w.example/wiki/{title}", uploader="Uploader<1>", log_action="upload",
                       upload_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), sha1=sha1)


def cp_match(category: str = "child-protection", bank: str = "cp-bank") -> Match:
    return Match(matcher="photodna", bank=bank, category=category, hash_id="m-1", hash_value="-", distance=12,
                 source="NCMEC", details={"tracking_id": "WUS_abc", "violations": ["A1"]})


@pytest.fixture
async def make_ui(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[Ui] = []

    async def make(sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, **kwargs: Any) -> Ui:
        cfg = make_cfg(tmp_path, **kwargs)
        stores = sqlite_stores(cfg.store.path, clock=lambda: ui_clock[0])
        await stores.open()
        fetcher = FakeFetcher()
        kicks: list[int] = []
        ui_clock = [1_800_000_000.0]
        ui = ReviewUI(cfg, store=stores.review, reviewers=stores.reviewers, fetcher=fetcher, metrics=Metrics(),
                      kick=lambda: kicks.append(1),
                      clock=lambda: ui_clock[0], sleep=sleep)
        app = web.Application()
        ui.mount(app)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        made.append(h := Ui(client, stores, ui, fetcher, kicks, ui_clock))
        await stores.pipeline.record_matches(upload_event("File:Case <script>alert(1)</script>.jpg"), SHA1,
                                             [cp_match()], [])
        return h

    yield make
    for h in made:
        await h.client.close()
        await h.stores.close()


async def test_anonymous_requests_get_the_login_page(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    for path in ("/review/", f"/review/matches/{SHA1}", "/review/audit", "/review"):
        resp = await h.client.get(path)
        assert resp.status == 200 and resp.url.path == "/review/login", path
        assert "Sign in to the review queue" in await resp.text()
    resp = await h.client.get(f"/review/matches/{SHA1}/preview/1?mode=clear")
    assert resp.status == 401 and h.fetcher.calls == []  # no preview without login, not even a fetch
    resp = await h.client.post(f"/review/matches/{SHA1}/decide", data={"decision": "confirm"})
    assert resp.status == 403
    assert await h.stores.review.list_audit(10) == []


async def test_login_sets_a_secure_session_cookie_and_logout_ends_it(make_ui: Callable[..., Any]) -> None:
    h = await make_ui(secure=True)
    page = await h.client.get("/review/login")
    set_cookie = page.headers.getall("Set-Cookie")[0]
    assert set_cookie.startswith("__Host-mm-login=") and "Secure" in set_cookie and "HttpOnly" in set_cookie
    csrf = field_value(await page.text(), "csrf")
    cookie = set_cookie.split(";")[0]
    resp = await h.client.post("/review/login", allow_redirects=False, headers={"Cookie": cookie},
                               data={"name": "alice", "password": PASSWORD, "csrf": csrf, "next": "/review/audit"})
    assert resp.status == 303 and resp.headers["Location"] == "/review/audit"
    session = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("__Host-mm-review="))
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in session, session
    token = session.split(";")[0]
    ok = await h.client.get("/review/", headers={"Cookie": token}, allow_redirects=False)
    assert ok.status == 200 and "Signed in as" in await ok.text()
    assert ok.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in ok.headers["Content-Security-Policy"]
    csrf = field_value(await ok.text(), "csrf")
    out = await h.client.post("/review/logout", data={"csrf": csrf}, headers={"Cookie": token}, allow_redirects=False)
    assert out.status == 303
    again = await h.client.get("/review/", headers={"Cookie": token}, allow_redirects=False)
    assert again.status == 303 and again.headers["Location"].startswith("/review/login")
    assert [a.action for a in await h.stores.review.list_audit(10)] == ["logout", "login"]


async def test_wrong_passwords_are_refused_then_throttled(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    for name in ("alice", "alice", "mallory", "alice", "alice"):
        resp = await h.login(name, "wrong password")
        assert resp.status == 401 and "Unknown reviewer or wrong password" in await resp.text()
    resp = await h.login("alice", "wrong password")
    assert resp.status == 401
    resp = await h.login("alice", PASSWORD)
    assert resp.status == 429  # five failures for alice from this address: even the right password waits
    assert (await h.client.get("/review/", allow_redirects=False)).status == 303
    assert (await h.login("bob")).status == 303  # another name from the same address is not locked


async def test_an_attacker_cannot_lock_a_reviewer_out_from_another_address(make_ui: Callable[..., Any]) -> None:
    """Wrong passwords hammered from one address stop that address only, never the reviewer elsewhere."""
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    h = await make_ui(sleep=sleep, proxy_auth={"client_header": "X-Forwarded-For", "trusted_proxies": ["127.0.0.1"]})
    statuses = [(await h.login("alice", f"guess {i}", address="203.0.113.9")).status for i in range(12)]
    assert statuses == [401] * 5 + [429] * 7
    assert (await h.login("alice", PASSWORD, address="203.0.113.9")).status == 429
    resp = await h.login("alice", PASSWORD, address="198.51.100.7, 127.0.0.1")  # through two trusted hops
    assert resp.status == 303 and resp.headers["Location"] == "/review/"
    assert sleeps == []  # five failures for the name: below the ceiling, nobody was slowed
    assert [(a.action, a.note) for a in await h.stores.review.list_audit(10)] == [("login", "from 198.51.100.7")]


async def test_a_name_attacked_from_many_addresses_is_slowed_not_locked(make_ui: Callable[..., Any]) -> None:
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    h = await make_ui(sleep=sleep, proxy_auth={"client_header": "X-Forwarded-For", "trusted_proxies": ["127.0.0.1"]})
    for i in range(12):  # a botnet: two guesses from each of six addresses
        assert (await h.login("alice", "guess", address=f"203.0.113.{i // 2 + 1}")).status == 401
    assert sleeps == [3.0, 3.0]  # the 11th and 12th guesses for alice already waited
    resp = await h.login("alice", PASSWORD, address="2001:db8::7")
    assert resp.status == 303  # the right password from a new address gets in ...
    assert sleeps == [3.0, 3.0, 3.0]  # ... after the same short wait
    h.client.session.cookie_jar.clear()
    assert (await h.login("bob", address="203.0.113.1")).status == 303 and len(sleeps) == 3  # bob is not slowed


async def test_the_client_header_is_believed_only_from_a_trusted_proxy(make_ui: Callable[..., Any]) -> None:
    h = await make_ui(proxy_auth={"client_header": "X-Forwarded-For", "trusted_proxies": ["10.0.0.1"]})
    for i in range(5):  # a forged header per attempt does not make a new address
        assert (await h.login("alice", "guess", address=f"198.51.100.{i}")).status == 401
    assert (await h.login("alice", PASSWORD, address="198.51.100.200")).status == 429


@pytest.mark.parametrize("bad", ["/review/\r\nSet-Cookie: evil=1", "/review/%0D%0A".replace("%0D%0A", "\r\n"),
                                 "/review/\x00", "/review/\u2028x", "/review/ x",
                                 "/review/%0D%0ASet-Cookie:%20evil=1"])
async def test_a_next_with_control_characters_is_a_400_without_a_traceback(
    make_ui: Callable[..., Any], caplog: pytest.LogCaptureFixture, bad: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    h = await make_ui()
    resp = await h.login(next_url=bad)  # the right password
    assert resp.status == 400 and "evil" not in str(resp.headers)
    resp = await h.client.get("/review/login", params={"next": bad}, allow_redirects=False)
    assert resp.status == 400
    assert (await h.login()).status == 303
    resp = await h.client.get("/review/login", params={"next": bad}, allow_redirects=False)  # signed in
    assert resp.status == 400 and "evil" not in str(resp.headers)
    assert (await h.client.get("/review/", allow_redirects=False)).status == 200  # the server is fine
    problems = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert problems == [], [r.getMessage() for r in problems]


@pytest.mark.parametrize("bad", ["https://evil.example/review/", "//evil.example/review/", "/\\evil.example/review/",
                                 "/review/\\..\\..\\evil", "/review/../logout", "/review/%2e%2e/x", "javascript:x",
                                 "/elsewhere", "review/"])
async def test_a_next_outside_the_review_ui_goes_to_the_queue(make_ui: Callable[..., Any], bad: str) -> None:
    h = await make_ui()
    resp = await h.login(next_url=bad)
    assert resp.status == 303 and resp.headers["Location"] == "/review/"
    resp = await h.client.get("/review/login", params={"next": bad}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/review/"
    for good in ("/review/audit?before=5", "/review/?category=a%20b&state=all"):
        ok = await h.client.get("/review/login", params={"next": good}, allow_redirects=False)
        assert ok.status == 303 and ok.headers["Location"] == good


async def test_login_needs_the_form_token_and_never_redirects_elsewhere(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    resp = await h.client.post("/review/login", data={"name": "alice", "password": PASSWORD})
    assert resp.status == 403
    page = await h.client.get("/review/login")
    csrf = field_value(await page.text(), "csrf")
    resp = await h.client.post("/review/login", allow_redirects=False, data={
        "name": "alice", "password": PASSWORD, "csrf": csrf, "next": "https://evil.example/review/"})
    assert resp.status == 303 and resp.headers["Location"] == "/review/"


async def test_posts_without_the_csrf_token_are_refused(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    assert (await h.login()).status == 303
    for data in ({"decision": "dismiss"}, {"decision": "dismiss", "csrf": "forged"}):
        resp = await h.client.post(f"/review/matches/{SHA1}/decide", data=data)
        assert resp.status == 403 and "security token" in await resp.text()
    assert await h.stores.review.allowlisted_banks(SHA1) == frozenset()
    assert [a.action for a in await h.stores.review.list_audit(10)] == ["login"]


async def test_queue_and_detail_escape_everything_and_show_the_match(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    await h.login()
    queue = await (await h.client.get("/review/")).text()
    assert "<script>alert(1)</script>" not in queue and "&lt;script&gt;alert(1)&lt;/script&gt;" in queue
    assert "<img" not in queue  # the queue is text only
    detail = await (await h.client.get(f"/review/matches/{SHA1}")).text()
    assert "<script>alert" not in detail and "Uploader&lt;1&gt;" in detail
    for text in ("photodna", "cp-bank", "NCMEC", "WUS_abc", "A1", "Tracking id", "2026-01-02 03:04:05 UTC",
                 # the file page from the configured wiki, not the URL stored from the event (w.example)
                 'href="http://127.0.0.1:1/wiki/File:Case_%3Cscript%3Ealert(1)%3C/script%3E.jpg"',
                 f"/review/matches/{SHA1}/preview/1?mode=blur"):
        assert text in detail, text
    assert "w.example" not in detail
    filtered = await (await h.client.get("/review/?state=all&category=terrorism")).text()
    assert "Nothing here" in filtered


@pytest.mark.parametrize("forged", ["https://phish.example/wiki/File:Case.jpg", "http://169.254.169.254/latest/"])
async def test_links_stored_with_old_matches_never_reach_the_page_or_a_new_email(
    make_ui: Callable[..., Any], forged: str,
) -> None:
    """Rows recorded before links came from the config carry the event's URL: the page rebuilds the link."""
    h = await make_ui()
    event = dataclasses.replace(upload_event("File:Old row.jpg", event_id="ev-old"), server_url=forged,
                                page_url=forged)
    await h.stores.pipeline.record_matches(event, SHA1, [cp_match()], [])
    await h.login()
    detail = await (await h.client.get(f"/review/matches/{SHA1}")).text()
    host = forged.split("/")[2]
    assert host not in detail
    assert 'href="http://127.0.0.1:1/wiki/File:Old_row.jpg"' in detail
    csrf = await h.csrf()
    await h.client.post(f"/review/matches/{SHA1}/decide", data={"csrf": csrf, "decision": "escalate"})
    [escalation] = [i for i in await h.stores.outbox.list_actions() if i.key.startswith("escalate:")]
    assert host not in json.dumps(escalation.payload)


async def test_previews_are_blurred_greyscale_by_default_and_never_cached(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    await h.login()
    blurred = await h.client.get(f"/review/matches/{SHA1}/preview/1")
    assert blurred.status == 200 and blurred.headers["Cache-Control"] == "no-store, private"
    img = Image.open(io.BytesIO(await blurred.read()))
    assert img.mode == "L"
    clear = await h.client.get(f"/review/matches/{SHA1}/preview/1?mode=clear")
    clear_img = Image.open(io.BytesIO(await clear.read()))
    # Blurring removes the fine detail: almost no high-frequency content left, unlike the sharp image.
    assert _detail(img) < _detail(clear_img) / 10
    audit = await h.stores.review.list_audit(10)
    assert [a.action for a in audit] == ["preview-unblurred", "login"]  # who looked at it unblurred
    await h.stores.pipeline.record_matches(upload_event("File:gone.jpg", event_id="ev-2"), SHA1, [cp_match()], [])
    gone = await h.client.get(f"/review/matches/{SHA1}/preview/2")
    assert gone.content_type == "image/svg+xml" and b"File deleted" in await gone.read()
    assert (await h.client.get(f"/review/matches/{OTHER}/preview/1")).status == 404


def _detail(img: Image.Image) -> float:
    grey = img.convert("L")
    return float(ImageStat.Stat(ImageChops.difference(grey, grey.filter(ImageFilter.GaussianBlur(2)))).mean[0])


async def test_dismiss_allowlists_the_content_for_its_banks(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    await h.login("bob")
    csrf = await h.csrf()
    resp = await h.client.post(f"/review/matches/{SHA1}/decide",
                               data={"csrf": csrf, "decision": "dismiss", "note": "a holiday photo"})
    assert resp.status == 200 and "allowlist" in await resp.text()
    assert await h.stores.review.allowlisted_banks(SHA1) == frozenset({"cp-bank"})
    case = await h.stores.review.review_case(SHA1)
    assert case is not None and case.state == "dismissed" and case.decided_by == "bob"
    [entry, _login] = await h.stores.review.list_audit(10)
    assert (entry.actor, entry.action, entry.note, entry.sha1) == ("bob", "dismiss", "a holiday photo", SHA1)
    todo = await (await h.client.get("/review/")).text()
    assert "Nothing here" in todo


async def test_confirm_queues_one_takedown_per_upload_and_escalate_emails_the_second_list(
    make_ui: Callable[..., Any],
) -> None:
    h = await make_ui()
    await h.stores.pipeline.record_matches(upload_event("File:Copy.jpg", event_id="ev-2"), SHA1, [cp_match()], [])
    await h.login()
    csrf = await h.csrf()
    page = await h.client.get(f"/review/matches/{SHA1}")
    nonce = field_value(await page.text(), "nonce")
    for _ in range(2):  # a double submit sends one email
        await h.client.post(f"/review/matches/{SHA1}/decide",
                            data={"csrf": csrf, "decision": "escalate", "note": "need a second look", "nonce": nonce})
    await h.client.post(f"/review/matches/{SHA1}/decide", data={"csrf": csrf, "decision": "confirm"})
    items = await h.stores.outbox.list_actions()
    escalations = [i for i in items if i.key.startswith("escalate:")]
    assert len(escalations) == 1
    assert escalations[0].payload["recipients"] == ["lead@example.org"]
    assert "ESCALATED by alice: need a second look" == escalations[0].payload["alert"]
    takedowns = sorted(i.key for i in items if i.kind == "takedown")
    assert takedowns == [f"takedown:testwiki:File:Case <script>alert(1)</script>.jpg:{SHA1}",
                         f"takedown:testwiki:File:Copy.jpg:{SHA1}"]
    assert all(i.payload["requested_by"] == "alice" and i.payload["dry_run"] is False
               for i in items if i.kind == "takedown")
    assert h.kicks  # the dispatchers were told at once
    assert [a.action for a in await h.stores.review.list_audit(10)][:3] == ["confirm", "escalate", "escalate"]


async def test_confirm_is_refused_when_takedown_is_off(make_ui: Callable[..., Any]) -> None:
    h = await make_ui(mode="off")
    await h.login()
    csrf = await h.csrf()
    detail = await (await h.client.get(f"/review/matches/{SHA1}")).text()
    assert "disabled" in detail and "Takedown is off" in detail
    resp = await h.client.post(f"/review/matches/{SHA1}/decide", data={"csrf": csrf, "decision": "confirm"})
    assert resp.status == 409
    assert await h.stores.outbox.list_actions() == []


async def test_trusted_proxy_header_signs_in_only_from_trusted_addresses(make_ui: Callable[..., Any]) -> None:
    h = await make_ui(proxy_auth={"header": "X-Remote-User", "trusted_proxies": ["127.0.0.1"]})
    resp = await h.client.get("/review/", headers={"X-Remote-User": "bob"}, allow_redirects=False)
    assert resp.status == 200 and "<strong>bob</strong>" in await resp.text()
    stranger = await h.client.get("/review/", headers={"X-Remote-User": "mallory"}, allow_redirects=False)
    assert stranger.status == 303  # not a listed reviewer, even with bob's session cookie in this browser
    h.client.session.cookie_jar.clear()
    h2 = await make_ui(proxy_auth={"header": "X-Remote-User", "trusted_proxies": ["10.0.0.1"]})
    untrusted = await h2.client.get("/review/", headers={"X-Remote-User": "bob"}, allow_redirects=False)
    assert untrusted.status == 303  # the header is believed only from the proxy


async def test_sessions_end_after_the_idle_time(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    await h.login()
    assert (await h.client.get("/review/", allow_redirects=False)).status == 200
    h.clock[0] += 1801
    assert (await h.client.get("/review/", allow_redirects=False)).status == 303


async def test_the_audit_log_is_append_only(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    await h.login()
    page = await (await h.client.get("/review/audit")).text()
    assert "alice" in page and "login" in page
    conn = sqlite3.connect(h.stores.db.where)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit_log SET actor = 'mallory'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit_log")
    finally:
        conn.close()


def test_sign_in_throttle_counts_expire_and_only_the_pair_is_forgiven() -> None:
    from service.web.review.auth import SignInThrottle, Verdict

    now = [0.0]
    t = SignInThrottle(lambda: now[0], pair_failures=2, address_failures=3, name_ceiling=4, slow_delay=1.5,
                       window=60)
    t.failed("alice", "a")
    t.failed("alice", "a")
    assert t.check("alice", "a").refused and not t.check("alice", "b").refused
    t.failed("bob", "a")
    assert t.check("carol", "a").refused  # three failures from one address: any name from it waits
    t.failed("alice", "b")
    t.failed("alice", "c")
    assert t.check("alice", "d") == Verdict(refused=False, delay=1.5)  # a new address: slowed, never refused
    t.succeeded("alice", "d")
    assert t.check("alice", "d").delay == 1.5  # one success does not end the attack on the name
    now[0] += 61
    assert t.check("alice", "a").refused is False and t.check("alice", "a").delay == 0.0


async def test_client_address_from_a_trusted_proxy_only(tmp_path: Path) -> None:
    from service.web.review.auth import Auth

    cfg = make_cfg(tmp_path, proxy_auth={"client_header": "X-Forwarded-For", "trusted_proxies": ["10.0.0.1", "::1"]})
    auth = Auth(cfg.review, store=None)  # type: ignore[arg-type]  # the address needs no store
    xff = "X-Forwarded-For"
    assert auth.client_address("10.0.0.1", {xff: "198.51.100.7"}) == "198.51.100.7"
    assert auth.client_address("10.0.0.1", {xff: "1.2.3.4, 2001:DB8::7, ::1"}) == "2001:db8::7"  # right-most hop
    assert auth.client_address("10.0.0.1", {xff: "not an address"}) == "10.0.0.1"
    assert auth.client_address("10.0.0.1", {}) == "10.0.0.1"
    assert auth.client_address("192.0.2.1", {xff: "198.51.100.7"}) == "192.0.2.1"  # not a trusted proxy
    assert auth.client_address(None, {}) == "unknown"
    plain = Auth(make_cfg(tmp_path).review, store=None)  # type: ignore[arg-type]
    assert plain.client_address("10.0.0.1", {xff: "198.51.100.7"}) == "10.0.0.1"  # no header configured


def test_the_client_header_must_be_a_header_name(tmp_path: Path) -> None:
    from service.errors import ConfigError

    with pytest.raises(ConfigError, match=r"review\.proxy_auth\.client_header"):
        make_cfg(tmp_path, proxy_auth={"client_header": "X-Forwarded-For: 1.2.3.4"})
