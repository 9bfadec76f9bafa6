"""Issue 13 on the real MediaWiki: takedown confidence in auto mode (a close variant is deleted, a far one goes to
review with the reason), the preservation state read back from ``list=filearchive`` into the report draft, and a
corrupt upload that becomes a review case shown in the queue."""

from __future__ import annotations

import asyncio
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import ImageDraw

from service.config import ThumbnailSection
from service.media.thumbnail import prepare
from service.web.review.auth import hash_password
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, metric, running_list, start, upload_and_publish
from tests.test_takedown import takedown_config, takedowns_settled

pytestmark = pytest.mark.wiki
__all__ = ["running_list"]

PASSWORD = "correct horse battery staple"
REVIEW = {"reviewers": [{"name": "alice", "password_hash": hash_password(PASSWORD)}], "secure_cookies": False}


def caption_edited(img: Any, band: int = 20) -> bytes:
    """A white caption band over the bottom of the picture: PDQ distance about 24 for photo 7101."""
    edited = img.copy()
    ImageDraw.Draw(edited).rectangle((0, edited.height - band, edited.width, edited.height), fill=(255, 255, 255))
    return images.jpeg_bytes(edited)


async def signed_in(run: Running) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.get(run.base + "/review/login") as r:
        csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert csrf is not None
    async with http.post(run.base + "/review/login", data={"name": "alice", "password": PASSWORD,
                                                            "csrf": csrf.group(1), "next": "/review/"}) as r:
        assert r.status == 200, await r.text()
    return http


async def test_auto_mode_deletes_a_close_variant_and_sends_a_far_one_to_review(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running],
) -> None:
    run_id = uuid.uuid4().hex[:8]
    known = images.photo(7101, (640, 480))
    media = prepare(images.jpeg_bytes(known), "0" * 40, ThumbnailSection())
    assert media.pdq is not None
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{media.pdq.hex},,test-source,known-7101\n")
    close_name, far_name = f"Conf {run_id} close.jpg", f"Conf {run_id} caption.jpg"
    await upload_and_publish(mediawiki, sse_server, close_name, images.variants(known)["recompressed"])
    await upload_and_publish(mediawiki, sse_server, far_name, caption_edited(known))

    cfg = takedown_config(tmp_path, mediawiki, sse_server, smtp_server, bank, "auto", review=REVIEW)
    # Every match its own email here (grouping is tested in test_grouped_notifications.py).
    cfg = replace(cfg, actions=replace(cfg.actions, notify=replace(cfg.actions.notify, group_window=0)))
    run = await start(cfg)
    running_list.append(run)
    await run.finished(2)
    items = await takedowns_settled(run)
    matches = {r["title"]: r for r in await run.service.stores.pipeline.list_matches(10)}  # type: ignore[attr-defined]
    close, far = matches[f"File:{close_name}"], matches[f"File:{far_name}"]
    assert close["distance"] <= 10 < far["distance"] <= 31, (close["distance"], far["distance"])

    assert [(i.payload["title"], i.state) for i in items] == [(f"File:{close_name}", "done")]
    assert (await asyncio.to_thread(mediawiki.imageinfo, close_name)).get("missing")  # deleted
    assert (await asyncio.to_thread(mediawiki.imageinfo, far_name)).get("imageinfo")  # waits for review
    far_case = await run.service.stores.review.review_case(far["sha1"])
    assert far_case is not None and far_case.state == "open"

    mails = await smtp_server.wait_for_async(3)
    bodies = {str(m.message["Subject"]).replace("\n", ""): m.message.get_body(  # type: ignore[union-attr]
        preferencelist=("plain",)).get_content() for m in mails}
    far_text = next(t for t in bodies.values() if far_name in t)
    assert (f"automatic takedown refused by policy: PDQ distance {far['distance']} is above auto_max_distance 10"
            in far_text.replace("\n", " "))

    # The preservation state comes from the wiki's deleted-file archive; the case page links the draft.
    [kept] = await run.service.stores.workflow.preservation(close["sha1"])
    assert kept.filearchive_ids and kept.preserve_until - kept.removed_at == 365 * 86400
    done = next(t for s, t in bodies.items() if s.startswith("[mediamoderation] Takedown done:"))
    assert f"filearchive id(s) {kept.filearchive_ids[0]}" in done and "takedown done (requested by auto)" in done
    [reminder] = [i for i in await run.service.stores.outbox.list_actions()  # type: ignore[attr-defined]
                  if i.kind == "reminder"]
    assert reminder.next_attempt_at == kept.preserve_until - 30 * 86400 and reminder.state == "pending"
    http = await signed_in(run)
    try:
        async with http.get(f"{run.base}/review/matches/{far['sha1']}") as r:
            page = await r.text()
        assert "Automatic takedown refused by policy" in page and "auto_max_distance 10" in page
        async with http.get(f"{run.base}/review/matches/{close['sha1']}") as r:
            page = await r.text()
        assert "report.xml" in page and f"filearchive id(s) {kept.filearchive_ids[0]}" in page
        async with http.get(f"{run.base}/review/matches/{close['sha1']}/report.xml") as r:
            assert r.status == 200 and "attachment" in r.headers["Content-Disposition"]
            draft = ET.fromstring(await r.read())
        async with http.get(f"{run.base}/review/matches/{far['sha1']}/report.json") as r:
            assert r.status == 409  # not confirmed yet: no draft
    finally:
        await http.close()
    notes = " ".join(a.text or "" for a in draft.findall("fileDetails/additionalInfo"))
    assert f"filearchive id(s) {', '.join(map(str, kept.filearchive_ids))}" in notes
    assert draft.findtext("report/personOrUserReported/screenName") == mediawiki.admin_user
    assert draft.findtext("report/internetDetails/webPageIncident/url", "").endswith(
        "File:" + close_name.replace(" ", "_"))


