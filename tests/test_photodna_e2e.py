"""PhotoDNA end to end: the real service against the real MediaWiki, the SSE server, the SMTP server
and the PhotoDNA stand-in.  Matches and non-matches; a refused key makes the service not-ready and
loses no event."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.config import ThumbnailSection
from service.matchers.photodna_probe import probe_jpeg
from service.media.thumbnail import prepare
from service.store.base import REMOTE_CLEAN, REMOTE_MATCH
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.photodna_server import PhotoDnaServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, make_config, metric, running_list, start, upload_and_publish  # noqa: F401

pytestmark = pytest.mark.wiki
KEY = "e2e-good-key"


@pytest.fixture
def photodna(photodna_server: Callable[..., PhotoDnaServer]) -> PhotoDnaServer:
    return photodna_server(keys=[KEY])


def photodna_config(server: PhotoDnaServer, key_file: Path, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True, "url": server.url, "key": {"file": str(key_file)}, "rate": 20, "timeout": 2,
        "backoff": {"initial_delay": 0.02, "max_delay": 0.2},
        "rescan": {"interval": 0.2, "retry_delays": [0.2]},
        **extra,
    }


async def get(url: str) -> tuple[int, dict[str, Any] | str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def test_photodna_match_and_no_match(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    photodna: PhotoDnaServer, running_list: list[Running],  # noqa: F811
) -> None:
    run_id = uuid.uuid4().hex[:8]
    known = images.photo(8201)
    photodna.add_known(images.jpeg_bytes(known), source="NCMEC", violations=("A1",), match_id="mid-8201")
    local = images.photo(8202)
    local_media = prepare(images.jpeg_bytes(local), "0" * 40, ThumbnailSection())
    assert local_media.pdq is not None
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{local_media.pdq.hex},,local-bank,local-8202\n")
    key_file = tmp_path / "photodna.key"
    key_file.write_text(KEY + "\n")
    uploads = {
        f"PDNA {run_id} known resized.jpg": images.variants(known)["resized"],
        f"PDNA {run_id} unknown.jpg": images.jpeg_bytes(images.photo(8203)),
        f"PDNA {run_id} local bank.jpg": images.variants(local)["recompressed"],
        f"PDNA {run_id} tiny.png": images.tiny_image(8204),
    }
    events = {n: await upload_and_publish(mediawiki, sse_server, n, d) for n, d in uploads.items()}
    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank,
                      photodna=photodna_config(photodna, key_file))
    assert cfg.thumbnail.make_jpeg  # derived from photodna.enabled
    run = await start(cfg)
    running_list.append(run)
    await run.finished(len(uploads))
    mails = await smtp_server.wait_for_async(2)

    stores = run.service.stores
    outcomes = {n: await stores.ledger.event_outcome(e["meta"]["id"]) for n, e in events.items()}
    assert outcomes == {n: ("clean" if "unknown" in n or "tiny" in n else "match") for n in uploads}
    by_title = {str(m.message["Subject"]).rsplit(": ", 1)[1]: m for m in mails}
    assert len(mails) == 2 and set(by_title) == {f"File:PDNA {run_id} known resized.jpg",
                                                 f"File:PDNA {run_id} local bank.jpg"}
    body = by_title[f"File:PDNA {run_id} known resized.jpg"].message.get_body(
        preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "photodna" in body and "mid-8201" in body and "source: NCMEC" in body
    assert "violations A1" in body and "TrackingId STANDIN_" in body  # kept for reports to NCMEC

    # Three uploads went to PhotoDNA (the local-bank match did not need to), each as the JPEG made by the
    # thumbnail stage, labelled image/jpeg, at least 160 px on both sides (the 50x40 PNG was grown).
    records = photodna.records
    assert sorted(r.kind for r in records) == ["match", "no-match", "no-match"]
    assert all(r.content_type == "image/jpeg" and r.key == KEY for r in records)
    assert all(r.dims is not None and min(r.dims) >= 160 for r in records), [r.dims for r in records]
    [match_row] = [m for m in await stores.pipeline.list_matches() if m["matcher"] == "photodna"]
    assert match_row["hash_id"] == "mid-8201" and match_row["bank"] == "photodna:NCMEC"
    states = {r.state for r in await stores.remote.list_remote_scans("photodna")}
    assert states == {REMOTE_CLEAN, REMOTE_MATCH}

    status, ready = await get(run.base + "/readyz")
    assert status == 200, ready
    status, pipeline = await get(run.base + "/healthz/pipeline")
    assert status == 200, pipeline
    status, text = await get(run.base + "/metrics")
    assert isinstance(text, str)
    assert metric(text, "mediamoderation_photodna_requests_total", http_status="200", code="3000") == 3
    assert metric(text, "mediamoderation_matches_total", category="child-protection", matcher="photodna") == 1
    assert metric(text, "mediamoderation_matches_total", category="child-protection", matcher="pdq") == 1
    assert metric(text, "mediamoderation_photodna_budget_used") == 3
    assert metric(text, "mediamoderation_photodna_unauthorized") == 0
    assert metric(text, "mediamoderation_photodna_ratelimit_wait_seconds_count", priority="live") == 3
    await run.stop()


async def test_refused_key_makes_the_service_not_ready_and_loses_no_event(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    photodna: PhotoDnaServer, running_list: list[Running],  # noqa: F811
) -> None:
    run_id = uuid.uuid4().hex[:8]
    known = images.photo(8301)
    photodna.add_known(images.jpeg_bytes(known), match_id="mid-8301")
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    key_file = tmp_path / "photodna.key"
    key_file.write_text("revoked-key\n")
    uploads = {
        f"PDNA401 {run_id} known.jpg": images.variants(known)["recompressed"],
        f"PDNA401 {run_id} a.jpg": images.jpeg_bytes(images.photo(8302)),
        f"PDNA401 {run_id} b.jpg": images.jpeg_bytes(images.photo(8303)),
    }
    events = [await upload_and_publish(mediawiki, sse_server, n, d) for n, d in uploads.items()]
    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank,
                      photodna=photodna_config(photodna, key_file, auth_retry_interval=1.0))
    run = await start(cfg)
    running_list.append(run)
    await run.finished(len(events))
    refused_at = min(r.t for r in photodna.records)
    stores = run.service.stores
    for e in events:
        assert await stores.ledger.event_outcome(e["meta"]["id"]) == "error:photodna-unauthorized"
    # Calls stopped after the first 401: at most one probe per auth_retry_interval since.
    assert all(r.kind == "unauthorized" for r in photodna.records)
    # Requests already on their way before the first 401 came back (rate 20/s, several remote workers)
    # are legitimate; after that round trip only the probes may arrive.
    after_refusal = [r for r in photodna.records if r.t > refused_at + 0.5]
    assert len(after_refusal) <= 1 + (time.monotonic() - refused_at) / 1.0
    status, ready = await get(run.base + "/readyz")
    assert status == 200, ready  # the review UI and metrics are still served
    status, pipeline = await get(run.base + "/healthz/pipeline")
    assert status == 503 and isinstance(pipeline, dict)
    reason = pipeline["reasons"]["photodna"]
    assert "HTTP 401" in reason and "invalid subscription key" in reason
    _, text = await get(run.base + "/metrics")
    assert isinstance(text, str) and metric(text, "mediamoderation_photodna_unauthorized") == 1
    assert metric(text, "mediamoderation_photodna_requests_total", http_status="401", code="none") >= 1
    rows = await stores.remote.list_remote_scans("photodna")
    assert len(rows) == 3 and all(r.state == "failed" and r.upload is not None for r in rows)
    assert smtp_server.messages == []

    # The key is fixed: the next probe passes, the failed scans are retried at once and nothing was lost.
    key_file.write_text(KEY + "\n")
    await photodna.wait_for(lambda s: sum(r.kind in ("match", "no-match") for r in s.records) >= 3, within=15)
    mails = await smtp_server.wait_for_async(1)
    assert f"PDNA401 {run_id} known.jpg" in str(mails[0].message["Subject"])

    async def settled() -> bool:
        return {r.state for r in await stores.remote.list_remote_scans("photodna")} == {REMOTE_CLEAN, REMOTE_MATCH}

    rescanner = run.service.rescanner
    assert rescanner is not None
    async with asyncio.timeout(15):
        while not await settled():
            await rescanner.wait_rounds(rescanner.rounds + 1)
    await asyncio.wait_for(rescanner.wait_rounds(rescanner.rounds + 3), 10)  # more rounds change nothing
    status, pipeline = await get(run.base + "/healthz/pipeline")
    assert status == 200, pipeline
    assert len(smtp_server.messages) == 1  # the match was reported once, however many rounds ran since
    assert sum(r.kind == "match" for r in photodna.records) == 1
    await run.stop()


async def test_a_fixed_key_is_found_by_the_probe_on_a_quiet_stream_and_outcomes_settle(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    photodna: PhotoDnaServer, running_list: list[Running],  # noqa: F811
) -> None:
    """No traffic after the refusal and a far retry schedule (150 s): the probe alone finds the fixed key
    within ``auth_retry_interval``, and the failed uploads then end as their real result."""
    run_id = uuid.uuid4().hex[:8]
    known = images.photo(8501)
    photodna.add_known(images.jpeg_bytes(known), match_id="mid-8501")
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    key_file = tmp_path / "photodna.key"
    key_file.write_text("revoked-key\n")
    uploads = {f"Quiet {run_id} known.jpg": images.variants(known)["recompressed"],
               f"Quiet {run_id} other.jpg": images.jpeg_bytes(images.photo(8502))}
    events = {n: await upload_and_publish(mediawiki, sse_server, n, d) for n, d in uploads.items()}
    interval = 1.0
    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank, photodna=photodna_config(
        photodna, key_file, auth_retry_interval=interval, rescan={"interval": 300, "retry_delays": [150]}))
    run = await start(cfg)
    running_list.append(run)
    await run.finished(len(events))
    stores = run.service.stores
    ids = {n: e["meta"]["id"] for n, e in events.items()}
    for event_id in ids.values():
        assert await stores.ledger.event_outcome(event_id) == "error:photodna-unauthorized"

    def probes(s: PhotoDnaServer) -> list[Any]:
        return [r for r in s.records if r.size == len(probe_jpeg())]

    await photodna.wait_for(lambda s: len(probes(s)) >= 1, within=10)  # refused, with no traffic at all
    status, _ = await get(run.base + "/healthz/pipeline")
    assert status == 503

    key_file.write_text(KEY + "\n")
    fixed_at = time.monotonic()
    await photodna.wait_for(lambda s: any(r.kind == "no-match" for r in probes(s)), within=10)
    accepted = next(r for r in probes(photodna) if r.kind == "no-match")
    assert accepted.t - fixed_at <= interval + 2.0  # the next probe after the fix, not the 150 s schedule
    refused = [r for r in probes(photodna) if r.kind == "unauthorized"]
    assert all(b.t - a.t >= interval * 0.95 for a, b in zip(refused, [*refused[1:], accepted], strict=False))

    rescanner = run.service.rescanner
    assert rescanner is not None

    async def settled() -> bool:
        return {r.state for r in await stores.remote.list_remote_scans("photodna")} == {REMOTE_CLEAN, REMOTE_MATCH}

    async with asyncio.timeout(15):  # the recovery retries every failed scan at once
        while not await settled():
            await rescanner.wait_rounds(rescanner.rounds + 1)
    status, pipeline = await get(run.base + "/healthz/pipeline")
    assert status == 200, pipeline
    # The uploads' recorded outcomes moved to their real results; the errors stay in their history.
    assert {n: await stores.ledger.event_outcome(i) for n, i in ids.items()} == {
        f"Quiet {run_id} known.jpg": "match", f"Quiet {run_id} other.jpg": "clean"}
    _, text = await get(run.base + "/metrics")
    assert isinstance(text, str)
    assert metric(text, "mediamoderation_outcomes_total", outcome="error") == 2  # as they happened
    assert metric(text, "mediamoderation_outcomes_total", outcome="match") == 1  # and as they ended
    assert metric(text, "mediamoderation_outcomes_total", outcome="clean") == 1
    assert metric(text, "mediamoderation_outcomes_superseded_total", outcome="error") == 2
    mails = await smtp_server.wait_for_async(1)
    assert f"Quiet {run_id} known.jpg" in str(mails[0].message["Subject"])
    await run.stop()
