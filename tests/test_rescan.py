"""The rescanner: failed scans retried on their schedule, old clean scans re-asked oldest first within
the spare budget, a new match on an old upload notified once; and end to end through the service."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.config import BackoffSection, PhotoDnaSection, RescanSection, Secret, ThumbnailSection, WikiSection
from service.errors import FileGone
from service.matchers.photodna import PhotoDnaMatcher, build_matcher
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.models import FetchedMedia, FileInfo, Match, UploadEvent
from service.rescan import Rescanner
from service.store import Stores
from service.store.base import (
    REMOTE_CLEAN,
    REMOTE_FAILED,
    REMOTE_GONE,
    REMOTE_MATCH,
    NewAction,
    RemoteScan,
    ScanRecord,
)
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.photodna_server import PhotoDnaServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, make_config, running_list, start, upload_and_publish  # noqa: F401

KEY = "rescan-key"
DAY = 86400.0
NOW = datetime(2026, 11, 25, tzinfo=UTC).timestamp()
WIKI = WikiSection(id="testwiki", api_url="http://127.0.0.1:1/api.php")


def sha(n: int) -> str:
    return f"{n:040x}"


def upload(n: int) -> UploadEvent:
    return UploadEvent(event_id=f"ev-{n}", wiki="testwiki", title=f"File:Old {n}.jpg", server_url="http://wiki",
                       page_url=f"http://wiki/File:Old_{n}.jpg", uploader="Someone",
                       upload_time=datetime(2026, 1, 1, tzinfo=UTC), log_action="upload", sha1=sha(n))


class Fetcher:
    """Serves ``photo(n)`` for ``File:Old n.jpg``; records the order of fetches."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gone: set[str] = set()
        self.replaced: set[str] = set()

    async def fetch(self, wiki: WikiSection, title: str, *, expected_sha1: str | None = None) -> FetchedMedia:
        self.calls.append(title)
        if title in self.gone:
            raise FileGone(title)
        n = int(title.split()[1].split(".")[0])
        sha1 = "f" * 40 if title in self.replaced else (expected_sha1 or sha(n))
        info = FileInfo(title=title, url="u", description_url="d", sha1=sha1, size=1, width=320, height=240,
                        mime="image/jpeg", mediatype="BITMAP")
        return FetchedMedia(info=info, data=images.jpeg_bytes(images.photo(n, (320, 240))), data_source="thumbnail")


def planner(event: UploadEvent, sha1: str, matches: Any) -> list[NewAction]:
    return [NewAction(key=f"notify:{event.wiki}:{event.title}:{sha1}", kind="notify", payload={})]


@pytest.fixture
def server(photodna_server: Callable[..., PhotoDnaServer]) -> PhotoDnaServer:
    return photodna_server(keys=[KEY])


class Setup:
    def __init__(self, rescanner: Rescanner, matcher: PhotoDnaMatcher, fetcher: Fetcher, kicked: list[str]) -> None:
        self.rescanner = rescanner
        self.matcher = matcher
        self.fetcher = fetcher
        self.kicked = kicked