async def test_a_corrupt_upload_is_a_review_case_in_the_queue(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running],
) -> None:
    name = f"Corrupt {uuid.uuid4().hex[:8]} bomb.png"
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    event = await upload_and_publish(mediawiki, sse_server, name, images.decompression_bomb_png())

    cfg = takedown_config(tmp_path, mediawiki, sse_server, smtp_server, bank, "review", review=REVIEW)
    cfg = replace(cfg, actions=replace(cfg.actions, notify=replace(cfg.actions.notify, unscannable=True)))
    run = await start(cfg)
    running_list.append(run)
    await run.finished(1)

    [case] = await run.service.stores.workflow.unscannable_cases("open", 10)
    assert (case.event_id, case.title, case.reason) == (event["meta"]["id"], f"File:{name}", "decompression-bomb")
    assert case.uploader == mediawiki.admin_user
    [mail] = await smtp_server.wait_for_async(1)
    assert "unscannable upload" in str(mail.message["Subject"])
    http = await signed_in(run)
    try:
        async with http.get(f"{run.base}/review/") as r:
            queue = await r.text()
        assert "Unscannable uploads waiting (1)" in queue and name in queue and "decompression-bomb" in queue
        await run.service.case_watch.round()  # the gauges are refreshed every minute; do it now
        async with http.get(f"{run.base}/metrics") as r:
            text = await r.text()
        # A reviewer checks the file by hand and dismisses the case (audited); it leaves the open list.
        async with http.get(f"{run.base}/review/unscannable") as r:
            page = await r.text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None and "There is no preview" in page and "<img" not in page
        async with http.post(f"{run.base}/review/unscannable/{case.event_id}/decide",
                             data={"csrf": csrf.group(1), "decision": "dismiss"}) as r:
            assert r.status == 200 and "No unscannable uploads." in await r.text()
    finally:
        await http.close()
    decided = await run.service.stores.workflow.unscannable_case(case.event_id)
    assert decided is not None and (decided.state, decided.decided_by) == ("dismissed", "alice")
    latest = (await run.service.stores.review.list_audit(5))[0]
    assert latest.action == "unscannable-dismissed"
    assert metric(text, "mediamoderation_unscannable_uploads_total", reason="decompression-bomb") == 1
    assert metric(text, "mediamoderation_review_open_cases", kind="unscannable", category="decompression-bomb") == 1
    assert metric(text, "mediamoderation_review_oldest_open_seconds") >= 0
