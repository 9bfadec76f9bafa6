"""The team review queue in real browsers (Debian's Chromium driven by Playwright): two reviewers in two
browser sessions claim the same case, collide and resolve it; nothing overflows sideways at 420 px wide.

The review app runs over a real SQLite store with a fake file fetcher (no wiki is needed for these flows;
the flows with the real wiki and SMTP server are in test_review_ui.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.store.base import AllowlistEntry
from service.web.review.auth import hash_password
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer, free_port
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, running_list, start, upload_and_publish
from tests.test_review import PASSWORD, SHA1, make_ui
from tests.test_review_team import add_cases, pdq_of, reencoded, sha
from tests.test_review_ui import _with_review_url, browser, chromium
from tests.test_takedown import takedown_config

__all__ = ["browser", "chromium", "make_ui", "running_list"]


async def signed_in(browser: Any, base: str, name: str, width: int = 1280) -> Any:
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.goto(f"{base}/review/login")
    await page.fill("#name", name)
    await page.fill("#password", PASSWORD)
    await page.press("#password", "Enter")
    await page.wait_for_url(f"{base}/review/")
    return page


async def test_two_reviewers_claim_collide_and_resolve_in_two_browsers(
    make_ui: Callable[..., Any], browser: Any,
) -> None:
    h = await make_ui()
    await add_cases(h, 1)
    base = str(h.client.make_url("")).rstrip("/")
    alice = await signed_in(browser, base, "alice")
    bob = await signed_in(browser, base, "bob")
    case = f"{base}/review/matches/{SHA1}"

    await alice.goto(case)  # alice opens the case: she holds it
    assert "Claimed by you" in await alice.inner_text("section.decide")
    await bob.goto(f"{base}/review/")
    row = bob.locator("table.queue tbody tr", has_text="Case <script>")
    assert "Claimed by alice" in await row.inner_text()
    await bob.goto(case)
    assert "Claimed by alice" in await bob.inner_text("p.claim")

    # bob acts anyway: he is asked first, and nothing happens until he says yes
    await bob.fill("#note", "seen it before")
    await bob.click("button[value=dismiss]")
    await bob.wait_for_selector("#take-over")
    assert "Act anyway?" in await bob.inner_text("main")
    assert (await h.stores.review.review_case(SHA1) or pytest.fail()).state == "open"
    await bob.click("#take-over")
    await bob.wait_for_url(f"{case}?done=dismiss")
    assert "Dismissed" in await bob.inner_text("h1")

    # alice's page is stale: a reload shows bob's decision; the next case is another one
    await alice.reload()
    assert "by bob" in await alice.inner_text("section.decide")
    await alice.goto(f"{base}/review/")
    await alice.click("a.next")
    await alice.wait_for_url(f"{base}/review/matches/{sha(100)}*")
    decided = await h.stores.review.review_case(SHA1)
    assert decided is not None and (decided.state, decided.decided_by) == ("dismissed", "bob")
    audit = [(a.actor, a.action, a.note) for a in await h.stores.review.list_audit(10) if a.action == "dismiss"]
    assert audit == [("bob", "dismiss", "seen it before")]
    await alice.context.close()
    await bob.context.close()


async def test_nothing_overflows_sideways_at_420_px(make_ui: Callable[..., Any], browser: Any) -> None:
    h = await make_ui()
    await add_cases(h, 3, uploader="An uploader with a rather long user name that goes on and on")
    await h.stores.review.add_allowlist(AllowlistEntry(  # a long row on the allowlist page
        sha1="3" * 40, bank="a-bank-with-a-long-name", added_by="alice", added_at=h.clock[0], note="x " * 80,
        pdq="ab" * 32))
    base = str(h.client.make_url("")).rstrip("/")
    page = await signed_in(browser, base, "alice", width=420)
    pages = ["/review/", f"/review/matches/{SHA1}", "/review/audit", "/review/allowlist", "/review/reviewers",
             "/review/signins", "/review/login"]
    for path in pages:
        await page.goto(f"{base}{path}")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 420, f"{path} is {width} px wide at a 420 px viewport"
    # the bulk confirmation page too
    await page.goto(f"{base}/review/")
    await page.check("table.queue input[type=checkbox] >> nth=0")
    await page.click("form.bulk button[value=dismiss]")
    await page.wait_for_selector("#bulk-go")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 420
    await page.context.close()



@pytest.mark.wiki
async def test_a_reencoded_copy_of_a_dismissed_image_does_not_alert_end_to_end(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running], browser: Any,
) -> None:
    """Real MediaWiki, EventStreams and SMTP: a PDQ bank matches a photo; a reviewer dismisses it in Chromium;
    the same photo recompressed and resized, uploaded under another name, sends no email and opens no case."""
    run_id = uuid.uuid4().hex[:8]
    original = images.jpeg_bytes(images.photo(611, (640, 480)))
    copy = reencoded(original)
    sha_o, pdq_o = pdq_of(original)
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{pdq_o},child-protection,test,pdq-1\n")
    await upload_and_publish(mediawiki, sse_server, f"Team {run_id} beach.jpg", original)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    review = {"reviewers": [{"name": "alice", "password_hash": hash_password(PASSWORD)}]}
    cfg = takedown_config(tmp_path, mediawiki, sse_server, smtp_server, bank, "review",
                          http={"host": "127.0.0.1", "port": port}, review=review)
    run = await start(_with_review_url(cfg, f"{base}/review"))
    running_list.append(run)
    await run.finished(1)
    await smtp_server.wait_for_async(1)

    page = await signed_in(browser, base, "alice")
    await page.goto(f"{base}/review/matches/{sha_o}")
    await page.click("button[value=dismiss]")
    await page.wait_for_url(f"{base}/review/matches/{sha_o}?done=dismiss")
    [entry] = await run.service.stores.review.list_allowlist()
    assert entry.pdq is not None and entry.sha1 == sha_o  # the PDQ the service computed, kept with the row

    copy_name = f"Team {run_id} beach (copy).jpg"
    await upload_and_publish(mediawiki, sse_server, copy_name, copy)
    await run.finished(2)
    registry = run.service.metrics.registry
    assert registry.get_sample_value("mediamoderation_allowlisted_matches_total", {"bank": "cp-test"}) == 1
    keys = [i.key for i in await run.service.stores.outbox.list_actions()]
    assert not any(copy_name.replace(" ", "_") in k or copy_name in k for k in keys)  # no email, no takedown
    assert len(smtp_server.messages) == 1
    await page.goto(f"{base}/review/?state=all")
    assert "(copy)" not in await page.inner_text("main")
    await page.context.close()
