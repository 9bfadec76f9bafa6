from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.cli import main
from service.config import Secret, config_from_dict, load_config
from service.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def minimal(tmp_path: Path) -> dict:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    return {
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:1/api.php"}],
        "banks": {"list": [{"name": "b", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        "store": {"path": str(tmp_path / "db.sqlite3")},
    }


def problems(data: dict, tmp_path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, base=tmp_path)
    return dict(info.value.problems)


def test_shipped_config_is_valid() -> None:
    cfg = load_config(REPO / "config.yaml")
    assert cfg.wikis[0].id == "commonswiki"
    assert "upload.wikimedia.org" in cfg.wikis[0].allowed_hosts
    assert cfg.actions.notify.smtp is None  # report-only: .eml outbox
    assert Path(cfg.banks.list[0].path).is_file()


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = config_from_dict(minimal(tmp_path), base=tmp_path)
    assert cfg.pipeline.concurrency.fetch == 8
    assert cfg.fetch.thumb_width == 330
    assert cfg.cpu_workers >= 1


def test_unknown_key_wrong_type_and_impossible_values(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["pipeline"] = {"concurrency": {"fetch": -1, "thumbnail": "two"}, "queue_size": 0}
    data["bogus"] = 1
    data["actions"]["notify"]["recipients"] = ["not-an-address"]
    data["banks"]["list"].append({"name": "missing", "path": "nope.csv", "category": "terrorism"})
    found = problems(data, tmp_path)
    assert "unknown key" in found["bogus"]
    assert found["pipeline.concurrency.fetch"] == "must be >= 1, got -1"
    assert "integer" in found["pipeline.concurrency.thumbnail"]
    assert "pipeline.queue_size" in found
    assert "not an email address" in found["actions.notify.recipients[0]"]
    assert "does not exist" in found["banks.list[1].path"]


def test_user_agent_required_and_descriptive(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["service"]["user_agent"] = "python-requests/2.31"
    assert "service.user_agent" in problems(data, tmp_path)
    del data["service"]["user_agent"]
    assert "required" in problems(data, tmp_path)["service.user_agent"]


def test_inline_secret_refused(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["actions"]["notify"]["smtp"] = {"host": "localhost", "username": "u", "password": "hunter2"}
    found = problems(data, tmp_path)
    assert "secrets are not allowed" in found["actions.notify.smtp.password"]
    assert "hunter2" not in str(found)


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM_TEST_SECRET", "from-env")
    assert Secret(env="MM_TEST_SECRET").get() == "from-env"
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    assert Secret(file=str(f)).get() == "from-file"
    assert "from-env" not in repr(Secret(env="MM_TEST_SECRET"))


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal(tmp_path)))
    assert main(["check-config", str(good)]) == 0
    bad_data = minimal(tmp_path)
    bad_data["pipeline"] = {"concurrency": {"act": -3}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(bad_data))
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(bad)])
    assert info.value.code == 2
    assert "pipeline.concurrency.act: must be >= 1, got -3" in capsys.readouterr().err


def test_check_config_on_unparseable_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: [unclosed\n")
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(bad)])
    assert info.value.code == 2
    assert "invalid YAML" in capsys.readouterr().err
