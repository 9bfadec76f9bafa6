"""Poison events through the real EventStreams test server and the real service.

Each event below crashed the service before (and, as the checkpoint never passed it, crashed every
restart again) or held the stream up for minutes; a matching upload by a user whose name holds a lone
surrogate ended ``error:internal``, neither recorded nor emailed.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.events import sha1_to_base36
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, _read_checkpoint, make_config, metric, start, upload_and_publish

pytestmark = pytest.mark.wiki


@pytest.fixture
async def runs() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        if not run.task.done():
            await run.stop()


def poison_from(good: dict[str, Any], n: int, **changes: Any) -> dict[str, Any]:
    """A copy of a real upload event under a new meta.id, with ``changes`` applied."""
    obj = copy.deepcopy(good)
    obj["meta"] = {**obj["meta"], "id": f"poison-{n}-{uuid.uuid4()}"}
    obj.update(changes)
    return obj


async def test_poison_events_are_skipped_and_the_stream_goes_on(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    runs: list[Running],
) -> None:
    run_id = uuid.uuid4().hex[:8]
    known = images.jpeg_bytes(images.photo(7601))
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{hashlib.sha1(known).hexdigest()},terrorism,test,exact-7601\n")
    first = await upload_and_publish(mediawiki, sse_server, f"Poison {run_id} first.jpg",
                                     images.jpeg_bytes(images.photo(7602)))
    sse_server.publish_raw("[" * 100_000)
    sse_server.publish_raw('{"a":' * 60_000)
    no_dt = poison_from(first, 1, timestamp=10**400, log_params={"img_sha1": first["log_params"]["img_sha1"]})
    del no_dt["meta"]["dt"]
    sse_server.publish(no_dt)
    middle = await upload_and_publish(mediawiki, sse_server, f"Poison {run_id} known.jpg", known)
    bad_id = poison_from(first, 2)
    bad_id["meta"]["id"] = "poison-\ud800"
    sse_server.publish(bad_id)
    sse_server.publish(poison_from(first, 3, title="File:Poison \ud800.jpg"))
    sse_server.publish(poison_from(first, 4, comment="x" * 1_500_000))  # over the 1 MB limit, one write
    sse_server.publish(poison_from(first, 5, comment="y" * 3_000_000), trickle=1024)  # 3 MB in 1 KB pieces
    last = await upload_and_publish(mediawiki, sse_server, f"Poison {run_id} last.jpg",
                                    images.jpeg_bytes(images.photo(7603)))
    poison = 7

    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank)
    run = await start(cfg)
    runs.append(run)
    await run.finished(3 + poison, timeout=120)  # a crash of the service fails here with its cause

    stores = run.service.stores
    assert await stores.ledger.event_outcome(first["meta"]["id"]) == "clean"
    assert await stores.ledger.event_outcome(middle["meta"]["id"]) == "match"
    assert await stores.ledger.event_outcome(last["meta"]["id"]) == "clean"
    mails = await smtp_server.wait_for_async(1)
    assert middle["title"] in str(mails[0].message["Subject"])
    async with aiohttp.ClientSession() as http:
        async with http.get(run.base + "/metrics") as r:
            text = await r.text()
        async with http.get(run.base + "/healthz") as r:
            assert r.status == 200
    for problem, count in (("too-deep", 2), ("bad-timestamp", 1), ("bad-text", 2), ("too-large", 2)):
        assert metric(text, "mediamoderation_events_malformed_total", problem=problem) == count, problem
    assert metric(text, "mediamoderation_events_skipped_total", reason="malformed") == poison
    assert metric(text, "mediamoderation_outcomes_total", outcome="error") == 0

    await run.stop()
    # Everything finished, so the checkpoint is the position of the very last event: past the poison.
    assert json.loads(await _read_checkpoint(cfg)) == sse_server.connections[-1].ids[-1]


async def test_a_match_by_a_user_with_a_lone_surrogate_is_recorded_and_emailed(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    runs: list[Running],
) -> None:
    data = images.jpeg_bytes(images.photo(7611))
    sha1 = hashlib.sha1(data).hexdigest()
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{sha1},terrorism,test,exact-7611\n")
    name = f"Surrogate {uuid.uuid4().hex[:8]}.jpg"
    await asyncio.to_thread(mediawiki.upload, name, data)
    event = await asyncio.to_thread(mediawiki.recentchange_event, name)
    assert event["log_params"]["img_sha1"] == sha1_to_base36(sha1)
    event["user"] = "Bad\udfffUser"  # sent as the JSON escape \udfff, as EventStreams would
    sse_server.publish(event)

    run = await start(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank))
    runs.append(run)
    await run.finished(1)
    stores = run.service.stores
    assert await stores.ledger.event_outcome(event["meta"]["id"]) == "match"
    recorded = [m for m in await stores.pipeline.list_matches() if m["event_id"] == event["meta"]["id"]]
    assert [m["uploader"] for m in recorded] == ["Bad\ufffdUser"]
    mails = await smtp_server.wait_for_async(1)
    assert event["title"] in str(mails[0].message["Subject"])
    body = mails[0].message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Uploader: Bad\ufffdUser" in body
