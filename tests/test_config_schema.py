"""Issue 11, config: pydantic validation with file:line:column, environment overrides, schema, show, reference."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.cli import main
from service.config import ConfigFileError, config_from_dict, load_config, warnings_for
from service.config.loader import _yaml_off_is_a_mode
from service.config.reference import reference_markdown, schema_text

REPO = Path(__file__).resolve().parent.parent

FIVE_MISTAKES = """\
service:
  user_agent: "mediamoderation-test/0.1 (ts@example.org)"
  log_level: verbose
http:
  port: "8080"
wikis:
  - id: testwiki
    api_url: http://127.0.0.1:1/api.php
fetch:
  timout: 5
banks:
  list:
    - name: a
      path: bank.csv
      category: child-protection
      pdq_threshold: 300
    - name: b
      path: missing.csv
      category: child-protection
actions:
  notify: {sender: mm@example.org, recipients: [ts@example.org]}
store: {path: db.sqlite3}
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "bank.csv").write_text("hash,category,source,id\n")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_five_mistakes_are_reported_at_once_with_file_line_and_column(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, FIVE_MISTAKES)
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    expected = [
        (3, 3, "service.log_level", "must be one of 'debug', 'info', 'warning', 'error', got 'verbose'"),
        (5, 3, "http.port", "must be an integer, got '8080'"),
        (10, 3, "fetch.timout", "unknown key (known: batch_size, max_bytes, max_redirects, maxlag, min_side, "
                                "originals, retries, retry_delay, thumb_width, timeout)"),
        (16, 7, "banks.list[0].pdq_threshold", "must be <= 100, got 300: a larger PDQ distance matches nearly "
                                               "any image"),
        (18, 7, "banks.list[1].path", f"file does not exist: {tmp_path / 'missing.csv'}"),
    ]
    for line, column, key, message in expected:
        assert f"{path}:{line}:{column}: {key}: {message}" in err, err
    assert len([x for x in err.splitlines() if x.startswith(f"  {path}:")]) == 5, err


def test_a_problem_with_a_key_not_in_the_file_points_at_its_section(tmp_path: Path) -> None:
    path = write(tmp_path, FIVE_MISTAKES.replace('  user_agent: "mediamoderation-test/0.1 (ts@example.org)"\n', ""))
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert info.value.where("service.user_agent") == f"{path}:1:1"  # the service: mapping


def test_yaml_syntax_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "service: [unclosed\n")
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    [(key, message)] = info.value.problems
    assert key == "<file>" and f'in "{path}", line' in message and "<unicode string>" not in message
    path.write_text("service: \x07\n")  # refused by the reader, before parsing
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert f'"{path}"' in info.value.problems[0][1] and "<unicode string>" not in info.value.problems[0][1]


def test_log_level_in_any_case(tmp_path: Path) -> None:
    path = write(tmp_path, FIVE_MISTAKES)
    data = yaml.safe_load(FIVE_MISTAKES)
    data["service"]["log_level"] = "INFO"
    data["banks"]["list"] = data["banks"]["list"][:1]
    data["banks"]["list"][0]["pdq_threshold"] = 31
    del data["http"], data["fetch"]
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).service.log_level == "info"
    data["service"]["log_level"] = "Warning"
    assert config_from_dict(data, base=tmp_path).service.log_level == "warning"


def valid(tmp_path: Path) -> dict:
    data = yaml.safe_load(FIVE_MISTAKES)
    data["service"]["log_level"] = "info"
    data["banks"]["list"] = data["banks"]["list"][:1]
    data["banks"]["list"][0]["pdq_threshold"] = 31
    del data["http"], data["fetch"]
    write(tmp_path, "")
    return data


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(valid(tmp_path)))
    monkeypatch.setenv("MEDIAMODERATION__FETCH__TIMEOUT", "5")
    monkeypatch.setenv("MEDIAMODERATION__SERVICE__LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("MEDIAMODERATION__PIPELINE__CONCURRENCY__FETCH", "3")
    monkeypatch.setenv("MEDIAMODERATION__HTTP__ENABLED", "false")
    cfg = load_config(path)
    assert cfg.fetch.timeout == 5.0
    assert cfg.service.log_level == "debug"
    assert cfg.pipeline.concurrency.fetch == 3 and cfg.pipeline.concurrency.act == 4  # the rest stays
    assert cfg.http.enabled is False
    assert cfg.wikis[0].id == "testwiki"
    assert load_config(path, environment=False).fetch.timeout == 30.0

    monkeypatch.setenv("MEDIAMODERATION__FETCH__TIMEOUT", "soon")
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert "environment variable MEDIAMODERATION__FETCH__TIMEOUT: fetch.timeout: must be a number, got 'soon'" \
        in info.value.lines()


def test_environment_cannot_carry_a_secret_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(valid(tmp_path)))
    monkeypatch.setenv("MEDIAMODERATION__PHOTODNA__KEY", "s3cr3t")
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert "secrets are not allowed" in dict(info.value.problems)["photodna.key"]
    assert "s3cr3t" not in str(info.value.problems)
    monkeypatch.setenv("MEDIAMODERATION__PHOTODNA__KEY__ENV", "PHOTODNA_KEY")
    monkeypatch.delenv("MEDIAMODERATION__PHOTODNA__KEY")
    assert load_config(path).photodna.key.env == "PHOTODNA_KEY"


