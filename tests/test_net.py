"""Outgoing HTTP: proxies (network.proxy, HTTPS_PROXY, NO_PROXY) and one-line connection error summaries.

The proxy tests go through a real forward proxy on loopback (tests/infra/forward_proxy.py) that alone can
resolve ``*.invalid`` names: a request that reaches its server under such a name went through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web

from service.config import (
    BackoffSection,
    CircuitSection,
    EventStreamsSection,
    PhotoDnaSection,
    ReconnectSection,
    Secret,
    ThumbnailSection,
    WikiSection,
    config_from_dict,
    load_config,
)
from service.errors import ConfigError, SourceError, WikiUnreachable
from service.matchers.photodna import PhotoDnaError, build_matcher
from service.media.thumbnail import prepare
from service.mediawiki.client import MediaWikiClient, RetryPolicy
from service.metrics import Metrics
from service.net import Proxies, describe, describe_status, page_text
from service.sources.eventstreams import EventStreamsSource
from service.store import Stores
from tests.helpers import until
from tests.infra import images
from tests.infra.forward_proxy import ForwardProxy
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.photodna_server import PhotoDnaServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_eventstreams import MemoryCheckpoints, collect, event, ids

REPO = Path(__file__).resolve().parent.parent
UA = "mediamoderation-test/0.1 (ts@example.org)"
WIKI_HOST = "wiki.mm.invalid"
STREAM_HOST = "stream.mm.invalid"
PHOTODNA_HOST = "photodna.mm.invalid"
SINCE = datetime.fromtimestamp(1_600_000_000, tz=UTC)  # events are published at 1_700_000_000_000 ms


# --------------------------------------------------------------------------- which proxy


def test_environment_proxies_apply_by_scheme_and_no_proxy_excludes_hosts() -> None:
    env = {"HTTPS_PROXY": "http://secure-proxy:3128", "http_proxy": "plain-proxy:8080",
           "NO_PROXY": "internal.example, .corp.example,10.0.0.0/8,localhost:8443, [::1]"}
    p = Proxies.from_environment(env)
    https = p.for_url("https://stream.wikimedia.org/v2/stream/x")
    assert https is not None and https.url == "http://secure-proxy:3128"
    plain = p.for_url("http://commons.wikimedia.org/w/api.php")
    assert plain is not None and plain.url == "http://plain-proxy:8080"  # a bare host:port gets http://
    for direct in ("https://internal.example/", "https://api.internal.example/", "https://a.b.corp.example/",
                   "http://10.1.2.3/", "https://localhost:8443/", "http://[::1]:8080/"):
        assert p.for_url(direct) is None, direct
    for proxied in ("https://notinternal.example/", "https://localhost:9000/", "http://11.0.0.1/"):
        assert p.for_url(proxied) is not None, proxied
    assert Proxies.from_environment({"NO_PROXY": "*", "HTTPS_PROXY": "http://p:1"}).for_url("https://x/") is None
    assert Proxies.from_environment({}).for_url("https://stream.wikimedia.org/") is None
    # lower-case names win, as in curl and requests
    low = Proxies.from_environment({"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1"})
    assert str(low.for_url("https://x.example/")) == "http://low:1"


def test_network_proxy_overrides_the_environment_and_direct_ignores_it() -> None:
    env = {"HTTPS_PROXY": "http://env-proxy:3128", "NO_PROXY": "wikimedia.org"}
    forced = Proxies.from_settings("http://cfg-proxy:3128", (), env)
    assert str(forced.for_url("https://example.org/")) == "http://cfg-proxy:3128"
    assert str(forced.for_url("http://example.org/")) == "http://cfg-proxy:3128"
    assert forced.for_url("https://stream.wikimedia.org/") is None  # NO_PROXY still applies
    own_list = Proxies.from_settings("http://cfg-proxy:3128", ("example.org",), env)
    assert own_list.for_url("https://stream.wikimedia.org/") is not None  # network.no_proxy replaces NO_PROXY
    assert own_list.for_url("https://example.org/") is None
    assert Proxies.from_settings("direct", (), env).for_url("https://example.org/") is None
    credentials = Proxies.from_settings("", (), {"HTTPS_PROXY": "http://user:s3cret@env-proxy:3128"})
    proxy = credentials.for_url("https://example.org/")
    assert proxy is not None and proxy.address == "http://env-proxy:3128" and "s3cret" not in repr(credentials)


def minimal(tmp_path: Path, **network: Any) -> dict[str, Any]:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    return {
        "service": {"user_agent": UA},
        "network": network,
        "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:1/api.php"}],
        "banks": {"list": [{"name": "b", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        "store": {"path": str(tmp_path / "db.sqlite3")},
    }


@pytest.mark.parametrize(("network", "key", "words"), [
    ({"proxy": "ftp://proxy:21"}, "network.proxy", "must be 'direct' or a proxy URL"),
    ({"proxy": "http://proxy:3128/some/path"}, "network.proxy", "no path"),
    ({"proxy": "http://user:pw@proxy:3128"}, "network.proxy", "must not hold credentials"),
    ({"proxy": "http://proxy:99999"}, "network.proxy", "is not a URL"),
    ({"no_proxy": ["ok.example", "http://bad.example"]}, "network.no_proxy[1]", "must be a host"),
    ({"no_proxy": "ok.example"}, "network.no_proxy", "must be a list"),
])
def test_network_settings_are_validated(tmp_path: Path, network: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal(tmp_path, **network), base=tmp_path)
    problems = dict(info.value.problems)
    assert words in problems[key], problems


def test_valid_network_settings_load(tmp_path: Path) -> None:
    cfg = config_from_dict(minimal(tmp_path, proxy="http://proxy.example:3128",
                                   no_proxy=["10.0.0.0/8", ".svc.cluster.local", "*"]), base=tmp_path)
    assert cfg.network.proxy == "http://proxy.example:3128"
    assert config_from_dict(minimal(tmp_path, proxy="direct"), base=tmp_path).network.proxy == "direct"
    assert config_from_dict(minimal(tmp_path), base=tmp_path).network.proxy == ""


def test_shipped_config_listens_on_loopback_only() -> None:
    assert load_config(REPO / "config.yaml").http.host == "127.0.0.1"  # as README says; the image sets 0.0.0.0


# --------------------------------------------------------------------------- through a proxy


@pytest.fixture
async def sse_proxy(sse_server: EventStreamsServer) -> AsyncIterator[ForwardProxy]:
    proxy = await ForwardProxy({STREAM_HOST: ("127.0.0.1", sse_server.port)}).start()
    yield proxy
    await proxy.stop()


def stream_source(url: str, proxies: Proxies, metrics: Metrics | None = None) -> EventStreamsSource:
    cfg = EventStreamsSection(url=url, read_timeout=5, connect_timeout=2,
                              reconnect=ReconnectSection(initial_delay=0.05, max_delay=0.2))
    return EventStreamsSource(cfg, user_agent=UA, checkpoints=MemoryCheckpoints(), metrics=metrics or Metrics(),
                              proxies=proxies, since=SINCE)


async def test_eventstreams_reads_through_the_proxy(sse_server: EventStreamsServer, sse_proxy: ForwardProxy,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # requests' own reading of the environment is off
    sse_server.publish(event(1), ts_ms=1_700_000_000_001)
    sse_server.publish(event(2), ts_ms=1_700_000_000_002)
    url = f"http://{STREAM_HOST}:{sse_server.port}/v2/stream/mediawiki.recentchange"
    got = await collect(stream_source(url, Proxies(http=sse_proxy.url)), 2)
    assert ids(got) == ["id-1", "id-2"]
    assert sse_proxy.records[0].method == "GET" and sse_proxy.records[0].target.startswith(url)
    [conn] = sse_server.connections
    assert conn.user_agent == UA


async def test_eventstreams_goes_direct_to_no_proxy_hosts(sse_server: EventStreamsServer,
                                                          sse_proxy: ForwardProxy) -> None:
    sse_server.publish(event(3), ts_ms=1_700_000_000_003)
    got = await collect(stream_source(sse_server.stream_url(), Proxies(http=sse_proxy.url, no_proxy="127.0.0.1")), 1)
    assert ids(got) == ["id-3"] and sse_proxy.records == []


@pytest.mark.wiki
async def test_mediawiki_client_goes_through_the_proxy_and_no_proxy_bypasses_it(mediawiki: MediaWikiServer) -> None:
    from urllib.parse import urlsplit

    real = urlsplit(mediawiki.api_url)
    assert real.port is not None
    proxy = await ForwardProxy({WIKI_HOST: ("127.0.0.1", real.port)}).start()
    try:
        wiki = WikiSection(id="testwiki", api_url=f"http://{WIKI_HOST}:{real.port}{real.path}")
        client = MediaWikiClient(wiki, user_agent=UA, proxies=Proxies(http=proxy.url), timeout=30)
        try:
            data = await client.api({"action": "query", "meta": "siteinfo"}, what="siteinfo")
        finally:
            await client.aclose()
        assert data["query"]["general"]["sitename"]
        assert proxy.records and all(r.target.startswith(f"http://{WIKI_HOST}:") for r in proxy.records)

        seen = len(proxy.records)
        direct = MediaWikiClient(WikiSection(id="testwiki", api_url=mediawiki.api_url), user_agent=UA,
                                 proxies=Proxies(http=proxy.url, no_proxy="127.0.0.0/8"), timeout=30)
        try:
            await direct.api({"action": "query", "meta": "siteinfo"}, what="siteinfo")
        finally:
            await direct.aclose()
        assert len(proxy.records) == seen  # NO_PROXY: straight to the wiki
    finally:
        await proxy.stop()


async def test_photodna_goes_through_the_proxy(stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    server = PhotoDnaServer(keys=["good-key"])
    server.start()
    proxy = await ForwardProxy({PHOTODNA_HOST: ("127.0.0.1", server.port)}).start()
    monkeypatch.setenv("TEST_PHOTODNA_KEY", "good-key")
    try:
        cfg = PhotoDnaSection(
            enabled=True, url=server.url.replace("127.0.0.1", PHOTODNA_HOST), key=Secret(env="TEST_PHOTODNA_KEY"),
            rate=100, timeout=5, retries=0, backoff=BackoffSection(initial_delay=0.01, max_delay=0.05),
            circuit=CircuitSection(failures=50, open_seconds=0.3, max_open_seconds=1.0))
        matcher = build_matcher(cfg, user_agent=UA, store=stores.budget, metrics=Metrics(),
                                proxies=Proxies.from_settings(proxy.url, (), {}))
        await matcher.client.start()
        try:
            media = prepare(images.jpeg_bytes(images.photo(8101)), "0" * 40, ThumbnailSection(make_jpeg=True))
            assert await matcher.match(media) == []
        finally:
            await matcher.aclose()
        assert [r.kind for r in server.records] == ["no-match"]
        [rec] = proxy.records
        assert rec.method == "POST" and rec.target.startswith(f"http://{PHOTODNA_HOST}:")
    finally:
        await proxy.stop()
        server.stop()


async def test_proxy_credentials_from_the_environment_are_sent_by_both_http_stacks(
        sse_server: EventStreamsServer) -> None:
    proxy = await ForwardProxy({STREAM_HOST: ("127.0.0.1", sse_server.port)}, credentials=("mm", "p@ss")).start()
    try:
        proxies = Proxies.from_environment({"HTTP_PROXY": f"http://mm:p%40ss@127.0.0.1:{proxy.port}"})
        url = f"http://{STREAM_HOST}:{sse_server.port}/v2/stream/mediawiki.recentchange"
        sse_server.publish(event(4), ts_ms=1_700_000_000_004)
        assert ids(await collect(stream_source(url, proxies), 1)) == ["id-4"]  # requests
        wiki = WikiSection(id="w", api_url=f"http://{STREAM_HOST}:{sse_server.port}/api.php")
        client = MediaWikiClient(wiki, user_agent=UA, proxies=proxies, policy=RetryPolicy(retries=0), timeout=5)
        try:
            resp = await client.get(wiki.api_url, what="probe", limit=1000)  # aiohttp
        finally:
            await client.aclose()
        assert resp.status == 404  # the SSE server's answer, reached through the authenticated proxy
        assert len(proxy.records) == 2 and all(r.authorization == "Basic bW06cEBzcw==" for r in proxy.records)
    finally:
        await proxy.stop()


async def test_https_goes_through_a_connect_tunnel(plain_tcp_server: int) -> None:
    """https:// through the proxy is a CONNECT tunnel; TLS then runs end to end (here it fails: no TLS)."""
    proxy = await ForwardProxy({STREAM_HOST: ("127.0.0.1", plain_tcp_server)}).start()
    try:
        proxies = Proxies(https=proxy.url)
        url = f"https://{STREAM_HOST}/v2/stream/mediawiki.recentchange"
        source = stream_source(url, proxies)
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(asyncio.Queue(1), stop))
        await proxy.wait_for_records(1)
        wiki = WikiSection(id="w", api_url=f"https://{STREAM_HOST}/w/api.php")
        client = MediaWikiClient(wiki, user_agent=UA, proxies=proxies, policy=RetryPolicy(retries=0), timeout=5)
        try:
            with pytest.raises(WikiUnreachable) as info:
                await client.get(wiki.api_url, what="probe", limit=1000)
        finally:
            await client.aclose()
        assert str(info.value).startswith(f"TLS error talking to {STREAM_HOST} through proxy {proxy.url}"), info.value
        await until(lambda: source.last_error, 10, what="the reader thread's first failure")
        assert (source.last_error or "").startswith(f"TLS error talking to {STREAM_HOST}"), source.last_error
        stop.set()
        await asyncio.wait_for(task, 5)
        assert {(r.method, r.target) for r in proxy.records} == {("CONNECT", f"{STREAM_HOST}:443")}
    finally:
        await proxy.stop()


