"""The review queue in a real browser (Debian's Chromium driven by Playwright) against the whole service:
real MediaWiki, EventStreams server and SMTP server.  Login, queue, blurred preview, unblur, Confirm
deletes on the wiki, Dismiss stops the same image from alerting again, CSRF, logout."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.web.review.auth import hash_password
from tests.infra.mediawiki import MediaWikiServer, free_port
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, running_list, start, upload_and_publish
from tests.test_takedown import exact_bank, photo_bytes, takedown_config, until

pytestmark = pytest.mark.wiki
__all__ = ["running_list"]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "reviewer password for tests"


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run the suite with `bash scripts/test.sh`, which installs Debian's "
                    "chromium", pytrace=False)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]' (scripts/test.sh does)", pytrace=False)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            yield b
        finally:
            await b.close()


def shot_dir(tmp_path: Path) -> Path:
    """Screenshots go to the test's directory, and also to $MM_REVIEW_SCREENSHOTS when set (to look at them)."""
    return Path(os.environ.get("MM_REVIEW_SCREENSHOTS") or tmp_path)


async def test_review_flow_in_chromium(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running], browser: Any,
) -> None:
    run_id = uuid.uuid4().hex[:8]
    abuse, false_positive = photo_bytes(401), photo_bytes(402)
    sha_abuse, sha_fp = hashlib.sha1(abuse).hexdigest(), hashlib.sha1(false_positive).hexdigest()
    bank = exact_bank(tmp_path / "bank.csv", {abuse: "child-protection", false_positive: "child-protection"})
    abuse_name, fp_name = f"UI {run_id} confirmed.jpg", f"UI {run_id} holiday.jpg"
    await upload_and_publish(mediawiki, sse_server, abuse_name, abuse)
    await upload_and_publish(mediawiki, sse_server, fp_name, false_positive)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    review = {"reviewers": [{"name": "alice", "password_hash": hash_password(PASSWORD)}]}
    cfg = takedown_config(tmp_path, mediawiki, sse_server, smtp_server, bank, "review",
                          http={"host": "127.0.0.1", "port": port}, review=review)
    cfg = _with_review_url(cfg, f"{base}/review")
    run = await start(cfg)
    running_list.append(run)
    await run.finished(2)
    mails = await smtp_server.wait_for_async(2)
    link = f"{base}/review/matches/{sha_abuse}"
    assert any(link in m.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
               for m in mails)
    shots = shot_dir(tmp_path)
    shots.mkdir(parents=True, exist_ok=True)

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))

    # Anonymous: the queue and the email's link both answer with the sign-in page; no preview either.
    await page.goto(f"{base}/review/")
    assert "/review/login" in page.url and await page.is_visible("text=Sign in to the review queue")
    anonymous = await context.request.get(f"{base}/review/matches/{sha_abuse}/preview/1")
    assert anonymous.status == 401
    await page.goto(link)
    await page.fill("#name", "alice")
    await page.fill("#password", PASSWORD)
    await page.press("#password", "Enter")
    await page.wait_for_url(link)  # signed in, straight to the page the email linked

    # The queue: newest first, both files; keyboard: j focuses the first file, Enter opens it.
    await page.goto(f"{base}/review/")
    rows = page.locator("table.queue tbody tr")
    assert await rows.count() == 2
    assert await page.locator("table.queue").inner_text() != ""
    await page.screenshot(path=str(shots / "review-queue.png"), full_page=True)
    await page.keyboard.press("j")
    focused = await page.evaluate("document.activeElement.getAttribute('href')")
    assert focused.startswith("/review/matches/")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{base}{focused}")

    # The detail page: blurred greyscale preview fetched through the service, then unblurred on request.
    await page.goto(link)
    img = page.locator("article.upload img").first
    assert "mode=blur" in (await img.get_attribute("src") or "")
    await until(lambda: loaded(img), what="the preview image loaded")
    blurred = await context.request.get(f"{base}{await img.get_attribute('src')}")
    assert Image.open(io.BytesIO(await blurred.body())).mode == "L"
    assert blurred.headers["cache-control"] == "no-store, private"
    await page.screenshot(path=str(shots / "review-detail.png"), full_page=True)
    await page.click("a.unblur")
    assert "mode=clear" in (await img.get_attribute("src") or "")
    assert await page.get_attribute("a.unblur", "aria-pressed") == "true"
    await until(lambda: loaded(img), what="the preview image loaded")

    # Confirm: the takedown runs through the API; the file is gone from the wiki.
    await page.fill("#note", "known material")
    await page.click("button[value=confirm]")
    await page.wait_for_url(f"{link}?done=confirm")

    async def deleted() -> bool:
        return bool((await asyncio.to_thread(mediawiki.imageinfo, abuse_name)).get("missing"))

    await until(deleted, what="the confirmed file is deleted on the wiki")

    async def recorded() -> bool:
        await page.reload()
        return "verified" in await page.inner_text("article.upload")

    await until(recorded, what="the takedown result is shown")
    await page.screenshot(path=str(shots / "review-detail-confirmed.png"), full_page=True)
    history = await page.inner_text("ul.history")
    assert "alice confirm: known material" in history and "system takedown" in history
    assert "preview-unblurred" in history

    # Dismiss: the same image uploaded again does not alert.
    fp_link = f"{base}/review/matches/{sha_fp}"
    await page.goto(fp_link)
    await page.click("button[value=dismiss]")
    await page.wait_for_url(f"{fp_link}?done=dismiss")
    again = f"UI {run_id} holiday again.jpg"
    await upload_and_publish(mediawiki, sse_server, again, false_positive)
    await run.finished(3)
    registry = run.service.metrics.registry
    assert registry.get_sample_value("mediamoderation_allowlisted_matches_total", {"bank": "cp-test"}) == 1
    keys = [i.key for i in await run.service.stores.outbox.list_actions()]
    assert not any(again in k for k in keys)
    # The two match emails (the confirmed takedown's "Takedown done:" report is a third, not an alert).
    assert len([m for m in smtp_server.messages if "Takedown done:" not in str(m.message["Subject"])]) == 2
    await page.goto(f"{base}/review/?state=all")
    assert again not in await page.inner_text("main")

    # A POST without the CSRF token is refused, even with a valid session.
    forged = await context.request.post(f"{base}/review/matches/{sha_fp}/decide", form={"decision": "escalate"})
    assert forged.status == 403
    assert not [k for k in keys if k.startswith("escalate:")]

    await page.goto(f"{base}/review/audit")
    assert "dismiss" in await page.inner_text("table.audit")
    await page.screenshot(path=str(shots / "review-audit.png"), full_page=True)

    # Logout ends the session.
    await page.click("form.logout button")
    await page.wait_for_url(f"{base}/review/login")
    await page.goto(f"{base}/review/")
    assert "/review/login" in page.url
    await context.close()
    if shots != tmp_path:
        for name in ("review-queue.png", "review-detail.png", "review-detail-confirmed.png", "review-audit.png"):
            shutil.copy(shots / name, tmp_path / name)


async def loaded(img: Any) -> bool:
    # (wait_for_function would evaluate a string, which the page's Content-Security-Policy forbids)
    return bool(await img.evaluate("el => el.complete && el.naturalWidth > 0"))


def _with_review_url(cfg: Any, url: str) -> Any:
    import dataclasses

    notify = dataclasses.replace(cfg.actions.notify, review_url=url)
    return dataclasses.replace(cfg, actions=dataclasses.replace(cfg.actions, notify=notify))
