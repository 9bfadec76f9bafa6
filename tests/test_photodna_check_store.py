"""``photodna check`` counts its request against the monthly budget in the configured store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.infra import images
from tests.infra.photodna_server import PhotoDnaServer
from tests.infra.postgres import TestDatabase

KEY = "check-store-key"


@pytest.fixture
def server(photodna_server: Callable[..., PhotoDnaServer]) -> PhotoDnaServer:
    return photodna_server(keys=[KEY])


def budget_used(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COALESCE(SUM(used), 0) FROM budgets").fetchone()
    return int(row[0]) if row else 0


def test_photodna_check_spends_the_budget_of_the_configured_postgresql_store(
    tmp_path: Path, server: PhotoDnaServer, capsys: pytest.CaptureFixture[str],
) -> None:
    with TestDatabase() as postgres:
        check_against(postgres, tmp_path, server, capsys)


def check_against(postgres: TestDatabase, tmp_path: Path, server: PhotoDnaServer,
                  capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    (tmp_path / "key").write_text(KEY)
    sqlite_path = tmp_path / "db.sqlite3"
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "service": {"user_agent": "mm-test/0 (ts@example.org)"},
        "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:1/api.php"}],
        "banks": {"list": [{"name": "b", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        "photodna": {"enabled": True, "url": server.url, "key": {"file": str(tmp_path / "key")}, "retries": 0},
        "store": {"url": postgres.url, "path": str(sqlite_path)},
    }))
    image = tmp_path / "photo.jpg"
    image.write_bytes(images.jpeg_bytes(images.photo(8004)))

    assert main(["photodna", "check", str(image), "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["is_match"] is False
    assert len(server.records) == 1
    assert budget_used(postgres.url) == 1  # counted where the service's replicas count theirs
    assert not sqlite_path.exists()  # and not in a SQLite file nobody else reads
