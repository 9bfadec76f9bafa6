"""The review queue for a team, over HTTP: search, filters kept, claims, bulk decisions, next case, the
uploader's other uploads, roles, reviewers added by the CLI, the sign-in log, the allowlist with undo,
and the negative bank (a re-encoded copy of a dismissed image does not alert).

(Two reviewers in two real browsers and the narrow-screen check are in test_review_ui.py.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.cli.main import main
from service.config import ThumbnailSection
from service.matchers.banks import pdq_words
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.models import Match
from service.negative_bank import NegativeBank
from service.pipeline_steps import record_matches
from service.store.base import NewAction, ScanRecord
from service.web.review.auth import hash_password
from tests.infra import images
from tests.test_review import PASSWORD, SHA1, Ui, cp_match, make_ui, upload_event

__all__ = ["make_ui"]


def sha(n: int) -> str:
    return f"{n:040x}"


async def add_cases(h: Ui, count: int, *, uploader: str = "Uploader<1>", start: int = 100) -> list[str]:
    out = []
    for i in range(start, start + count):
        event = dataclasses.replace(upload_event(f"File:Case {i}.jpg", sha1=sha(i), event_id=f"ev-{i}"),
                                    uploader=uploader)
        await h.stores.pipeline.record_matches(event, sha(i), [cp_match()], [])
        out.append(sha(i))
    return out


async def post(h: Ui, path: str, data: dict[str, Any] | list[tuple[str, str]], **kw: Any) -> Any:
    csrf = await h.csrf()
    body = [*(data if isinstance(data, list) else list(data.items())), ("csrf", csrf)]
    return await h.client.post(path, data=body, allow_redirects=kw.pop("allow_redirects", False), **kw)


async def test_search_by_uploader_title_sha1_and_filters_kept_across_pages(make_ui: Callable[..., Any]) -> None:
    h = await make_ui(page_size=2)
    await add_cases(h, 3, uploader="Mallory")
    await add_cases(h, 1, uploader="Someone else", start=200)
    await h.login()
    page = await (await h.client.get("/review/?q=mallory")).text()
    assert "1–2 of 3" in page and "Case 200" not in page
    older = re.search(r'rel="next" href="([^"]+)"', page)
    assert older is not None and "q=mallory" in older.group(1).replace("&amp;", "&")
    page2 = await (await h.client.get(older.group(1).replace("&amp;", "&"))).text()
    assert "3–3 of 3" in page2 and 'value="mallory"' in page2  # the search box keeps the query
    link = re.search(r'class="case" href="([^"]+)"', page2)
    assert link is not None and "f=" in link.group(1)  # the case page knows the filters it came from
    detail = await (await h.client.get(link.group(1).replace("&amp;", "&"))).text()
    assert "<a href=\"/review/?state=todo&q=mallory\">← Queue</a>" in detail.replace("&amp;", "&")
    by_sha = await (await h.client.get(f"/review/?q={sha(200)}&state=all")).text()
    assert "Case 200" in by_sha and "1–1 of 1" in by_sha
    by_hash = await (await h.client.get("/review/?q=m-1")).text()
    assert "of 5" in by_hash  # every case matched hash id m-1 (4 added + the fixture's)


async def test_two_reviewers_claim_collide_and_resolve_over_http(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    await h.login("alice")
    page = await (await h.client.get(f"/review/matches/{SHA1}")).text()
    assert "Claimed by <strong>you</strong>" in page
    h.client.session.cookie_jar.clear()
    await h.login("bob")
    page = await (await h.client.get(f"/review/matches/{SHA1}")).text()
    assert "Claimed by <strong>alice</strong>" in page and "you will be asked" in page
    queue = await (await h.client.get("/review/")).text()
    assert "Claimed by <strong>alice</strong>" in queue
    resp = await post(h, f"/review/matches/{SHA1}/decide", {"decision": "dismiss", "note": "fp"})
    assert resp.status == 409 and "Act anyway?" in await resp.text()
    assert (await h.stores.review.review_case(SHA1) or pytest.fail()).state == "open"  # nothing happened
    fields = dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', await resp.text()))
    assert fields["take_over"] == "1" and fields["decision"] == "dismiss" and fields["note"] == "fp"
    resp = await h.client.post(f"/review/matches/{SHA1}/decide", data=fields, allow_redirects=False)
    assert resp.status == 303
    case = await h.stores.review.review_case(SHA1)
    assert case is not None and (case.state, case.decided_by) == ("dismissed", "bob")
    assert await h.stores.review.case_claims([SHA1], h.clock[0]) == {}  # the decision ended the claim


async def test_bulk_dismiss_of_ten_cases_asks_first(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    ten = await add_cases(h, 10)
    await h.stores.review.claim_case(ten[0], "bob", h.clock[0], 600)
    await h.login("alice")
    queue = await (await h.client.get("/review/?category=child-protection")).text()
    assert queue.count('type="checkbox" name="sha1"') == 11
    resp = await post(h, "/review/bulk", [("decision", "dismiss"), ("f", "category=child-protection"),
                                          *(("sha1", s) for s in ten)])
    page = await resp.text()
    assert resp.status == 200 and "Dismiss as false positives: 10 case(s)?" in page
    assert "1 of these cases are claimed by another reviewer" in page and "claimed by bob" in page
    states = [(await h.stores.review.review_case(s) or pytest.fail()).state for s in ten]
    assert states == ["open"] * 10  # only asked
    fields = re.findall(r'name="([a-z_0-9]+)" value="([^"]*)"', page)
    assert ("confirmed", "1") in fields and sum(k == "sha1" for k, _ in fields) == 10
    resp = await h.client.post("/review/bulk", data=[*fields, ("note", "holiday photos")], allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/review/?category=child-protection&done=bulk"
    for s in ten:
        case = await h.stores.review.review_case(s)
        assert case is not None and (case.state, case.decided_by) == ("dismissed", "alice")
        assert await h.stores.review.allowlisted_banks(s) == frozenset({"cp-bank"})
    dismissals = [a for a in await h.stores.review.list_audit(50) if a.action == "dismiss"]
    assert len(dismissals) == 10 and all(a.note == "holiday photos" and a.detail["bulk"] == 10 for a in dismissals)
    left = await (await h.client.get("/review/?category=child-protection&done=bulk")).text()
    assert "1–1 of 1" in left and "Done: the decision was recorded" in left


async def test_next_case_after_a_decision_skips_cases_others_hold(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    a, b = await add_cases(h, 2)
    await h.stores.review.claim_case(b, "bob", h.clock[0], 600)  # bob is on case b
    await h.login("alice")
    resp = await post(h, f"/review/matches/{a}/decide", {"decision": "dismiss", "f": "state=todo"})
    assert resp.status == 303
    done = await (await h.client.get(resp.headers["Location"])).text()
    href = re.search(r'class="next" href="([^"]+)"', done)
    assert href is not None
    nxt = await h.client.get(href.group(1).replace("&amp;", "&"), allow_redirects=False)
    assert nxt.status == 303 and nxt.headers["Location"].startswith(f"/review/matches/{SHA1}")  # not b: bob's
    await post(h, f"/review/matches/{SHA1}/decide", {"decision": "dismiss"})
    last = await h.client.get(f"/review/next?after={SHA1}", allow_redirects=False)
    assert last.headers["Location"] == "/review/?done=none-left"


async def test_the_uploaders_other_uploads_and_block_link(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    others = await add_cases(h, 2, uploader="Uploader<1>")
    await h.login()
    await post(h, f"/review/matches/{others[0]}/decide", {"decision": "dismiss"})
    page = await (await h.client.get(f"/review/matches/{SHA1}")).text()
    section = page[page.index("Uploader's other matched uploads"):]
    assert "File:Case 100.jpg" in section and "File:Case 101.jpg" in section
    assert "Dismissed (false positive)" in section and "Needs review" in section
    block = re.search(r'<a href="([^"]+)"[^>]*>Block on testwiki</a>', section)
    assert block is not None and block.group(1).endswith("/Special:Block/Uploader%3C1%3E")
    assert "w.example" not in block.group(1)  # built from the configured wiki, never from the event


async def test_a_reviewer_added_by_the_cli_signs_in_without_restart(
    make_ui: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = await make_ui()
    config = tmp_path / "cli.yaml"
    config.write_text(json.dumps({
        "service": {"user_agent": "mediamoderation-test/0.1 (ts@example.org)"},
        "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:1/api.php"}],
        "banks": {"list": [{"name": "cp-bank", "path": str(tmp_path / "bank.csv"), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        "store": {"path": h.ui.cfg.store.path}}))

    def cli(*argv: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return main(["reviewer", *argv, "-c", str(config)])

    assert (await h.login("carol")).status == 401
    assert await asyncio.to_thread(cli, "add", "carol", stdin=f"{PASSWORD}\n") == 0
    assert await asyncio.to_thread(cli, "add", "carol", stdin=f"{PASSWORD}\n") == 1  # exists
    assert await asyncio.to_thread(cli, "add", "dave", stdin="short\n") == 2  # too short a password
    assert (await h.login("carol")).status == 303  # the running UI sees the store: no restart
    assert "Admins only" in await (await h.client.get("/review/allowlist")).text()  # a reviewer, not an admin
    assert "/review/allowlist" not in await (await h.client.get("/review/")).text()
    assert await asyncio.to_thread(cli, "role", "carol", "admin") == 0
    assert (await h.client.get("/review/allowlist")).status == 200
    assert await asyncio.to_thread(cli, "passwd", "carol", stdin="a brand new password\n") == 0
    assert await asyncio.to_thread(cli, "disable", "carol") == 0
    assert (await h.client.get("/review/", allow_redirects=False)).status == 303  # the session ended
    h.client.session.cookie_jar.clear()
    assert (await h.login("carol", "a brand new password")).status == 401
    assert await asyncio.to_thread(cli, "enable", "carol") == 0
    assert (await h.login("carol", "a brand new password")).status == 303
    assert await asyncio.to_thread(cli, "disable", "nobody") == 1
    reviewers = await h.stores.reviewers.list_reviewers()
    assert [(r.name, r.role, r.active) for r in reviewers] == [("carol", "admin", True)]
    assert reviewers[0].password_hash.startswith("$argon2")


async def test_sign_ins_good_and_bad_are_logged_for_admins_only(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    await h.stores.reviewers.add_reviewer("erin", hash_password(PASSWORD), "reviewer")
    assert (await h.login("alice", "wrong")).status == 401
    assert (await h.login("mallory", "guess")).status == 401
    assert (await h.login("erin")).status == 303
    rows = await h.stores.reviewers.list_signins(10)
    assert [(x.name, x.address, x.result) for x in rows] == [
        ("erin", "127.0.0.1", "ok"), ("mallory", "127.0.0.1", "bad-password"), ("alice", "127.0.0.1", "bad-password")]
    assert (await h.client.get("/review/signins")).status == 403  # erin is a reviewer
    h.client.session.cookie_jar.clear()
    await h.login("alice")  # config-file reviewers are admins (deprecated)
    page = await (await h.client.get("/review/signins")).text()
    assert "mallory" in page and "bad-password" in page and "erin" in page
    metrics = h.ui.metrics.registry
    assert metrics.get_sample_value("mediamoderation_review_signin_failures_total", {"reason": "bad-password"}) == 2


async def test_decisions_are_counted_by_kind_and_role_and_escalations_are_for_admins(
    make_ui: Callable[..., Any],
) -> None:
    h = await make_ui()
    await h.stores.reviewers.add_reviewer("erin", hash_password(PASSWORD), "reviewer")
    await h.login("erin")
    await post(h, f"/review/matches/{SHA1}/decide", {"decision": "escalate"})
    page = await (await h.client.get(f"/review/matches/{SHA1}")).text()
    assert "an admin confirms or dismisses this case" in page
    resp = await post(h, f"/review/matches/{SHA1}/decide", {"decision": "dismiss"})
    assert resp.status == 403
    h.client.session.cookie_jar.clear()
    await h.login("alice")
    assert (await post(h, f"/review/matches/{SHA1}/decide", {"decision": "dismiss", "take_over": "1"})).status == 303
    r = h.ui.metrics.registry
    name = "mediamoderation_review_decisions_total"
    assert r.get_sample_value(name, {"decision": "escalate", "role": "reviewer"}) == 1
    assert r.get_sample_value(name, {"decision": "dismiss", "role": "admin"}) == 1


async def test_decision_buttons_are_disabled_once_the_file_was_deleted(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    key = f"takedown:testwiki:File:Case <script>alert(1)</script>.jpg:{SHA1}"
    [item] = await h.stores.outbox.add_actions([NewAction(key=key, kind="takedown")])
    await h.stores.outbox.mark_done(item.id, "deleted")
    await h.login()
    page = await (await h.client.get(f"/review/matches/{SHA1}")).text()
    buttons = re.findall(r'<button type="submit" name="decision" value="(\w+)"[^>]*?(disabled)?>', page)
    assert buttons == [("confirm", "disabled"), ("dismiss", "disabled"), ("escalate", "disabled")]
    assert "already deleted on the wiki" in page
    resp = await post(h, f"/review/matches/{SHA1}/decide", {"decision": "escalate"})
    assert resp.status == 409 and (await h.stores.review.review_case(SHA1) or pytest.fail()).state == "open"


async def test_a_spooled_email_shows_as_spooled_not_sent(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    key = f"notify:testwiki:File:Case <script>alert(1)</script>.jpg:{SHA1}"
    [item] = await h.stores.outbox.add_actions([NewAction(key=key, kind="notify")])
    await h.stores.outbox.mark_done(item.id, "spooled")
    await h.login()
    page = await (await h.client.get(f"/review/matches/{SHA1}")).text()
    email = page[page.index("<dt>Email</dt>"):][:200]
    assert "Spooled" in email and "Sent" not in email


async def test_the_allowlist_page_adds_and_undoes_with_audit(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    await h.login("alice")
    await post(h, f"/review/matches/{SHA1}/decide", {"decision": "dismiss", "note": "logo"})
    page = await (await h.client.get("/review/allowlist")).text()
    assert SHA1 in page and "cp-bank" in page and "alice" in page and "logo" in page
    other = "3" * 40
    resp = await post(h, "/review/allowlist/add", {"sha1": other, "pdq": "ab" * 32, "bank": "*", "note": "test card"})
    assert resp.headers["Location"] == "/review/allowlist?done=added"
    assert await h.stores.review.allowlisted_banks(other) == frozenset({"*"})
    assert (await post(h, "/review/allowlist/add", {"sha1": "xyz", "note": "n"})).status == 400
    resp = await post(h, "/review/allowlist/undo", {"sha1": SHA1, "bank": "cp-bank"})
    assert resp.headers["Location"] == "/review/allowlist?done=undone"
    assert await h.stores.review.allowlisted_banks(SHA1) == frozenset()
    actions = [(a.actor, a.action, a.sha1) for a in await h.stores.review.list_audit(10)]
    assert actions[:3] == [("alice", "allowlist-undo", SHA1), ("alice", "allowlist-add", other),
                           ("alice", "dismiss", SHA1)]
    assert "allowlist-undo" in await (await h.client.get("/review/audit")).text()


def pdq_of(data: bytes) -> tuple[str, str]:
    sha1 = hashlib.sha1(data).hexdigest()
    media = prepare(data, sha1, ThumbnailSection())
    assert media.pdq is not None
    return sha1, media.pdq.hex


def _distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def reencoded(data: bytes) -> bytes:
    """The same picture recompressed at a lower JPEG quality and resized: another SHA-1, a close PDQ."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return images.jpeg_bytes(img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.LANCZOS),
                             quality=60)


