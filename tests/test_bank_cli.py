"""``mediamoderation bank ...``: curated bank edits, import formats, export, sync against a stand-in, list."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from service.cli import EXIT_CONFIG, EXIT_OK, main
from service.cli.exits import EXIT_UPSTREAM
from tests.infra.exchanges import (
    STOPNCII_FETCH_KEY,
    STOPNCII_SUBSCRIPTION_KEY,
    ExchangeStandIn,
    Record,
    now,
    random_hash,
)


@pytest.fixture
def standin() -> Iterator[ExchangeStandIn]:
    server = ExchangeStandIn(page_size=40)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def config(tmp_path: Path, standin: ExchangeStandIn, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STOPNCII_KEYS", f"{STOPNCII_FETCH_KEY},{STOPNCII_SUBSCRIPTION_KEY}")
    (tmp_path / "curated.csv").write_text("hash,category,source,id\n")
    cfg = {
        "service": {"user_agent": "mm-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "w", "api_url": "https://w.example/api.php"}],
        "actions": {"notify": {"enabled": False}},
        "store": {"path": str(tmp_path / "db.sqlite3")},
        "banks": {"allowed_hosts": [f"127.0.0.1:{standin.port}"], "list": [
            {"name": "curated", "path": "curated.csv", "category": "child-protection"},
            {"name": "stopncii", "category": "ncii", "exchange": {
                "type": "stopncii", "credentials": {"env": "STOPNCII_KEYS"}, "base_url": standin.url("stopncii")}},
        ]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_curated_bank_add_remove_import_export(config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sha1, pdq = random_hash("sha1"), random_hash("pdq")
    assert main(["bank", "add", "-c", config, "curated", sha1.upper(), "--id", "case-1"]) == EXIT_OK
    assert main(["bank", "add", "-c", config, "curated", sha1, "--id", "case-1"]) == EXIT_OK  # already there
    assert main(["bank", "add", "-c", config, "curated", "xyz"]) == EXIT_CONFIG
    assert main(["bank", "add", "-c", config, "stopncii", sha1]) == EXIT_CONFIG  # not a local bank
    te = tmp_path / "te.txt"
    te.write_text(f"pdq {pdq}\nvideo_md5 {random_hash('md5')}\n")
    assert main(["bank", "import", "-c", config, str(te), "--bank", "curated", "--source", "pytx"]) == EXIT_OK
    jl = tmp_path / "more.jsonl"
    jl.write_text(json.dumps({"hash": random_hash("md5"), "category": "terrorism", "source": "x", "id": "9"}) + "\n")
    assert main(["bank", "import", "-c", config, str(jl), "--bank", "curated"]) == EXIT_OK
    bad = tmp_path / "bad.txt"
    bad.write_text("tmk 00ff\n")
    assert main(["bank", "import", "-c", config, str(bad), "--bank", "curated"]) == EXIT_CONFIG
    assert main(["bank", "remove", "-c", config, "curated", pdq]) == EXIT_OK
    assert main(["bank", "remove", "-c", config, "curated", pdq]) == EXIT_CONFIG
    capsys.readouterr()
    assert main(["bank", "export", "-c", config, "curated", "--format", "jsonl"]) == EXIT_OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert next((r["hash"], r["id"]) for r in rows) == (sha1, "case-1") and len(rows) == 3
    assert {r["category"] for r in rows} == {"child-protection", "terrorism"}


def test_bank_sync_then_list(config: str, standin: ExchangeStandIn, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(90):
        standin.add("stopncii", Record(str(i), now() - 100 + i, {"pdq": random_hash("pdq")}))
    standin.add("stopncii", Record("t", now() - 50, {"tmk": "00"}))
    assert main(["bank", "sync", "-c", config, "nope"]) == EXIT_CONFIG
    assert main(["bank", "sync", "-c", config]) == EXIT_OK
    capsys.readouterr()
    assert main(["bank", "list", "-c", config, "--json"]) == EXIT_OK
    listed = {row["bank"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert listed["stopncii"]["hashes"] == {"pdq": 90} and listed["stopncii"]["last_sync"]
    assert listed["stopncii"]["categories"] == {"pdq": {"ncii": 90}} and listed["curated"]["hashes"] == {}
    standin.fail_next("stopncii", 401, count=1)
    assert main(["bank", "sync", "-c", config, "stopncii"]) == EXIT_UPSTREAM
    capsys.readouterr()
    assert main(["bank", "list", "-c", config]) == EXIT_OK
    text = capsys.readouterr().out
    assert "stopncii" in text and "HTTP 401" in text
