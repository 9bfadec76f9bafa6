"""Grouped notifications (issue 13): the first match of a known hash is emailed at once, further matches within
the window go into one digest; exactly once across restarts; takedown reports and unscannable uploads grouped too."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from service.actions.base import OutboxDispatcher
from service.actions.digest import DigestNotifier, GroupedNotifier, group_keys
from service.actions.notify import EmailNotifier, unscannable_key, unscannable_payload
from service.actions.plan import notify_planner
from service.actions.policy import TakedownPolicy
from service.config import NotifySection, RetrySection, SmtpSection, TakedownSection, WikiSection
from service.metrics import Metrics
from service.models import Match, UploadEvent
from service.store import Stores, memory_stores, sqlite_stores
from service.store.base import NewAction, OutboxItem
from tests.fakes import FakeClock
from tests.infra.smtp import SmtpServer

WIKI = WikiSection(id="testwiki", api_url="https://wiki.example.org/w/api.php")
KNOWN = Match(matcher="pdq", bank="cp-test", category="child-protection", hash_id="known-1",
              hash_value="f" * 64, distance=4)


def event(i: int, uploader: str = "Mallory") -> UploadEvent:
    return UploadEvent(event_id=f"e{i}", wiki="testwiki", title=f"File:Variant {i}.jpg",
                       server_url="https://wiki.example.org", page_url=f"https://wiki.example.org/wiki/File:V{i}.jpg",
                       uploader=uploader, upload_time=datetime(2026, 1, 1, 12, i % 60, tzinfo=UTC),
                       log_action="upload", sha1=f"{i:040x}")


def notify_cfg(smtp: SmtpServer | None, **extra: object) -> NotifySection:
    return NotifySection(sender="mm@example.org", recipients=("ts@example.org",),
                         smtp=SmtpSection(host="127.0.0.1", port=smtp.port, security="none") if smtp else None,
                         review_url="https://mm.example.org/review", **extra)  # type: ignore[arg-type]


class Notifier:
    """The notify dispatcher as the service builds it, over one (re)opened store."""

    def __init__(self, stores: Stores, cfg: NotifySection, clock: FakeClock) -> None:
        metrics = Metrics()
        email = EmailNotifier(cfg, metrics, wikis=(WIKI,))
        self.grouped = GroupedNotifier(email, stores.workflow, cfg, metrics, clock=clock)
        self.dispatcher = OutboxDispatcher(stores.outbox, {"notify": self.grouped,
                                                           "digest": DigestNotifier(email, stores.workflow, cfg)},
                                           RetrySection(0.01, 0.02), metrics, clock=clock)


async def enqueue_variants(stores: Stores, cfg: NotifySection, n: int, *, uploaders: bool = False) -> None:
    plan = notify_planner(cfg, policy=TakedownPolicy(TakedownSection(mode="review")))
    for i in range(n):
        ev = event(i, uploader=f"User{i}" if uploaders else "Mallory")
        await stores.pipeline.record_matches(ev, ev.sha1 or "", [KNOWN], plan(ev, ev.sha1 or "", [KNOWN]))


async def test_twenty_variants_one_immediate_email_and_one_digest_across_restarts(
    tmp_path: Path, smtp_server: SmtpServer,
) -> None:
    clock = FakeClock()
    cfg = notify_cfg(smtp_server, group_window=600.0)
    path = str(tmp_path / "db.sqlite3")

    first = sqlite_stores(path)
    await first.open()
    await enqueue_variants(first, cfg, 20, uploaders=True)
    await first.close()  # restart between enqueue and send

    second = sqlite_stores(path)
    await second.open()
    n = Notifier(second, cfg, clock)
    due = await second.outbox.due_actions("notify", clock(), 100)
    assert len(due) == 20
    await second.outbox.mark_done(due[0].id, await n.grouped.perform(due[0]))  # the first: emailed at once
    await smtp_server.wait_for_async(1)
    # A crash after folding five more into the digest, before they were marked done: performed again later.
    for item in due[1:6]:
        assert (await n.grouped.perform(item)).startswith("digested into")
    await second.close()

    third = sqlite_stores(path)
    await third.open()
    n = Notifier(third, cfg, clock)
    await n.dispatcher.drain(timeout=30)
    [immediate] = await smtp_server.wait_for_async(1)
    assert "child-protection match on testwiki" in str(immediate.message["Subject"])
    items = {i.key: i for i in await third.outbox.list_actions()}  # type: ignore[attr-defined]
    notify = [i for i in items.values() if i.kind == "notify"]
    assert all(i.state == "done" for i in notify)
    assert sum(1 for i in notify if (i.result or "").startswith("digested into")) == 19
    [digest] = [i for i in items.values() if i.kind == "digest"]
    assert digest.state == "pending"  # due when the window ends

    clock.advance(601)
    await n.dispatcher.drain(timeout=30)
    mails = await smtp_server.wait_for_async(2)
    await third.close()

    # A later restart sends nothing again.
    fourth = sqlite_stores(path)
    await fourth.open()
    await Notifier(fourth, cfg, clock).dispatcher.drain(timeout=30)
    await fourth.close()
    assert len(smtp_server.messages) == 2
    digest_mail = mails[1].message
    assert "digest: 19 more about known hash cp-test:known-1" in str(digest_mail["Subject"]).replace("\n", "")
    text = digest_mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert text.count("File:Variant ") == 19 and "File:Variant 0.jpg" not in text  # the first went at once
    assert "https://wiki.example.org/wiki/File:Variant_7.jpg" in text
    assert "/images/" not in text and not list(digest_mail.iter_attachments())


async def test_same_uploader_is_grouped_and_a_new_window_emails_again() -> None:
    clock = FakeClock()
    cfg = notify_cfg(None, group_window=60.0, group_by=("uploader",))
    stores = memory_stores()
    folded: list[str | None] = []
    for i in range(3):
        item = OutboxItem(id=i, key=f"notify:testwiki:File:U{i}.jpg:{i:040x}", kind="notify",
                          payload={"wiki": "testwiki", "uploader": "Mallory", "matches": [KNOWN.to_dict()]})
        folded.append(await stores.workflow.fold_notification(item.key, group_keys(item, cfg), item.payload,
                                                               clock(), cfg.group_window))
        clock.advance(10)
    assert folded[0] is None and folded[1] == folded[2] and folded[1] is not None
    clock.advance(60)  # the window ended: the next one leads a new group
    assert await stores.workflow.fold_notification("notify:x", ["uploader:testwiki:Mallory"], {}, clock(), 60.0) \
        is None


def test_alerts_escalations_and_reminders_are_never_grouped() -> None:
    cfg = notify_cfg(None)
    payload = {"wiki": "w", "uploader": "U", "matches": [KNOWN.to_dict()]}
    assert group_keys(OutboxItem(1, "notify:w:File:A.jpg:" + "0" * 40, "notify", payload), cfg)
    assert not group_keys(OutboxItem(2, "escalate:" + "0" * 40 + ":n", "notify", payload), cfg)
    assert not group_keys(OutboxItem(3, "alert:takedown:w:x:y:0", "notify", {**payload, "alert": "FAILED"}), cfg)
    assert group_keys(OutboxItem(4, "report:takedown:w:x:y", "notify", payload), cfg)  # takedown done: digest


async def test_unscannable_uploads_are_digested_per_wiki(smtp_server: SmtpServer, tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = notify_cfg(smtp_server, group_window=300.0, group_by=())
    stores = sqlite_stores(str(tmp_path / "u.sqlite3"))
    await stores.open()
    try:
        for i in range(3):
            ev = event(100 + i, uploader=f"User{i}")
            await stores.pipeline.finish(ev, "unscannable:corrupt", None, (), [NewAction(
                key=unscannable_key(ev), kind="notify", payload=unscannable_payload(ev, "corrupt"))])
        n = Notifier(stores, cfg, clock)
        await n.dispatcher.drain(timeout=30)
        clock.advance(301)
        await n.dispatcher.drain(timeout=30)
        mails = await smtp_server.wait_for_async(2)
    finally:
        await stores.close()
    assert len(mails) == 2
    assert "unscannable upload on testwiki" in str(mails[0].message["Subject"])
    first = mails[0].message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "could not be scanned (corrupt)" in first and "https://mm.example.org/review/unscannable" in first
    assert "digest: 2 more about unscannable uploads on testwiki" in str(mails[1].message["Subject"]).replace("\n", "")