async def test_a_reencoded_copy_of_a_dismissed_image_does_not_alert(make_ui: Callable[..., Any]) -> None:
    h = await make_ui()
    original = images.jpeg_bytes(images.photo(501, (640, 480)))
    copy = reencoded(original)
    sha_o, pdq_o = pdq_of(original)
    sha_c, pdq_c = pdq_of(copy)
    assert sha_o != sha_c and 0 < _distance(pdq_o, pdq_c) <= 31
    unrelated_sha, unrelated_pdq = pdq_of(images.jpeg_bytes(images.photo(502, (640, 480))))
    assert _distance(pdq_o, unrelated_pdq) > 31
    assert pdq_words  # the index works in the banks' word layout (see service.negative_bank.pdq_row)

    def bank_match(pdq: str) -> Match:  # a PDQ bank entry that both the original and the copy are near
        return Match(matcher="pdq", bank="cp-bank", category="child-protection", hash_id="bank-1", hash_value=pdq_o,
                     distance=_distance(pdq, pdq_o))

    def plan(event: Any, sha1: str, matches: Any) -> list[NewAction]:
        return [NewAction(key=f"notify:{event.wiki}:{event.title}:{sha1}", kind="notify")]

    negative = NegativeBank(h.stores.review, h.ui.cfg.review.allowlist_pdq_distance)

    async def record(title: str, sha1: str, pdq: str) -> list[Match]:
        return await record_matches(upload_event(title, sha1=sha1, event_id=title), sha1, [bank_match(pdq)],
                                    store=h.stores.pipeline, planners=[plan], metrics=Metrics(),
                                    on_actions=lambda items: None, allowlist=negative, pdq=pdq)

    assert await record("File:Original.jpg", sha_o, pdq_o)  # alerts: nobody dismissed it yet
    await h.stores.scans.put_scan(ScanRecord(sha1=sha_o, outcome="match", bank_version="v", scanned_at=1.0,
                                             pdq=pdq_o))
    await h.login("bob")
    await post(h, f"/review/matches/{sha_o}/decide", {"decision": "dismiss", "note": "a holiday photo"})
    [entry] = await h.stores.review.list_allowlist()
    assert (entry.sha1, entry.bank, entry.pdq, entry.added_by) == (sha_o, "cp-bank", pdq_o, "bob")
    before = len(await h.stores.outbox.list_actions())
    assert await record("File:Reencoded copy.jpg", sha_c, pdq_c) == []  # suppressed by the dismissed PDQ
    assert len(await h.stores.outbox.list_actions()) == before  # no email, no takedown
    assert await record("File:Unrelated.jpg", unrelated_sha, unrelated_pdq)  # a far image still alerts
    # Undo on the allowlist page: the copy alerts again (the index reloads when the allowlist changes).
    await post(h, "/review/allowlist/undo", {"sha1": sha_o, "bank": "cp-bank"})
    assert await record("File:Reencoded copy 2.jpg", sha_c, pdq_c)


async def test_the_sign_in_throttle_is_shared_by_replicas(make_ui: Callable[..., Any]) -> None:
    """Failures counted by one replica refuse the next attempt on another: the counts are in the store."""
    from service.store import sqlite_stores
    from service.web.review.auth import Auth

    h = await make_ui()
    other_stores = sqlite_stores(h.ui.cfg.store.path, clock=lambda: h.clock[0])  # another replica's connection
    await other_stores.open()
    try:
        other = Auth(h.ui.cfg.review, other_stores.review, lambda: h.clock[0], reviewers=other_stores.reviewers)
        for _ in range(5):
            assert await other.sign_in("alice", "guess", "127.0.0.1") == "bad-password"
        assert (await h.login("alice")).status == 429  # this replica never saw those failures itself
        h.clock[0] += 901  # the window passed
        assert (await h.login("alice")).status == 303
    finally:
        await other_stores.close()
