"""Clients other than WikiClient never follow a redirect: not to another host, not to another port.

Each talks to its one configured URL (the wiki's api.php, PhotoDNA's endpoint).  A real aiohttp server
answers every request with a redirect to a second real server on another port of the same host; the
second server must never see a request.  (WikiClient, which does follow redirects within the allowlist,
is tested in test_fetch.py; the review preview uses WikiClient.)
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from service.config import PhotoDnaSection, Secret, WikiAuthSection, WikiSection
from service.errors import ServiceError
from service.matchers.photodna import build_matcher
from service.mediawiki import WikiApi
from service.metrics import Metrics
from service.sources.mwapi import polling_client
from service.store import sqlite_stores
from tests.infra import images

UA = "mediamoderation-test/0.1 (ts@example.org)"


@dataclass
class Server:
    port: int = 0
    seen: list[str] = field(default_factory=list)


async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    await web.SockSite(runner, sock).start()
    return runner, port


@pytest.fixture
async def redirecting() -> AsyncIterator[tuple[Server, Server]]:
    """(entry, trap): the entry redirects everything (307, method kept) to the trap on another port."""
    entry, trap = Server(), Server()

    async def to_trap(request: web.Request) -> web.Response:
        entry.seen.append(request.path)
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{trap.port}{request.path_qs}")

    async def record(request: web.Request) -> web.Response:
        trap.seen.append(request.path)
        return web.json_response({"batchcomplete": True, "query": {}})

    trap_runner, trap.port = await serve(record)
    entry_runner, entry.port = await serve(to_trap)
    yield entry, trap
    await entry_runner.cleanup()
    await trap_runner.cleanup()


async def test_the_polling_source_does_not_follow_a_redirect(redirecting: tuple[Server, Server]) -> None:
    entry, trap = redirecting
    wiki = WikiSection(id="w", api_url=f"http://127.0.0.1:{entry.port}/api.php")
    client = polling_client(wiki, user_agent=UA, metrics=Metrics(), retries=0)
    try:
        with pytest.raises(ServiceError):
            await client.query({"list": "logevents"}, what="logevents")
    finally:
        await client.aclose()
    assert entry.seen == ["/api.php"] and trap.seen == []


async def test_the_takedown_api_client_does_not_follow_a_redirect(
        redirecting: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch) -> None:
    entry, trap = redirecting
    monkeypatch.setenv("TEST_BOT_PASSWORD", "x" * 32)
    wiki = WikiSection(id="w", api_url=f"http://127.0.0.1:{entry.port}/api.php")
    api = WikiApi(wiki, WikiAuthSection(username="Admin@mm", password=Secret(env="TEST_BOT_PASSWORD")), UA,
                  Metrics(), timeout=5.0)
    try:
        with pytest.raises(ServiceError):
            await api.account()
    finally:
        await api.aclose()
    assert entry.seen and trap.seen == []


async def test_photodna_does_not_follow_a_redirect(
        redirecting: tuple[Server, Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry, trap = redirecting
    monkeypatch.setenv("TEST_PHOTODNA_KEY", "k" * 32)
    cfg = PhotoDnaSection(enabled=True, url=f"http://127.0.0.1:{entry.port}/photodna/v1.0/Match",
                          key=Secret(env="TEST_PHOTODNA_KEY"), timeout=5.0, retries=0)
    stores = sqlite_stores(str(tmp_path / "db.sqlite3"))
    await stores.open()
    matcher = build_matcher(cfg, user_agent=UA, store=stores.budget, metrics=Metrics())
    await matcher.client.start()
    try:
        with pytest.raises(ServiceError):
            await matcher.client.check(images.jpeg_bytes(images.photo(5)))
    finally:
        await matcher.aclose()
        await stores.close()
    assert entry.seen == ["/photodna/v1.0/Match"] and trap.seen == []
