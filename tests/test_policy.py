"""Takedown policy, planners (idempotency keys, per-category recipients) and their configuration."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.actions.notify import EmailNotifier
from service.actions.plan import build_planners, notify_planner, recipients_for
from service.actions.policy import TakedownPolicy
from service.config import TakedownSection, config_from_dict, warnings_for
from service.errors import ConfigError
from service.metrics import Metrics
from service.models import Match, UploadEvent
from service.store.base import OutboxItem
from tests.infra.smtp import SmtpServer

SHA1 = "c6bafc12cb88488369fad574226e2b6d72617f8d"


def event(title: str = "File:X.jpg") -> UploadEvent:
    return UploadEvent(event_id="e1", wiki="testwiki", title=title, server_url="https://w.example",
                       page_url=f"https://w.example/wiki/{title}", uploader="U", log_action="upload",
                       upload_time=datetime(2026, 1, 1, tzinfo=UTC), sha1=SHA1)


def match(category: str, bank: str = "b") -> Match:
    return Match(matcher="sha1", bank=bank, category=category, hash_id="h1", hash_value=SHA1)


def config(tmp_path: Path, **overrides: Any) -> Any:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    data: dict[str, Any] = {
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:1/api.php"}],
        "banks": {"list": [{"name": "b", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        "store": {"path": str(tmp_path / "db.sqlite3")},
    }
    for key, value in overrides.items():
        if key == "takedown":
            data["actions"]["takedown"] = value
        elif key == "notify":
            data["actions"]["notify"].update(value)
        else:
            data[key] = value
    return config_from_dict(data, base=tmp_path)


@pytest.mark.parametrize(("mode", "categories", "expected"), [
    ("off", ["child-protection"], "none"),
    ("review", ["child-protection"], "review"),
    ("dry-run", ["child-protection"], "dry-run"),
    ("dry-run", ["terrorism"], "review"),
    ("auto", ["child-protection"], "delete"),
    ("auto", ["terrorism"], "review"),
    ("auto", ["terrorism", "child-protection"], "delete"),
])
def test_policy_plan(mode: str, categories: list[str], expected: str) -> None:
    assert TakedownPolicy(TakedownSection(mode=mode)).plan(categories) == expected  # type: ignore[arg-type]


def test_terrorism_is_automatic_only_when_listed() -> None:
    assert TakedownPolicy(TakedownSection(mode="auto")).plan(["terrorism"]) == "review"
    listed = TakedownSection(mode="auto", categories=("child-protection", "terrorism"))
    assert TakedownPolicy(listed).plan(["terrorism"]) == "delete"


def test_confirm_kind_per_mode() -> None:
    assert TakedownPolicy(TakedownSection(mode="off")).confirm_kind is None
    assert TakedownPolicy(TakedownSection(mode="dry-run")).confirm_kind == "dryrun"
    assert TakedownPolicy(TakedownSection(mode="review")).confirm_kind == "takedown"
    assert TakedownPolicy(TakedownSection(mode="auto")).confirm_kind == "takedown"


def test_auto_mode_plans_a_takedown_next_to_the_email_with_stable_keys(tmp_path: Path) -> None:
    cfg = config(tmp_path, takedown={"mode": "auto", "auth": {"username": "A@b", "password": {"env": "X"}}})
    planners = build_planners(cfg)
    actions = [a for p in planners for a in p(event(), SHA1, [match("child-protection")])]
    assert sorted(a.key for a in actions) == [f"notify:testwiki:File:X.jpg:{SHA1}",
                                               f"takedown:testwiki:File:X.jpg:{SHA1}"]
    take = next(a for a in actions if a.kind == "takedown")
    assert take.payload["dry_run"] is False and take.payload["requested_by"] == "auto"
    assert take.payload["title"] == "File:X.jpg" and take.payload["sha1"] == SHA1
    mail = next(a for a in actions if a.kind == "notify")
    assert any("automatic takedown started" in line for line in mail.payload["done"])
    # The same upload planned again (replay, restart) yields the same keys: the store adds nothing twice.
    again = [a for p in planners for a in p(event(), SHA1, [match("child-protection")])]
    assert [a.key for a in again] == [a.key for a in actions]
    # Terrorism: an email, no takedown.
    terror = [a for p in planners for a in p(event("File:T.jpg"), SHA1, [match("terrorism")])]
    assert [a.kind for a in terror] == ["notify"]
    assert any("no automatic takedown for terrorism" in line for line in terror[0].payload["done"])


@pytest.mark.parametrize(("mode", "kinds", "text"), [
    ("off", ["notify"], "takedown is off"),
    ("review", ["notify"], "waiting for review"),
    ("dry-run", ["notify", "takedown"], "dry-run"),
])
def test_other_modes_plan(tmp_path: Path, mode: str, kinds: list[str], text: str) -> None:
    cfg = config(tmp_path, takedown={"mode": mode})
    actions = [a for p in build_planners(cfg) for a in p(event(), SHA1, [match("child-protection")])]
    assert [a.kind for a in actions] == kinds
    assert any(text in line for line in actions[0].payload["done"])
    if mode == "dry-run":
        assert actions[1].key.startswith("dryrun:") and actions[1].payload["dry_run"] is True


def test_per_category_recipients(tmp_path: Path) -> None:
    cfg = config(tmp_path, notify={"categories": [
        {"category": "terrorism", "recipients": ["ct@example.org"]},
        {"category": "child-protection", "recipients": ["cp@example.org", "ts@example.org"]},
    ]})
    n = cfg.actions.notify
    assert recipients_for(n, ["terrorism"]) == ["ct@example.org"]
    assert recipients_for(n, ["child-protection", "terrorism"]) == ["cp@example.org", "ts@example.org",
                                                                   "ct@example.org"]
    assert recipients_for(n, ["other"]) == ["ts@example.org"]  # no list of its own: the default list
    [action] = notify_planner(n)(event(), SHA1, [match("terrorism")])
    assert action.payload["recipients"] == ["ct@example.org"]


def test_check_config_warns_when_terrorism_is_automatic(tmp_path: Path) -> None:
    auth = {"username": "A@b", "password": {"env": "X"}}
    quiet = config(tmp_path, takedown={"mode": "auto", "auth": auth})
    assert not any("terrorism" in w for w in warnings_for(quiet))
    loud = config(tmp_path, takedown={"mode": "auto", "auth": auth, "categories": ["child-protection", "terrorism"]})
    assert any("terrorism" in w and "without a human review" in w for w in warnings_for(loud))


def test_mode_off_in_yaml_is_the_string_off(tmp_path: Path) -> None:
    data = yaml.safe_load("takedown: {mode: off}")  # YAML 1.1: off is False
    assert data["takedown"]["mode"] is False
    assert config(tmp_path, takedown=data["takedown"]).actions.takedown.mode == "off"


def test_takedown_and_review_config_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config(tmp_path, takedown={"mode": "auto"},
               review={"reviewers": [{"name": "a", "password_hash": "plain"}, {"name": "a", "password_hash": ""}],
                       "escalate_recipients": ["nope"], "blur_radius": 1})
    problems = dict(info.value.problems)
    assert "required when mode is auto" in problems["actions.takedown.auth"]
    assert "argon2" in problems["review.reviewers[0].password_hash"]
    assert "duplicate" in problems["review.reviewers[1].name"]
    assert "not an email" in problems["review.escalate_recipients[0]"]
    assert "review.blur_radius" in problems
    with pytest.raises(ConfigError) as info:
        config(tmp_path, takedown={"mode": "review", "auth": {"username": "nobot", "password": "inline"}})
    problems = dict(info.value.problems)
    assert "secrets are not allowed" in problems["actions.takedown.auth.password"]
    with pytest.raises(ConfigError) as info:
        config(tmp_path, takedown={"auth": {"method": "oauth2"}})
    assert "OAuth 2 access token" in dict(info.value.problems)["actions.takedown.auth.token"]


def test_default_is_review_mode_with_child_protection_only(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert cfg.actions.takedown.mode == "review"
    assert cfg.actions.takedown.categories == ("child-protection",)
    assert any("confirmed takedowns cannot run" in w for w in warnings_for(cfg))


async def test_email_goes_to_the_payload_recipients_with_its_alert(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """Per-category routing, escalations and takedown alerts name their recipients in the payload."""
    cfg = config(tmp_path, notify={"smtp": {"host": "127.0.0.1", "port": smtp_server.port, "security": "none"},
                                   "categories": [{"category": "terrorism", "recipients": ["ct@example.org"]}]})
    [action] = notify_planner(cfg.actions.notify)(event(), SHA1, [match("terrorism")])
    payload = {**action.payload, "alert": "TAKEDOWN FAILED: no delete right", "subject_prefix": "ALERT:"}
    item = OutboxItem(id=1, key=action.key, kind="notify", payload=payload)
    assert await EmailNotifier(cfg.actions.notify, Metrics(), wikis=cfg.wikis).perform(item) == "sent"
    [mail] = await smtp_server.wait_for_async(1)
    assert mail.rcpt_tos == ("ct@example.org",)
    assert str(mail.message["To"]) == "ct@example.org"
    assert str(mail.message["Subject"]).startswith("[mediamoderation] ALERT: terrorism match")
    body = mail.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert body.startswith("*** TAKEDOWN FAILED: no delete right ***")
