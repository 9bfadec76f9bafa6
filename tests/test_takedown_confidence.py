"""Takedown confidence (issue 13): per category, automatic takedown only for confident matches; the reason otherwise;
check-config explains the effective rule; the open-case gauges and the daily summary."""

from __future__ import annotations

import asyncio
import dataclasses
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from service.actions.notify import EmailNotifier
from service.actions.policy import TakedownPolicy
from service.actions.summary import CaseWatch, SummaryNotifier, next_summary
from service.config import NotifySection, TakedownRuleSection, TakedownSection, WikiSection
from service.metrics import Metrics
from service.models import Match
from service.store import memory_stores
from tests.fakes import FakeClock
from tests.store.test_contract import upload

PDQ = Match(matcher="pdq", bank="b", category="child-protection", hash_id="h", hash_value="f" * 64, distance=10)
FAR = dataclasses.replace(PDQ, distance=24)
SHA1 = Match(matcher="sha1", bank="b", category="child-protection", hash_id="h", hash_value="a" * 40)
PHOTODNA = Match(matcher="photodna", bank="photodna", category="child-protection", hash_id="t", hash_value="-",
                 distance=900)


@pytest.mark.parametrize(("matches", "plan"), [
    ([PDQ], "delete"),  # at the limit
    ([FAR], "review"),
    ([FAR, SHA1], "delete"),  # one confident match is enough
    ([PHOTODNA], "delete"),
    ([dataclasses.replace(FAR, category="terrorism")], "review"),
])
def test_auto_deletes_only_confident_matches(matches: list[Match], plan: str) -> None:
    assert TakedownPolicy(TakedownSection(mode="auto")).decide(matches).plan == plan


def test_the_reason_and_per_category_rules() -> None:
    verdict = TakedownPolicy(TakedownSection(mode="auto")).decide([FAR])
    assert verdict.reason == ("PDQ distance 24 is above auto_max_distance 10 for child-protection: not confident "
                              "enough for an automatic takedown")
    strict = TakedownSection(mode="auto", rules=(TakedownRuleSection(category="child-protection", auto_max_distance=4,
                                                                     auto_photodna=False),))
    p = TakedownPolicy(strict)
    assert p.decide([PDQ]).plan == "review" and p.decide([SHA1]).plan == "delete"
    assert "auto_photodna is off" in (p.decide([PHOTODNA]).reason or "")
    assert TakedownPolicy(dataclasses.replace(strict, mode="dry-run")).decide([PDQ]).plan == "review"
    assert TakedownPolicy(TakedownSection(mode="dry-run")).decide([PDQ]).plan == "dry-run"
    lines = p.describe(["child-protection"], [FAR])
    assert any(line.startswith("automatic takedown refused by policy: PDQ distance 24") for line in lines)


def test_explain_gives_the_effective_rule_per_category() -> None:
    lines = TakedownPolicy(TakedownSection(mode="auto")).explain({"child-protection", "terrorism"})
    assert lines == [
        "actions.takedown.mode: auto",
        "  child-protection: deleted automatically for PDQ at distance <= 10, exact SHA-1/MD5, PhotoDNA; anything "
        "else goes to review",
        "  terrorism: deleted only when a reviewer confirms",
    ]


async def test_case_watch_sets_the_gauges_and_schedules_one_daily_summary(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    stores = memory_stores()
    stores.review.clock = clock  # type: ignore[attr-defined]
    await stores.pipeline.record_matches(upload(1), "a" * 40, [PDQ], [])
    clock.advance(3600)
    cfg = NotifySection(sender="mm@example.org", recipients=("ts@example.org",), outbox_dir=str(tmp_path),
                        daily_summary=True, daily_summary_hour=7)
    metrics = Metrics()
    watch = CaseWatch(stores.workflow, stores.outbox, cfg, metrics, clock=clock)
    await watch.round()
    await watch.round()  # a second round (or another replica) adds no second summary
    reg = metrics.registry
    assert reg.get_sample_value("mediamoderation_review_open_cases",
                                {"kind": "match", "category": "child-protection"}) == 1
    assert reg.get_sample_value("mediamoderation_review_oldest_open_seconds") == 3600
    key, due = next_summary(clock(), 7)
    [item] = await stores.outbox.due_actions("summary", due, 10)  # type: ignore[attr-defined]
    assert item.key == key and await stores.outbox.due_actions("summary", due - 1, 10) == []

    email = EmailNotifier(cfg, metrics, wikis=(WikiSection(id="testwiki", api_url="https://w.example/w/api.php"),))
    assert await SummaryNotifier(email, stores.workflow, cfg).perform(item) == "spooled"
    [eml] = await asyncio.to_thread(lambda: list(tmp_path.glob("summary*.eml")))
    msg = BytesParser(policy=policy.default).parsebytes(await asyncio.to_thread(eml.read_bytes))
    text = msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "daily summary" in str(msg["Subject"]) and "1 open case(s)" in str(msg["Subject"])
    assert "child-protection: 1" in text and "Oldest unreviewed case" in text