@pytest.fixture
async def setup(server: PhotoDnaServer, stores: Stores, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[Any]:
    monkeypatch.setenv("RESCAN_TEST_KEY", KEY)
    made: list[Setup] = []

    async def build(budget: int = 1000, **rescan: Any) -> Setup:
        cfg = PhotoDnaSection(enabled=True, url=server.url, key=Secret(env="RESCAN_TEST_KEY"), rate=100,
                              monthly_budget=budget, backoff=BackoffSection(initial_delay=0.01, max_delay=0.02))
        rescan_cfg = dataclasses.replace(RescanSection(concurrency=1, budget_reserve=0.0, retry_delays=(60.0,)),
                                         **rescan)
        metrics = Metrics()
        matcher = build_matcher(cfg, user_agent="mm-test/0 (ts@example.org)", store=stores.budget, metrics=metrics)
        await matcher.client.start()
        fetcher = Fetcher()
        kicked: list[str] = []
        rescanner = Rescanner(
            rescan_cfg, matcher=matcher, budget=matcher.client.budget, store=stores.rescan, fetcher=fetcher,
            wikis={"testwiki": WIKI}, prepare=prepare, cpu=None, thumbnail_cfg=ThumbnailSection(make_jpeg=True),
            planners=[planner], metrics=metrics, scan_version=lambda: "v1+photodna",
            on_actions=lambda items: kicked.extend(i.key for i in items), clock=lambda: NOW,
        )
        s = Setup(rescanner, matcher, fetcher, kicked)
        made.append(s)
        return s

    yield build
    for s in made:
        await s.matcher.aclose()


async def put(stores: Stores, n: int, state: str, at: float) -> None:
    await stores.remote.put_remote_scans([RemoteScan(sha(n), "photodna", state, at, upload=upload(n),
                                             retry_delays=(60.0,))])


async def test_old_clean_scans_oldest_first_within_the_spare_budget(setup: Any, stores: Stores,
                                                                   server: PhotoDnaServer) -> None:
    s = await setup(budget=4)
    for n, age in ((1, 100), (2, 300), (3, 95), (4, 200), (5, 91)):
        await put(stores, n, REMOTE_CLEAN, NOW - age * DAY)
    await put(stores, 6, REMOTE_CLEAN, NOW - 10 * DAY)  # too young to ask again
    await put(stores, 7, REMOTE_FAILED, NOW - 120)  # failed two minutes ago: its retry (60 s) is due
    await put(stores, 8, REMOTE_FAILED, NOW - 30)  # not due yet
    server.add_known(images.jpeg_bytes(images.photo(4, (640, 480))), match_id="late-addition")

    results = await s.rescanner.run_once()
    # The due retry first, then the oldest clean verdicts, as many as the budget has to spare (4 - 1).
    assert s.fetcher.calls == ["File:Old 7.jpg", "File:Old 2.jpg", "File:Old 4.jpg", "File:Old 1.jpg"]
    assert results == {REMOTE_CLEAN: 3, REMOTE_MATCH: 1}
    assert len(server.records) == 4 and await stores.budget.budget_used("photodna", "2026-11") <= 4
    assert s.kicked == [f"notify:testwiki:File:Old 4.jpg:{sha(4)}"]  # the newly matching old upload
    row4 = await stores.remote.get_remote_scan(sha(4), "photodna")
    assert row4 is not None and row4.state == REMOTE_MATCH
    [m] = await stores.pipeline.list_matches()
    assert (m["title"], m["hash_id"], m["event_id"]) == ("File:Old 4.jpg", "late-addition", "ev-4")
    scan = await stores.scans.get_scan(sha(4))
    assert scan is not None and scan.outcome == "match"  # later uploads of it are reported from the cache
    row2 = await stores.remote.get_remote_scan(sha(2), "photodna")
    assert row2 is not None and row2.clean_at == NOW  # asked again: clean as of now
    assert (await stores.remote.get_remote_scan(sha(7), "photodna")).state == REMOTE_CLEAN  # type: ignore[union-attr]

    # The budget is spent: nothing more this month, however many rounds run.
    s.fetcher.calls.clear()
    assert await s.rescanner.run_once() == {}
    assert s.fetcher.calls == [] and len(server.records) == 4


async def test_a_new_match_notifies_once(setup: Any, stores: Stores, server: PhotoDnaServer) -> None:
    s = await setup(age_days=90.0)
    server.add_known(images.jpeg_bytes(images.photo(11, (640, 480))), match_id="m-11")
    server.add_known(images.jpeg_bytes(images.photo(12, (640, 480))), match_id="m-12")
    await put(stores, 11, REMOTE_CLEAN, NOW - 100 * DAY)
    await put(stores, 12, REMOTE_CLEAN, NOW - 100 * DAY)
    # Upload 12 was reported already (say a local bank matched it when it was uploaded).
    await stores.pipeline.record_matches(upload(12), sha(12),
                                         [Match("pdq", "local", "child-protection", "p", "f" * 64)],
                                         planner(upload(12), sha(12), []))
    await stores.scans.put_scan(ScanRecord(sha(12), "match", "v0", NOW - 100 * DAY, pdq="ab",
                                    matches=(Match("pdq", "local", "child-protection", "p", "f" * 64),)))
    await s.rescanner.run_once()
    assert s.kicked == [f"notify:testwiki:File:Old 11.jpg:{sha(11)}"]  # 12's key already existed
    assert len(await stores.outbox.list_actions()) == 2
    scan12 = await stores.scans.get_scan(sha(12))
    assert scan12 is not None and scan12.bank_version == "v0" and scan12.pdq == "ab"
    assert sorted(m.matcher for m in scan12.matches) == ["pdq", "photodna"]
    await s.rescanner.run_once()  # matched content is not asked again
    assert len(server.records) == 2 and len(s.kicked) == 1


async def test_gone_uploads_end_their_rescans(setup: Any, stores: Stores, server: PhotoDnaServer) -> None:
    s = await setup()
    for n in (21, 22, 23):
        await put(stores, n, REMOTE_CLEAN, NOW - 200 * DAY)
    s.fetcher.gone.add("File:Old 21.jpg")  # deleted
    s.fetcher.replaced.add("File:Old 22.jpg")  # overwritten with other content
    await stores.remote.put_remote_scans([RemoteScan(sha(23), "photodna", "seen", NOW, upload=dataclasses.replace(
        upload(23), wiki="otherwiki"))])  # the latest upload is on a wiki no longer configured
    assert await s.rescanner.run_once() == {REMOTE_GONE: 3}
    assert server.records == []
    assert await stores.remote.stale_remote_scans("photodna", NOW, 10) == []


async def test_nothing_is_sent_while_the_key_is_refused(setup: Any, stores: Stores,
                                                       server: PhotoDnaServer) -> None:
    s = await setup()
    await put(stores, 31, REMOTE_FAILED, NOW - 3600)
    await put(stores, 32, REMOTE_FAILED, NOW - 3600)
    await stores.ledger.record_event(upload(31), "error:photodna-unauthorized")
    server.script("401")
    assert await s.rescanner.run_once() == {REMOTE_FAILED: 1}  # one probe only
    assert await s.rescanner.run_once() == {}  # no probe before auth_retry_interval
    assert len(server.records) == 1
    rows = {r.sha1: r for r in await stores.remote.list_remote_scans("photodna")}
    assert {r.state for r in rows.values()} == {REMOTE_FAILED}
    assert await stores.ledger.event_outcome("ev-31") == "error:photodna-unauthorized"  # no verdict: still an error
    assert s.rescanner.metrics.registry.get_sample_value("mediamoderation_outcomes_superseded_total",
                                                         {"outcome": "error"}) == 0


async def test_uploads_that_failed_take_their_final_outcome_once_rescanned(
        setup: Any, stores: Stores, server: PhotoDnaServer) -> None:
    s = await setup()
    metrics = s.rescanner.metrics
    again = dataclasses.replace(upload(41), event_id="ev-41-again", title="File:Old 41.jpg")
    for event, outcome in ((upload(41), "error:photodna-unauthorized"), (again, "error:photodna"),
                           (upload(42), "error:photodna-unavailable"), (upload(43), "error:photodna-unauthorized")):
        await stores.ledger.record_event(event, outcome)
    for n in (41, 42, 43):
        await put(stores, n, REMOTE_FAILED, NOW - 3600)
    server.add_known(images.jpeg_bytes(images.photo(42, (640, 480))), match_id="m-42")
    s.fetcher.gone.add("File:Old 43.jpg")

    assert await s.rescanner.run_once() == {REMOTE_CLEAN: 1, REMOTE_MATCH: 1, REMOTE_GONE: 1}
    outcomes = {e: await stores.ledger.event_outcome(e) for e in ("ev-41", "ev-41-again", "ev-42", "ev-43")}
    assert outcomes == {"ev-41": "clean", "ev-41-again": "clean", "ev-42": "match", "ev-43": "gone"}

    def count(name: str, outcome: str) -> float:
        return metrics.registry.get_sample_value(f"mediamoderation_{name}_total", {"outcome": outcome}) or 0.0

    # Counted with their final outcome; the errors they replace are counted as superseded.
    assert (count("outcomes", "clean"), count("outcomes", "match"), count("outcomes", "gone")) == (2, 1, 1)
    assert count("outcomes_superseded", "error") == 4
    assert await s.rescanner.run_once() == {}  # settled: nothing is counted twice
    assert count("outcomes_superseded", "error") == 4 and count("outcomes", "clean") == 2


# --------------------------------------------------------------------------- end to end


@pytest.mark.wiki
async def test_an_old_clean_upload_that_matches_later_is_reported_once(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    server: PhotoDnaServer, running_list: list[Running],  # noqa: F811
) -> None:
    run_id = uuid.uuid4().hex[:8]
    picture = images.photo(8401)
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    name = f"Rescan {run_id}.jpg"
    event = await upload_and_publish(mediawiki, sse_server, name, images.jpeg_bytes(picture))
    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank, photodna={
        "enabled": True, "url": server.url, "key": {"file": str(key_file)}, "rate": 20,
        # "Old" here is one second: the rescan is what is tested, not the calendar.
        "rescan": {"interval": 0.2, "age_days": 1 / 86400},
    })
    run = await start(cfg)
    running_list.append(run)
    await run.finished(1)
    stores = run.service.stores
    assert await stores.ledger.event_outcome(event["meta"]["id"]) == "clean"
    assert [r.kind for r in server.records] == ["no-match"]

    server.add_known(images.jpeg_bytes(picture), source="Test", match_id="added-later")  # the list grows
    mails = await smtp_server.wait_for_async(1, within=15)
    assert f"File:{name}" in str(mails[0].message["Subject"])
    body = mails[0].message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "added-later" in body and event["meta"]["id"] in body
    rescanner = run.service.rescanner
    assert rescanner is not None
    await rescanner.wait_rounds(rescanner.rounds + 5)  # rounds go on: the match is not asked or sent again
    assert len(smtp_server.messages) == 1
    assert [r.kind for r in server.records] == ["no-match", "match"]
    [row] = await stores.remote.list_remote_scans("photodna")
    assert row is not None and row.state == REMOTE_MATCH
    assert run.service.metrics.registry.get_sample_value(
        "mediamoderation_rescans_total", {"kind": "rescan", "result": "match"}) == 1
    await run.stop()
