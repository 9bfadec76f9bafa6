"""Issue 15 end to end: a bordered copy of a known image uploaded to the real test wiki is matched through
the derived views, and the email and the review page say so in words."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.actions.notify import _details as email_details
from service.media.thumbnail import pdq_signal
from service.web.review.views import _details as page_details
from tests.infra import evasion, images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, make_config, running_list, start, upload_and_publish  # noqa: F401


def test_email_and_review_page_say_which_view_matched() -> None:
    details: dict[str, Any] = {"view": "trimmed-border", "variant": "original", "threshold": 31, "quality": 100}
    assert "matched after trimming a border" in email_details(details)
    assert "after trimming a border" in page_details(details)
    details = {"view": "trimmed-caption", "variant": "flip-y", "quality": 90}
    assert "matched after removing a caption strip as flip-y" in email_details(details)
    assert "matched as rotate90" in email_details({"view": "original", "variant": "rotate90"})
    assert "matched" not in email_details({"view": "original", "variant": "original", "quality": 99})
    assert "after extending the edges by 4%" in email_details({"view": "uncrop-4", "variant": "original"})
    one_side = {"view": "uncrop-left-7", "variant": "flip-y", "threshold": 31, "quality": 95}
    assert "matched after extending the left edge by 7% (a copy cropped on one side) as flip-y" in \
        email_details(one_side)
    assert "after extending the left edge by 7% (a copy cropped on one side)" in page_details(one_side)
    corner = {"view": "uncrop-top-right-4", "variant": "original"}
    assert "matched after extending the top and right edges by 4% (a copy cropped at a corner)" in \
        email_details(corner)


@pytest.mark.wiki
@pytest.mark.parametrize(("seed", "edit", "says"), [
    (7101, lambda img: evasion.add_border(img, 0.05, "black"), "matched after trimming a border"),
    (7102, lambda img: evasion.crop_side(img, 0.06, "left"), "edge by 7% (a copy cropped on one side)"),
], ids=["bordered", "cropped-on-one-side"])
async def test_edited_copy_is_matched_and_the_email_says_how(
    seed: int, edit: Callable[[Image.Image], Image.Image], says: str,
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running],  # noqa: F811
) -> None:
    """A copy with a border, or cropped on one side, uploaded to the wiki: matched, and the email says which
    view undid the edit."""
    run_id = uuid.uuid4().hex[:8]
    known = images.photo(seed)
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{pdq_signal(known).hex},,test-source,known-{seed}\n")
    edited = images.jpeg_bytes(edit(known), quality=80)
    event = await upload_and_publish(mediawiki, sse_server, f"Evasion {run_id} edited.jpg", edited)

    run = await start(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank))
    running_list.append(run)
    await run.finished(1)
    mails = await smtp_server.wait_for_async(1)
    assert len(mails) == 1
    body = mails[0].message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert f"known-{seed}" in body
    assert says in body, body
    assert await run.service.stores.ledger.event_outcome(event["meta"]["id"]) == "match"
