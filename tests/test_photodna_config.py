"""The ``photodna`` config section: defaults, validation with key paths, derived JPEG output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.cli import main
from service.config import config_from_dict, warnings_for
from tests.test_config import minimal, problems


def test_defaults_are_off_and_documented_values(tmp_path: Path) -> None:
    cfg = config_from_dict(minimal(tmp_path), base=tmp_path)
    p = cfg.photodna
    assert not p.enabled and not cfg.thumbnail.make_jpeg
    assert p.url == "https://api.microsoftmoderator.com/photodna/v1.0/Match"
    assert (p.rate, p.monthly_budget, p.default_category, p.call_when_local_match) == (5.0, 10_000_000,
                                                                                     "child-protection", False)
    assert p.rescan.age_days == 90 and p.rescan.retry_delays[0] == 60


def test_enabling_photodna_turns_on_the_jpeg_the_matcher_sends(tmp_path: Path) -> None:
    data = minimal(tmp_path) | {"photodna": {"enabled": True, "key": {"env": "PHOTODNA_KEY"},
                                             "categories": [{"source": "NCMEC", "violations": ["A1"],
                                                             "category": "csam"}]}}
    cfg = config_from_dict(data, base=tmp_path)
    assert cfg.thumbnail.make_jpeg and cfg.photodna.categories[0].violations == ("A1",)


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    data = minimal(tmp_path) | {
        "thumbnail": {"jpeg_min_side": 100, "jpeg_max_bytes": 5_000_000},
        "photodna": {
            "enabled": True, "url": "ftp://x", "rate": 0, "monthly_budget": 0, "retries": -1,
            "backoff": {"initial_delay": 2, "max_delay": 1}, "circuit": {"failures": 0},
            "categories": [{"source": "x"}], "default_category": "",
            "rescan": {"age_days": 0, "batch": 0, "budget_reserve": 1.5, "retry_delays": [60, -1]},
        },
    }
    found = problems(data, tmp_path)
    for key in ("photodna.key", "photodna.url", "photodna.rate", "photodna.monthly_budget", "photodna.retries",
                "photodna.backoff", "photodna.circuit.failures", "photodna.categories[0].category",
                "photodna.default_category", "photodna.rescan.age_days", "photodna.rescan.batch",
                "photodna.rescan.budget_reserve", "photodna.rescan.retry_delays[1]", "thumbnail.jpeg_min_side",
                "thumbnail.jpeg_max_bytes"):
        assert key in found, (key, found)
    assert "required when photodna is enabled" in found["photodna.key"]


def test_the_key_never_lives_in_the_yaml(tmp_path: Path) -> None:
    data = minimal(tmp_path) | {"photodna": {"enabled": True, "key": "0123456789abcdef"}}
    assert "secrets are not allowed" in problems(data, tmp_path)["photodna.key"]


def test_check_config_exits_2_on_a_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHOTODNA_TEST_KEY", raising=False)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(minimal(tmp_path) | {"photodna": {"enabled": True, "rate": -1}}))
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "photodna.rate: must be > 0" in err and "photodna.key" in err

    path.write_text(yaml.safe_dump(minimal(tmp_path) | {"photodna": {"enabled": True,
                                                                     "key": {"env": "PHOTODNA_TEST_KEY"}}}))
    with pytest.raises(SystemExit) as info:  # issue 9: an unset secret is an error, not a warning
        main(["check-config", str(path)])
    assert info.value.code == 2
    assert "photodna.key: no secret available: environment variable PHOTODNA_TEST_KEY is not set" in \
        capsys.readouterr().err
    cfg = config_from_dict(yaml.safe_load(path.read_text()), base=tmp_path)
    assert any("photodna.key: no key is available" in w for w in warnings_for(cfg))  # at run time, if it goes
    monkeypatch.setenv("PHOTODNA_TEST_KEY", "k")
    assert main(["check-config", str(path)]) == 0
    assert not any("photodna" in w for w in warnings_for(cfg))
