"""The team review queue in real browsers (Debian's Chromium driven by Playwright): two reviewers in two
browser sessions claim the same case, collide and resolve it; nothing overflows sideways at 420 px wide.

The review app runs over a real SQLite store with a fake file fetcher (no wiki is needed for these flows;
the flows with the real wiki and SMTP server are in test_review_ui.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from service.store.base import AllowlistEntry
from tests.test_review import PASSWORD, SHA1, make_ui
from tests.test_review_team import add_cases, sha
from tests.test_review_ui import browser, chromium

__all__ = ["browser", "chromium", "make_ui"]


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

