"""Shared fixtures: the real parts tests run against (MediaWiki, EventStreams look-alike, SMTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.store import Stores, sqlite_stores
from tests.infra.kafka import TansuBroker
from tests.infra.mediawiki import MediaWikiServer, free_port, missing_prerequisites
from tests.infra.photodna_server import PhotoDnaServer
from tests.infra.postgres import PostgresUnavailable, TestDatabase
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer


@pytest.fixture(scope="session")
def mediawiki() -> Iterator[MediaWikiServer]:
    """One real wiki (Debian MediaWiki 1.39 on SQLite, served by ``php -S``) for the whole session."""
    missing = missing_prerequisites()
    if missing:
        pytest.fail(
            "the MediaWiki test server cannot run, missing: " + "; ".join(missing)
            + ". Run the suite with `bash scripts/test.sh`, which installs them.",
            pytrace=False,
        )
    server = MediaWikiServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A capturing SMTP server on 127.0.0.1 (no AUTH); ``stop()``/``start()`` keep its port."""
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def sse_server() -> AsyncIterator[EventStreamsServer]:
    """An EventStreams look-alike running in the test's event loop."""
    server = EventStreamsServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def unused_port() -> Callable[[], int]:
    """A factory of free TCP ports on 127.0.0.1: ``port = unused_port()``."""
    return free_port


# ---------------------------------------------------------------------------------------------
# Project fixtures (added by the lead) go below this line.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    """The SQLite store in the test's directory, open (the one store fixture; see tests/store for the rest)."""
    s = sqlite_stores(str(tmp_path / "db.sqlite3"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def pg_database() -> Iterator[TestDatabase]:
    """An empty PostgreSQL database of its own on the local test server, dropped afterwards."""
    db = TestDatabase()
    try:
        db.create()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield db
    db.drop()


@pytest.fixture(scope="module")
def broker() -> Iterator[TansuBroker]:
    """A Kafka-protocol broker (Tansu) per test module; tests make their own topics and groups."""
    with TansuBroker() as b:
        yield b


@pytest.fixture
def photodna_server() -> Iterator[Callable[..., PhotoDnaServer]]:
    """Starts PhotoDNA stand-ins, ``photodna_server(keys=[KEY], **options)``, each stopped after the test."""
    started: list[PhotoDnaServer] = []

    def start(**options: Any) -> PhotoDnaServer:
        server = PhotoDnaServer(**options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()