def test_pdq_threshold_too_high_names_the_consequence(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["banks"]["list"][0]["pdq_threshold"] = 200
    with pytest.raises(ConfigFileError) as info:
        config_from_dict(data, base=tmp_path)
    assert dict(info.value.problems)["banks.list[0].pdq_threshold"] == \
        "must be <= 100, got 200: a larger PDQ distance matches nearly any image (31 is the usual threshold)"
    data["banks"]["list"][0]["pdq_threshold"] = 100
    assert config_from_dict(data, base=tmp_path).banks.list[0].pdq_threshold == 100


def test_takedown_category_no_bank_produces_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = valid(tmp_path)
    data["actions"]["takedown"] = {"mode": "auto", "categories": ["childprotection"],
                                   "auth": {"username": "A@b", "password": {"env": "X"}}}
    cfg = config_from_dict(data, base=tmp_path)
    [warning] = [w for w in warnings_for(cfg) if w.startswith("actions.takedown.categories")]
    assert warning == ("actions.takedown.categories: no bank produces 'childprotection', so auto-takedown never "
                       "applies to it (categories produced: child-protection)")
    data["actions"]["takedown"]["categories"] = ["child-protection"]
    assert not [w for w in warnings_for(config_from_dict(data, base=tmp_path)) if "no bank produces" in w]
    data["actions"]["takedown"]["categories"] = ["terrorism"]  # PhotoDNA can produce it
    data["photodna"] = {"enabled": True, "key": {"env": "X"}, "categories": [{"category": "terrorism"}]}
    assert not [w for w in warnings_for(config_from_dict(data, base=tmp_path)) if "no bank produces" in w]


def test_shipped_schema_is_the_generated_one_and_the_shipped_config_validates(
        capsys: pytest.CaptureFixture[str]) -> None:
    shipped = (REPO / "config.schema.json").read_text()
    assert shipped == schema_text(), "run: mediamoderation config schema -o config.schema.json"
    assert main(["config", "schema"]) == 0
    assert capsys.readouterr().out == shipped
    schema = json.loads(shipped)
    jsonschema.Draft202012Validator.check_schema(schema)
    text = (REPO / "config.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=./config.schema.json\n")
    data = _yaml_off_is_a_mode(yaml.safe_load(text))  # as the loader reads YAML 1.1's off
    jsonschema.validate(data, schema)
    for bad in ({**data, "bogus": 1}, {**data, "banks": {"list": [{"name": "x", "pdq_threshold": 300}]}},
                {**data, "http": {"port": "8080"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_docs_configuration_reference_is_up_to_date() -> None:
    assert (REPO / "docs" / "configuration.md").read_text() == reference_markdown(), \
        "run: mediamoderation config reference -o docs/configuration.md"
    text = reference_markdown()
    for key in ("service.log_level", "banks.list[].pdq_threshold", "actions.takedown.categories",
                "photodna.rescan.retry_delays", "wikis[].api_url"):
        assert f"| `{key}` |" in text, key
    assert re.search(r"\| `banks.list\[\].pdq_threshold` \| integer \| `31` \| >= 0, <= 100 \| PDQ", text)


def test_config_show_prints_effective_config_with_secrets_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = valid(tmp_path)
    data["photodna"] = {"enabled": True, "key": {"env": "MM_SHOW_KEY"}}
    data["store"] = {"path": "db.sqlite3", "url": "postgresql://mm:hunter2@db.example.org/mm"}
    data["review"] = {"reviewers": [{"name": "ann", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("MM_SHOW_KEY", "pdna-secret-value")
    monkeypatch.setenv("MEDIAMODERATION__FETCH__TIMEOUT", "7")
    assert main(["config", "show", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    for secret in ("pdna-secret-value", "hunter2", "$argon2id"):
        assert secret not in out
    shown = yaml.safe_load(out)
    assert shown["photodna"]["key"] == {"env": "MM_SHOW_KEY", "value": "********"}
    assert shown["store"]["url"] == "postgresql://mm:********@db.example.org/mm"
    assert shown["review"]["reviewers"][0] == {"name": "ann", "password_hash": "********"}
    assert shown["fetch"]["timeout"] == 7.0  # the environment override is in effect
    assert shown["pipeline"]["concurrency"]["fetch"] == 8  # defaults are shown
    assert shown["banks"]["list"][0]["path"] == str(tmp_path / "bank.csv")  # resolved


def test_a_whole_list_from_the_environment_is_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(valid(tmp_path)))
    monkeypatch.setenv("MEDIAMODERATION__WIKIS", '[{"id": "otherwiki", "api_url": "https://w.example/api.php"}]')
    assert [w.id for w in load_config(path).wikis] == ["otherwiki"]
    monkeypatch.setenv("MEDIAMODERATION__WIKIS", "[not json")
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert "environment variable MEDIAMODERATION__WIKIS: wikis: must be a list, got '[not json'" in info.value.lines()


def test_checks_carried_by_field_types_keep_their_messages(tmp_path: Path) -> None:
    data = valid(tmp_path)
    data["source"] = {"eventstreams": {"since": "yesterday"}, "mwapi": {"since": "2026-11-24T00:00:00Z"}}
    data["review"] = {"escalate_recipients": ["ts@example.org", "bob"]}
    data["thumbnail"] = {"formats": ["JPEG", "XCF"]}
    data["pipeline"] = {"cpu_workers": 0}
    with pytest.raises(ConfigFileError) as info:
        config_from_dict(data, base=tmp_path)
    assert dict(info.value.problems) == {
        "source.eventstreams.since": "not an ISO 8601 time or Unix milliseconds: 'yesterday'",
        "review.escalate_recipients[1]": "not an email address: 'bob'",
        "thumbnail.formats[1]": "must be one of 'JPEG', 'PNG', 'GIF', 'WEBP', 'BMP', 'TIFF', 'MPO', got 'XCF'",
        "pipeline.cpu_workers": "must be >= 1, got 0",
    }