# --------------------------------------------------------------------------- error summaries


@pytest.fixture
def plain_tcp_server() -> Iterator[int]:
    """A TCP server that answers anything (a TLS ClientHello too) with a plain HTTP 400."""
    srv = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    done.set()
    srv.close()
    thread.join(5)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections (the kernel's backlog does) and never answers."""
    srv = socket.create_server(("127.0.0.1", 0))
    yield srv.getsockname()[1]
    srv.close()


def failing_urls(unused_port: Callable[[], int], tls_port: int, silent_port: int) -> dict[str, str]:
    return {
        "dns": "https://stream.nowhere.invalid/v2/stream/mediawiki.recentchange",
        "refused": f"http://127.0.0.1:{unused_port()}/v2/stream/mediawiki.recentchange",
        "tls": f"https://127.0.0.1:{tls_port}/v2/stream/mediawiki.recentchange",
        "timeout": f"http://127.0.0.1:{silent_port}/v2/stream/mediawiki.recentchange",
    }


EXPECTED = {
    "dns": ("DNS lookup of stream.nowhere.invalid failed", "set HTTPS_PROXY"),
    "refused": ("connection to 127.0.0.1:{port} refused", "nothing listens there"),
    "tls": ("TLS error talking to 127.0.0.1:{port} (wrong version number)", "https:// to a TLS port"),
    "timeout": ("no answer from 127.0.0.1:{port} in time", "check egress"),
}
RAW_TEXT = ("HTTPSConnectionPool", "HTTPConnectionPool", "Max retries", "NameResolutionError", "Errno",
            "ClientConnector", "ssl:default", "Traceback")


def check_summary(kind: str, url: str, text: str) -> None:
    from urllib.parse import urlsplit

    what, hint = EXPECTED[kind]
    assert what.format(port=urlsplit(url).port) in text and hint in text, text
    assert "\n" not in text and not any(raw in text for raw in RAW_TEXT), text


@pytest.mark.parametrize("kind", ["dns", "refused", "tls", "timeout"])
async def test_both_http_stacks_summarise_a_failed_connection_in_one_line(
        kind: str, unused_port: Callable[[], int], plain_tcp_server: int, silent_server: int) -> None:
    url = failing_urls(unused_port, plain_tcp_server, silent_server)[kind]
    with pytest.raises(requests.RequestException) as sync_info:
        await asyncio.to_thread(requests.get, url, timeout=1)
    problem = describe(sync_info.value, url)
    assert problem.kind == kind
    check_summary(kind, url, problem.summary)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_connect=1, sock_read=1)) as http:
        with pytest.raises(aiohttp.ClientError) as async_info:
            async with http.get(url) as r:
                await r.read()
    problem = describe(async_info.value, url)
    assert problem.kind == kind
    check_summary(kind, url, problem.summary)


