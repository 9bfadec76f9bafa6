"""Service-level behaviour: readiness reasons, notifications surviving an SMTP outage and a restart, `scan`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from service.cli import main
from service.config import ThumbnailSection
from service.media.thumbnail import prepare
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, make_config, start, upload_and_publish

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.wiki
async def test_not_ready_with_reason_while_the_source_is_unreachable(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    unused_port: Callable[[], int],
) -> None:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank, source={"eventstreams": {
        "url": f"http://127.0.0.1:{unused_port()}/v2/stream/mediawiki.recentchange",
        "reconnect": {"initial_delay": 0.05, "max_delay": 0.1}}})
    run = await start(cfg)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(run.base + "/readyz") as r:
                body = await r.json()
                assert r.status == 503
            assert "source eventstreams not connected" in body["reasons"]["source"]
            async with http.get(run.base + "/healthz") as r:
                assert r.status == 200  # alive, just not ready
            async with http.get(run.base + "/metrics") as r:
                text = await r.text()
            assert 'mediamoderation_ready{check="source"} 0.0' in text  # what the NotReady alert watches
            assert 'mediamoderation_ready{check="store"} 1.0' in text
    finally:
        await run.stop()


@pytest.mark.wiki
async def test_notification_survives_smtp_outage_and_restart(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
) -> None:
    known = images.photo(7301)
    media = prepare(images.jpeg_bytes(known), "0" * 40, ThumbnailSection())
    assert media.pdq is not None
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{media.pdq.hex},,test,k-7301\n")
    smtp_server.stop()  # Trust & Safety's mail server is down
    await upload_and_publish(mediawiki, sse_server, f"Outage {uuid.uuid4().hex[:8]}.jpg",
                             images.variants(known)["recompressed"])
    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank)
    run = await start(cfg)
    await run.finished(1)
    pending = await run.service.store.list_actions("pending")
    assert len(pending) == 1 and pending[0].kind == "notify"
    await run.stop()  # restart while the notification is still unsent

    smtp_server.start()
    run2: Running = await start(cfg)
    try:
        mails = await smtp_server.wait_for_async(1, 30)
        assert len(mails) == 1
        async with asyncio.timeout(10):  # the dispatcher marks it done right after the SMTP reply
            while (item := await run2.service.store.get_action(pending[0].id)) and item.state != "done":
                await asyncio.sleep(0.05)
        assert item is not None and item.attempts == 2 and item.result == "sent"
        assert len(smtp_server.messages) == 1
    finally:
        await run2.stop()


def test_scan_command_prints_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    known = images.photo(9001)  # banks/example.csv holds this generated image's hashes
    (tmp_path / "variant.jpg").write_bytes(images.variants(known)["resized"])
    (tmp_path / "other.jpg").write_bytes(images.jpeg_bytes(images.photo(4242)))
    (tmp_path / "broken.jpg").write_bytes(images.truncated_jpeg())
    code = main(["scan", "-c", str(REPO / "config.yaml"), str(tmp_path / "variant.jpg"),
                 str(tmp_path / "other.jpg")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["outcome"] for line in lines] == ["match", "clean"]
    assert lines[0]["matches"][0]["bank"] == "example" and lines[0]["matches"][0]["matcher"] == "pdq"
    assert len(lines[1]["sha1"]) == 40 and len(lines[1]["pdq"]) == 64
    assert code == 1  # a match
    code = main(["scan", "-c", str(REPO / "config.yaml"), str(tmp_path / "broken.jpg")])
    assert json.loads(capsys.readouterr().out)["outcome"].startswith("unscannable:")
    assert code == 3
