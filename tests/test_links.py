"""Links in staff email and the review queue come from the configured wiki, never from the event.

End to end with real parts: uploads on the real MediaWiki, forged events on the EventStreams server
(``meta.uri`` / ``server_url`` pointing at a phishing site or the cloud metadata address), the service,
the real SMTP server and the service's own review queue.  Plus the pure link helpers.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from service.config import WikiSection, config_from_dict
from service.links import MismatchLogLimit, configured_links, foreign_links, origin, page_url, title_path
from service.metrics import Metrics
from service.models import UploadEvent
from service.web.review.auth import hash_password
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, base_config_data, metric, start

PASSWORD = "correct horse battery staple"
REVIEW_URL = "https://mm.example.org/review"
URL_RE = re.compile(r"""(?:https?:)?//[^\s"'<>]+""", re.IGNORECASE)
FORGED = {
    "phish": ("https://phish.example", "https://phish.example/wiki/File:Login_to_continue.jpg"),
    "metadata": ("http://169.254.169.254", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
}


# --------------------------------------------------------------------------- helpers


def test_titles_are_encoded_like_mediawiki() -> None:
    wiki = WikiSection(id="w", api_url="https://commons.wikimedia.org/w/api.php")
    assert page_url(wiki, "File:A photo (1).jpg") == "https://commons.wikimedia.org/wiki/File:A_photo_(1).jpg"
    assert title_path("File:Évé?&#x=1 \"q\".jpg") == "File:%C3%89v%C3%A9%3F%26%23x%3D1_%22q%22.jpg"
    assert title_path("File:a/b;c@d$e!f*g,h~i.jpg") == "File:a/b;c@d$e!f*g,h~i.jpg"  # wfUrlencode keeps these
    assert title_path("File:Bad\ud800.jpg") == "File:Bad%3F.jpg"  # a lone surrogate: a link, not an exception
    custom = WikiSection(id="w", api_url="http://10.0.0.5:8080/w/api.php", server_url="https://wiki.example.org/",
                         article_path="/index.php?title=$1")
    assert page_url(custom, "File:X y.png") == "https://wiki.example.org/index.php?title=File:X_y.png"
    assert page_url(WikiSection(id="w", api_url="http://127.0.0.1:8080/api.php"), "File:Z.png") \
        == "http://127.0.0.1:8080/wiki/File:Z.png"


def test_foreign_links_compare_scheme_host_and_port() -> None:
    wiki = WikiSection(id="commonswiki", api_url="https://commons.wikimedia.org/w/api.php")

    def event(server: str, uri: str) -> UploadEvent:
        return UploadEvent(event_id="e", wiki="commonswiki", title="File:X.jpg", server_url=server, page_url=uri,
                           uploader=None, upload_time=datetime(2026, 1, 1, tzinfo=UTC), log_action="upload",
                           sha1=None)

    good = "https://commons.wikimedia.org"
    assert foreign_links(event(good, f"{good}/wiki/File:X.jpg"), wiki) == []
    assert foreign_links(event("https://Commons.Wikimedia.org:443", f"{good}./wiki/File:X.jpg"), wiki) == []
    assert foreign_links(event(good, "https://phish.example/wiki/File:X.jpg"), wiki) == ["meta.uri"]
    assert foreign_links(event("http://commons.wikimedia.org", f"{good}/x"), wiki) == ["server_url"]
    assert foreign_links(event(good, f"{good}:8443/x"), wiki) == ["meta.uri"]
    assert foreign_links(event("https://user@commons.wikimedia.org", "javascript:alert(1)"), wiki) == \
        ["server_url", "meta.uri"]
    assert origin("https://[::1]:99999/") is None and origin("ftp://h/") is None


def test_config_checks_the_link_settings(tmp_path: Path) -> None:
    from service.errors import ConfigError

    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    base = {"service": {"user_agent": "mm-test/0.1 (ts@example.org)"},
            "banks": {"list": [{"name": "b", "path": str(bank), "category": "child-protection"}]},
            "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
            "store": {"path": str(tmp_path / "db.sqlite3")}}
    good = {"id": "w", "api_url": "https://w.example/w/api.php", "server_url": "https://w.example",
            "article_path": "/wiki/$1", "media_hosts": ["upload.example", "media.example:8443", "[2001:db8::1]"]}
    cfg = config_from_dict({**base, "wikis": [good]}, base=tmp_path)
    assert cfg.wikis[0].server == "https://w.example"
    for key, value in (("server_url", "https://w.example/wiki"), ("server_url", "javascript:x"),
                       ("article_path", "//evil.example/$1"), ("article_path", "/wiki/"),
                       ("media_hosts", ["evil.example/x"]), ("media_hosts", ["h:port"])):
        with pytest.raises(ConfigError) as ei:
            config_from_dict({**base, "wikis": [{**good, key: value}]}, base=tmp_path)
        assert f"wikis[0].{key}" in str(ei.value), (key, value)


def test_the_mismatch_metric_is_labelled_by_wiki() -> None:
    m = Metrics()
    m.event_link_mismatch.labels("commonswiki").inc()
    assert m.registry.get_sample_value("mediamoderation_event_link_mismatch_total", {"wiki": "commonswiki"}) == 1


def test_the_mismatch_warning_is_logged_once_per_wiki_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Every forged event is counted; the log gets one line per wiki per minute naming how many it left out."""
    caplog.set_level(logging.WARNING, logger="service.links")
    now = [1000.0]
    limit = MismatchLogLimit(interval=60.0, clock=lambda: now[0])
    m = Metrics()
    wikis = {w: WikiSection(id=w, api_url=f"https://{w}.example/w/api.php") for w in ("a", "b")}

    def forged(wiki: str, n: int) -> UploadEvent:
        return UploadEvent(event_id=f"{wiki}-{n}", wiki=wiki, title="File:X.jpg", server_url="https://phish.example",
                           page_url="https://phish.example/wiki/File:X.jpg", uploader="u",
                           upload_time=datetime(2026, 1, 1, tzinfo=UTC), log_action="upload", sha1="0" * 40)

    for n in range(5):
        event = configured_links(forged("a", n), wikis["a"], m, limit)
        assert event.server_url == "https://a.example"  # the links are always replaced
        now[0] += 10
    configured_links(forged("b", 0), wikis["b"], m, limit)  # another wiki has its own minute
    now[0] += 15  # 65 s after the first line on wiki a
    configured_links(forged("a", 5), wikis["a"], m, limit)

    lines = [(r.wiki, r.suppressed, r.getMessage()) for r in caplog.records]  # type: ignore[attr-defined]
    assert [(w, s) for w, s, _ in lines] == [("a", 0), ("b", 0), ("a", 4)]
    assert "4 more such events on a since the last line were not logged" in lines[2][2]
    assert "more such events" not in lines[0][2]
    assert m.registry.get_sample_value("mediamoderation_event_link_mismatch_total", {"wiki": "a"}) == 6
    assert m.registry.get_sample_value("mediamoderation_event_link_mismatch_total", {"wiki": "b"}) == 1


# --------------------------------------------------------------------------- end to end

pytestmark_wiki = pytest.mark.wiki


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    runs: list[Running] = []
    yield runs
    for r in runs:
        if not r.task.done():
            await r.stop()


def foreign_urls(text: str, allowed: tuple[str, ...]) -> list[str]:
    """Every URL in ``text`` that does not start with one of ``allowed``."""
    return [u for u in URL_RE.findall(text) if not u.startswith(allowed)]


@pytestmark_wiki
async def test_forged_event_links_never_reach_email_or_review_page(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running: list[Running], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="service.links")
    run_id = uuid.uuid4().hex[:8]
    files = {kind: (f"Links {run_id} {kind}.jpg", images.jpeg_bytes(images.photo(seed)))
             for kind, seed in (("phish", 9101), ("metadata", 9102), ("honest", 9103))}
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n" + "".join(
        f"{hashlib.sha1(data).hexdigest()},,test-source,links-{kind}\n" for kind, (_, data) in files.items()))
    events = {}
    for kind, (name, data) in files.items():
        await asyncio.to_thread(mediawiki.upload, name, data)
        events[kind] = await asyncio.to_thread(mediawiki.recentchange_event, name)
    for kind, (server, uri) in FORGED.items():
        forged = copy.deepcopy(events[kind])
        forged["server_url"], forged["meta"]["uri"], forged["title_url"] = server, uri, uri
        events[kind] = forged
    for event in events.values():
        sse_server.publish(event)

    site = mediawiki.client.siteinfo
    data = base_config_data(tmp_path, mediawiki, smtp_server, bank)
    data["wikis"][0]["article_path"] = site["articlepath"]  # the test wiki's own layout, as an operator would
    data["source"] = {"eventstreams": {"url": sse_server.stream_url(), "since": "2000-01-01T00:00:00Z",
                                       "reconnect": {"initial_delay": 0.05, "max_delay": 0.5}}}
    data["actions"]["notify"]["review_url"] = REVIEW_URL
    data["review"] = {"reviewers": [{"name": "alice", "password_hash": hash_password(PASSWORD)}],
                      "secure_cookies": False}
    cfg = config_from_dict(data, base=tmp_path)
    run = await start(cfg)
    running.append(run)
    await run.finished(len(events))
    mails = await smtp_server.wait_for_async(3)
    assert len(mails) == 3

    wiki_base = mediawiki.base_url + "/"
    allowed = (wiki_base, REVIEW_URL + "/")
    by_title = {kind: next(m for m in mails if name in str(m.message["Subject"])) for kind, (name, _) in files.items()}
    for kind, mail in by_title.items():
        raw = mail.message.as_bytes().decode("utf-8", "replace")
        assert "phish.example" not in raw and "169.254.169.254" not in raw, kind
        for part in mail.message.walk():
            if part.is_multipart():
                continue
            text = part.get_content()
            assert foreign_urls(text, allowed) == [], (kind, part.get_content_type())
            title = events[kind]["title"]
            expected = mediawiki.base_url + site["articlepath"].replace("$1", title.replace(" ", "_"))
            assert expected in text, (kind, expected)  # the file page on the configured wiki ...
            async with aiohttp.ClientSession() as http, http.get(expected) as page:
                assert page.status == 200  # ... and it is the real page of the file

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # cookies for 127.0.0.1
        async with http.get(run.base + "/metrics") as r:
            text = await r.text()
        # Two forged events were counted; the honest one was not.  All three were scanned and matched.
        assert metric(text, "mediamoderation_event_link_mismatch_total", wiki=mediawiki.wiki_id) == 2
        assert metric(text, "mediamoderation_matches_total", category="child-protection", matcher="sha1") == 3

        async with http.get(run.base + "/review/login") as r:
            login = await r.text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', login)
        assert csrf is not None
        async with http.post(run.base + "/review/login", data={"name": "alice", "password": PASSWORD,
                                                               "csrf": csrf.group(1), "next": "/review/"}) as r:
            assert r.status == 200 and "Signed in as" in await r.text()
        for kind, (_, data_bytes) in files.items():
            async with http.get(f"{run.base}/review/matches/{hashlib.sha1(data_bytes).hexdigest()}") as r:
                page = await r.text()
            assert r.status == 200
            assert "phish.example" not in page and "169.254.169.254" not in page, kind
            assert foreign_urls(page, (wiki_base, "http://www.w3.org/")) == [], kind
            assert f'href="{wiki_base}' in page, kind

    # Both were counted above; the warning is rate-limited to one line per wiki per minute.
    logged = [r.event_id for r in caplog.records if hasattr(r, "event_id")]  # type: ignore[attr-defined]
    assert len(logged) == 1 and logged[0] in {events["phish"]["meta"]["id"], events["metadata"]["meta"]["id"]}