@pytest.mark.parametrize("kind", ["dns", "refused", "tls"])
async def test_the_mediawiki_client_reports_the_summary(kind: str, unused_port: Callable[[], int],
                                                        plain_tcp_server: int, silent_server: int) -> None:
    url = failing_urls(unused_port, plain_tcp_server, silent_server)[kind]
    wiki = WikiSection(id="w", api_url=url)
    client = MediaWikiClient(wiki, user_agent=UA, proxies=Proxies.direct(), policy=RetryPolicy(retries=0), timeout=5)
    try:
        with pytest.raises(WikiUnreachable) as info:
            await client.get(url, what="probe", limit=1000)
    finally:
        await client.aclose()
    check_summary(kind, url, str(info.value))


@pytest.mark.parametrize("kind", ["dns", "refused", "tls", "timeout"])
async def test_the_stream_reader_says_connection_failed_never_disconnected(
        kind: str, unused_port: Callable[[], int], plain_tcp_server: int, silent_server: int,
        caplog: pytest.LogCaptureFixture) -> None:
    url = failing_urls(unused_port, plain_tcp_server, silent_server)[kind]
    cfg = EventStreamsSection(url=url, connect_timeout=1, read_timeout=1,
                              reconnect=ReconnectSection(initial_delay=0.01, max_delay=0.02))
    source = EventStreamsSource(cfg, user_agent=UA, checkpoints=MemoryCheckpoints(), metrics=Metrics(),
                                proxies=Proxies.direct())
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="service.sources.eventstreams")
    task = asyncio.create_task(source.run(asyncio.Queue(1), stop))

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "service.sources.eventstreams" and r.levelno == logging.WARNING]

    await until(lambda: len(failures()) >= 2, 15, what="two failed connection attempts logged")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert all(r.getMessage() == "eventstreams connection failed; retrying" for r in failures())
    assert source.last_error is not None and source.status().last_error == source.last_error
    check_summary(kind, url, source.last_error)
    check_summary(kind, url, failures()[0].__dict__["error"])


