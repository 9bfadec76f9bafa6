"""The Trust & Safety workflow store (issue 13) against memory, SQLite and PostgreSQL: grouped notifications,
unscannable cases, preservation records, open-case statistics, activity counts, scheduled outbox items."""

from __future__ import annotations

import asyncio
import dataclasses

from service.store import Stores
from service.store.base import Decision, NewAction, Preservation
from tests.store.test_contract import SHA, Backend, M, backend, sql_backend, store, upload

__all__ = ["backend", "sql_backend", "store"]  # fixtures, shared with the main contract suite


async def test_fold_notification_leads_then_digests_exactly_once(store: Stores, backend: Backend) -> None:
    w = store.workflow
    assert await w.fold_notification("notify:a", ["hash:b:7", "uploader:w:U"], {"n": 1}, 1000.0, 60.0) is None
    assert await w.fold_notification("notify:a", ["hash:b:7"], {"n": 1}, 1001.0, 60.0) is None  # the lead again
    digest = await w.fold_notification("notify:b", ["hash:b:7"], {"n": 2}, 1010.0, 60.0)
    assert digest == "digest:hash:b:7:1000"
    # A retry of the same item (after a crash) adds nothing and gives the same answer.
    assert await w.fold_notification("notify:b", ["hash:b:7"], {"n": 2}, 1011.0, 60.0) == digest
    assert await w.fold_notification("notify:c", ["uploader:w:U"], {"n": 3}, 1020.0, 60.0) == \
        "digest:uploader:w:U:1000"
    assert await w.digest_entries(digest) == [{"n": 2}]
    # The digest's outbox item is due when the window ends, and is not a backlog before.
    backend.clock[0] = 1030.0
    assert await store.outbox.due_actions("digest", 1030.0, 10) == []
    assert await store.outbox.pending_count() == 0
    due = {i.key: i for i in await store.outbox.due_actions("digest", 1060.0, 10)}
    assert set(due) == {digest, "digest:uploader:w:U:1000"}
    item = due[digest]
    assert item.payload["group"] == "hash:b:7"
    await store.outbox.mark_done(item.id, "sent")
    # After the digest went out, the next one leads a new group.
    assert await w.fold_notification("notify:d", ["hash:b:7"], {"n": 4}, 1061.0, 60.0) is None


async def test_unscannable_case_opened_once_with_its_notification(store: Stores) -> None:
    ev = upload(5)
    action = NewAction(key="unscannable:x", kind="notify", payload={"kind": "unscannable"})
    await store.pipeline.finish(ev, "unscannable:corrupt", None, (), [action])
    await store.pipeline.finish(ev, "unscannable:corrupt", None, (), [action])  # a replay: nothing new
    [case] = await store.workflow.unscannable_cases("open", 10)
    assert (case.event_id, case.title, case.uploader, case.reason, case.sha1) == \
        ("ev-5", "File:F5.jpg", "U", "corrupt", SHA)
    assert [i.key for i in await store.outbox.due_actions("notify", 2000.0, 10)] == ["unscannable:x"]
    await store.pipeline.finish(upload(6), "clean", None)
    assert len(await store.workflow.unscannable_cases(None, 10)) == 1

    stats = await store.workflow.case_stats()
    assert stats.open_cases == {("unscannable", "corrupt"): 1} and stats.oldest_open is not None
    assert await store.workflow.decide_unscannable("ev-5", "dismissed", "alice", "checked: a broken scan")
    assert not await store.workflow.decide_unscannable("nope", "dismissed", "alice")
    assert (await store.workflow.unscannable_case("ev-5")).state == "dismissed"  # type: ignore[union-attr]
    assert (await store.workflow.case_stats()).open_cases == {}
    [audit] = await store.review.list_audit(10)
    assert audit.action == "unscannable-dismissed" and audit.actor == "alice" and audit.detail["reason"] == "corrupt"


async def test_case_stats_and_activity_count_match_cases(store: Stores, backend: Backend) -> None:
    await store.pipeline.record_matches(upload(1), SHA, [M], [])
    other = dataclasses.replace(M, category="terrorism")
    await store.pipeline.record_matches(upload(2, sha1="b" * 40), "b" * 40, [other], [])
    await store.pipeline.finish(upload(1), "match", None)
    stats = await store.workflow.case_stats()
    assert stats.open_cases == {("match", "child-protection"): 1, ("match", "terrorism"): 1}
    assert stats.oldest_open == 1000.0
    await store.review.record_decision(Decision(sha1=SHA, state="confirmed", reviewer="alice", action="confirm"))
    assert (await store.workflow.case_stats()).open_cases == {("match", "terrorism"): 1}
    activity = await store.workflow.activity(0.0)
    assert activity["outcomes"] == {"match": 1}
    assert activity["categories"] == {"child-protection": 1, "terrorism": 1}
    assert await store.workflow.activity(5000.0) == {"outcomes": {}, "categories": {}}


async def test_preservation_records_round_trip(store: Stores) -> None:
    p = Preservation(wiki="w", title="File:F1.jpg", sha1=SHA, filearchive_ids=(3, 4), suppressed=False,
                     removed_at=10.0, preserve_until=10.0 + 365 * 86400)
    await store.workflow.record_preservation(p)
    await store.workflow.record_preservation(dataclasses.replace(p, suppressed=True, removed_at=99.0))
    assert await store.workflow.preservation(SHA) == [dataclasses.replace(p, suppressed=True)]
    assert await store.workflow.preservation("b" * 40) == []


async def test_replicas_folding_into_one_group_at_once_elect_one_lead(sql_backend: Backend) -> None:
    """Two replicas (two stores over one database) fold notifications of one group at the same instant:
    exactly one of them leads (one "first" email), every other one joins the same digest."""
    replicas = [sql_backend.new(), sql_backend.new()]
    for r in replicas:
        await r.open()
    try:
        for round_ in range(5):
            group = [f"hash:b:{round_}", "uploader:w:U" + str(round_)]
            answers = await asyncio.gather(*(
                replicas[i % 2].workflow.fold_notification(f"notify:{round_}:{i}", group, {"i": i}, 1000.0 + i * 1e-3,
                                                           60.0)
                for i in range(8)))
            leads = [a for a in answers if a is None]
            assert len(leads) == 1, answers
            assert len({a for a in answers if a is not None}) == 1, answers
    finally:
        for r in replicas:
            await r.close()