ERROR_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Wikimedia Error</title>
<style>body{font-family:sans-serif} .x{color:red}</style><script>var x = "<b>";</script></head>
<body><h1>Error</h1><p>Our servers are currently under maintenance or experiencing a technical problem.</p>
</body></html>"""


async def test_a_wrong_stream_url_shows_the_status_and_the_first_line_of_text_not_the_html() -> None:
    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text=ERROR_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        url = f"http://127.0.0.1:{port}/v2/stream/mediawiki.recentchangez"
        source = stream_source(url, Proxies.direct())
        with pytest.raises(SourceError) as info:
            await collect(source, 1, timeout=10)
    finally:
        await runner.cleanup()
    message = str(info.value)
    assert not info.value.retriable
    assert f"HTTP 404 from 127.0.0.1:{port}: Wikimedia Error" in message, message
    assert "<" not in message and "font-family" not in message and "\n" not in message, message


def test_page_text_and_status_summaries() -> None:
    assert page_text(ERROR_PAGE) == "Wikimedia Error"
    assert page_text("<html><body>\n\n<h1>Not &amp; Found</h1><p>more</p></body></html>") == "Not & Found"
    assert page_text('{"type": "not found", "detail": "x"}\nsecond line') == '{"type": "not found", "detail": "x"}'
    assert len(page_text("x" * 5000)) <= 160
    assert str(describe_status(503, "https://stream.wikimedia.org/v2/stream/x", b"")) == \
        "HTTP 503 from stream.wikimedia.org"


async def test_a_proxy_that_cannot_reach_the_host_is_named(unused_port: Callable[[], int]) -> None:
    proxy = await ForwardProxy().start()
    try:
        url = "https://stream.nowhere.invalid/v2/stream/mediawiki.recentchange"
        proxies = Proxies(https=proxy.url)
        with pytest.raises(requests.RequestException) as sync_info:
            await asyncio.to_thread(requests.get, url, timeout=5, proxies={"https": proxy.url})
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError) as async_info:
                async with http.get(url, proxy=proxy.url) as r:
                    await r.read()
        for exc in (sync_info.value, async_info.value):
            problem = describe(exc, url, proxy=proxies.for_url(url))
            assert problem.kind == "proxy", problem
            assert problem.summary.startswith(f"proxy {proxy.url} failed to reach stream.nowhere.invalid (HTTP 502"), \
                problem
        dead = f"http://127.0.0.1:{unused_port()}"
        with pytest.raises(requests.RequestException) as refused:
            await asyncio.to_thread(requests.get, url, timeout=5, proxies={"https": dead})
        problem = describe(refused.value, url, proxy=Proxies(https=dead).for_url(url))
        assert problem.kind == "proxy" and problem.summary.startswith(f"cannot connect to proxy {dead} "
                                                                      "(connection refused)"), problem
    finally:
        await proxy.stop()


# --------------------------------------------------------------------------- photodna log line


async def test_photodna_connection_failure_is_summarised(stores: Stores, unused_port: Callable[[], int],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PHOTODNA_KEY", "k")
    port = unused_port()
    cfg = PhotoDnaSection(enabled=True, url=f"http://127.0.0.1:{port}/photodna/v1.0/Match",
                          key=Secret(env="TEST_PHOTODNA_KEY"), rate=100, timeout=2, retries=0,
                          circuit=CircuitSection(failures=50, open_seconds=0.3, max_open_seconds=1.0))
    matcher = build_matcher(cfg, user_agent=UA, store=stores.budget, metrics=Metrics(),
                            proxies=Proxies.direct())
    await matcher.client.start()
    try:
        media = prepare(images.jpeg_bytes(images.photo(8102)), "0" * 40, ThumbnailSection(make_jpeg=True))
        with pytest.raises(PhotoDnaError) as info:
            await matcher.match(media)
    finally:
        await matcher.aclose()
    assert f"connection to 127.0.0.1:{port} refused" in str(info.value), info.value
    assert "ClientConnectorError" not in str(info.value)
