"""Takedowns against the real MediaWiki: delete every matching version, verify, suppress, permission errors;
and the whole service in auto, dry-run and off mode."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from service.actions.base import OutboxDispatcher
from service.actions.takedown import TakedownAction, TakedownError
from service.config import RetrySection, Secret, TakedownSection, WikiAuthSection, WikiSection
from service.mediawiki import WikiApi
from service.metrics import Metrics
from service.store import Stores
from service.store.base import NewAction, OutboxItem
from tests.helpers import until
from tests.infra import images
from tests.infra.mediawiki import FULL_GRANTS, MEDIAWIKI_DIR, MediaWikiServer, _bot_password
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, make_config, running_list, start, upload_and_publish

pytestmark = pytest.mark.wiki
__all__ = ["running_list"]  # the fixture, re-used here

TAG = "mediamoderation"
REASON = "Matched a known-abuse hash list (test)"


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Accounts:
    suppress_user: str
    suppress_password: str


def _php(wiki: MediaWikiServer, script: str, *args: str) -> None:
    env = {**os.environ, "MW_CONFIG_FILE": str(wiki.settings_file)}
    done = subprocess.run(["php", str(MEDIAWIKI_DIR / "maintenance" / script), *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def accounts(mediawiki: MediaWikiServer) -> Accounts:
    """A change tag, Admin in the suppress group and a bot password with the oversight grant."""
    password = _bot_password()
    _php(mediawiki, "addChangeTag.php", "--tag", TAG, "--reason", "takedown tests")
    _php(mediawiki, "createBotPassword.php", "--appid", "suppressor", "--grants", FULL_GRANTS + ",oversight",
         mediawiki.admin_user, password)
    _php(mediawiki, "createAndPromote.php", "--force", "--custom-groups", "suppress", mediawiki.admin_user)
    return Accounts(f"{mediawiki.admin_user}@suppressor", password)


def secret_file(tmp_path: Path, value: str) -> str:
    path = tmp_path / f"secret-{secrets.token_hex(4)}"
    path.write_text(value)
    return str(path)


def wiki_section(wiki: MediaWikiServer) -> WikiSection:
    return WikiSection(id=wiki.wiki_id, api_url=wiki.api_url)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"mediamoderation_{name}", labels) or 0.0


@dataclass
class Harness:
    action: TakedownAction
    stores: Stores
    metrics: Metrics
    wiki: MediaWikiServer

    def item(self, title: str, sha1: str, *, dry_run: bool = False, attempts: int = 0) -> OutboxItem:
        key = f"{'dryrun' if dry_run else 'takedown'}:{self.wiki.wiki_id}:{title}:{sha1}"
        payload = {"wiki": self.wiki.wiki_id, "title": title, "sha1": sha1, "page_url": "http://x/" + title,
                   "matches": [], "categories": ["child-protection"], "dry_run": dry_run, "requested_by": "alice"}
        return OutboxItem(id=1, key=key, kind="takedown", payload=payload, attempts=attempts)


@pytest.fixture
async def harness_factory(tmp_path: Path, mediawiki: MediaWikiServer,
                          stores: Stores) -> AsyncIterator[Callable[..., Harness]]:
    made: list[TakedownAction] = []

    def make(user: str | None = None, password: str | None = None, **cfg: Any) -> Harness:
        metrics = Metrics()
        auth = WikiAuthSection(username=user or mediawiki.bot_user,
                               password=Secret(file=secret_file(tmp_path, password or mediawiki.bot_password)))
        section = TakedownSection(mode="auto", auth=auth, reason=REASON, **cfg)
        action = TakedownAction(section, (wiki_section(mediawiki),), "mediamoderation-test/0.1 (ts@example.org)",
                                metrics, audit=stores.review, outbox=stores.outbox)
        made.append(action)
        return Harness(action, stores, metrics, mediawiki)

    yield make
    for action in made:
        await action.aclose()


def upload(wiki: MediaWikiServer, name: str, *datas: bytes) -> list[str]:
    """Upload each version in turn; returns their SHA-1s."""
    for data in datas:
        wiki.upload(name, data)
    return [hashlib.sha1(d).hexdigest() for d in datas]


def versions(wiki: MediaWikiServer, title: str) -> list[dict[str, Any]]:
    page = wiki.client.get(action="query", prop="imageinfo", titles=title, iiprop="sha1|archivename",
                           iilimit="max")["query"]["pages"][0]
    return list(page.get("imageinfo") or [])


def delete_log(wiki: MediaWikiServer, title: str) -> list[dict[str, Any]]:
    return list(wiki.client.get(action="query", list="logevents", letype="delete", letitle=title,
                                leprop="ids|comment|tags|type")["query"]["logevents"])


def photo_bytes(seed: int) -> bytes:
    return images.jpeg_bytes(images.photo(seed, (320, 240)))


# --------------------------------------------------------------------------- the action on a real wiki


async def test_deletes_every_version_with_tag_reason_and_verifies(
    mediawiki: MediaWikiServer, accounts: Accounts, harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(tags=(TAG,))
    title = f"File:TD {uuid.uuid4().hex[:8]} overwritten.jpg"
    _, current = await asyncio.to_thread(upload, mediawiki, title, photo_bytes(101), photo_bytes(102))

    result = await h.action.perform(h.item(title, current))

    assert "deleted the whole page (2 versions)" in result and "verified: file missing" in result
    page = await asyncio.to_thread(mediawiki.imageinfo, title)
    assert page.get("missing") and not page.get("imageinfo")
    [entry] = await asyncio.to_thread(delete_log, mediawiki, title)
    assert entry["comment"] == REASON and entry["tags"] == [TAG]
    assert sample(h.metrics, "takedowns_total", result="deleted") == 1
    [audit] = await h.stores.review.list_audit(10)
    assert audit.action == "takedown" and audit.title == title and "verified" in audit.note

    # Performing it again (a retry after a crash) deletes nothing twice: already gone counts as done.
    again = await h.action.perform(h.item(title, current))
    assert again.startswith("already gone") and "verified" in again
    assert len(await asyncio.to_thread(delete_log, mediawiki, title)) == 1
    assert sample(h.metrics, "takedowns_total", result="already-gone") == 1


async def test_an_overwritten_matching_version_is_deleted_as_oldimage(
    mediawiki: MediaWikiServer, harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory()
    title = f"File:TD {uuid.uuid4().hex[:8]} old version.jpg"
    matching, clean = await asyncio.to_thread(upload, mediawiki, title, photo_bytes(111), photo_bytes(112))

    result = await h.action.perform(h.item(title, matching))

    assert "1 old version(s)" in result and "the current version stays" in result
    left = await asyncio.to_thread(versions, mediawiki, title)
    assert [v["sha1"] for v in left] == [clean]  # the matching old version is gone, the clean one stays


async def test_permission_error_is_clear_alerts_and_is_not_retried(
    mediawiki: MediaWikiServer, harness_factory: Callable[..., Harness], stores: Stores,
) -> None:
    h = harness_factory(user=mediawiki.nodelete_user, password=mediawiki.nodelete_password)
    title = f"File:TD {uuid.uuid4().hex[:8]} nodelete.jpg"
    [sha1] = await asyncio.to_thread(upload, mediawiki, title, photo_bytes(121))
    item = h.item(title, sha1)
    [queued] = await stores.outbox.add_actions([NewAction(key=item.key, kind="takedown", payload=item.payload)])
    dispatcher = OutboxDispatcher(stores.outbox, {"takedown": h.action}, RetrySection(0.01, 0.02), h.metrics)

    await dispatcher.drain(timeout=30)

    after = await stores.outbox.get_action(queued.id)
    assert after is not None and after.state == "failed" and after.attempts == 1  # no retry loop
    error = after.last_error or ""
    assert "Admin@nodelete" in error and "may not delete" in error and "'delete' right" in error, error
    assert sample(h.metrics, "takedowns_total", result="permission-denied") == 1
    alerts = [i for i in await stores.outbox.list_actions() if i.key.startswith("alert:")]
    assert len(alerts) == 1 and alerts[0].kind == "notify"
    assert "TAKEDOWN FAILED" in alerts[0].payload["alert"] and "may not delete" in alerts[0].payload["alert"]
    assert (await asyncio.to_thread(mediawiki.imageinfo, title)).get("imageinfo")  # still there
    assert [a.action for a in await stores.review.list_audit(10)] == ["takedown-failed"]


async def test_wrong_bot_password_is_an_auth_failure(
    mediawiki: MediaWikiServer, harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(password=_bot_password())
    with pytest.raises(TakedownError) as info:
        await h.action.perform(h.item("File:Whatever.jpg", "0" * 40))
    assert info.value.reason == "auth-failed" and not info.value.retriable
    assert "login as 'Admin@mediamod' failed" in str(info.value)


async def test_expired_csrf_token_is_fetched_again(
    mediawiki: MediaWikiServer, harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory()
    first = f"File:TD {uuid.uuid4().hex[:8]} token a.jpg"
    second = f"File:TD {uuid.uuid4().hex[:8]} token b.jpg"
    [sha_a] = await asyncio.to_thread(upload, mediawiki, first, photo_bytes(131))
    [sha_b] = await asyncio.to_thread(upload, mediawiki, second, photo_bytes(132))
    await h.action.perform(h.item(first, sha_a))
    api = h.action._apis[mediawiki.wiki_id]
    api.client._csrf = "0123456789abcdef0123456789abcdef+\\"  # what an expired token looks like to the wiki

    result = await h.action.perform(h.item(second, sha_b))

    assert "deleted" in result
    assert sample(h.metrics, "wiki_api_requests_total", action="delete", result="badtoken") == 1


async def test_suppression_hides_the_archived_versions(
    mediawiki: MediaWikiServer, accounts: Accounts, harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(user=accounts.suppress_user, password=accounts.suppress_password, suppress=True)
    title = f"File:TD {uuid.uuid4().hex[:8]} suppress.jpg"
    [sha1] = await asyncio.to_thread(upload, mediawiki, title, photo_bytes(141))

    result = await h.action.perform(h.item(title, sha1))

    assert "suppressed 1 archived version(s)" in result and "verified hidden" in result
    # Seen by a plain administrator (no suppress rights): hidden, suppressed, no hash or uploader shown.
    name = title.removeprefix("File:").replace(" ", "_")
    rows = (await asyncio.to_thread(mediawiki.client.get, action="query", list="filearchive", faprefix=name,
                                    faprop="sha1|user"))["query"]["filearchive"]
    assert len(rows) == 1
    assert rows[0]["filehidden"] and rows[0]["suppressed"] and rows[0]["userhidden"] and rows[0]["commenthidden"]
    assert "sha1" not in rows[0] and "user" not in rows[0]
    assert sample(h.metrics, "suppressions_total", result="suppressed") == 1


async def test_suppression_without_the_right_is_a_permission_error_after_the_delete(
    mediawiki: MediaWikiServer, accounts: Accounts, harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(suppress=True)  # the mediamod bot password has no oversight grant
    title = f"File:TD {uuid.uuid4().hex[:8]} nosuppress.jpg"
    [sha1] = await asyncio.to_thread(upload, mediawiki, title, photo_bytes(151))
    with pytest.raises(TakedownError) as info:
        await h.action.perform(h.item(title, sha1))
    assert info.value.permission and "may not suppress" in str(info.value)
    assert "the deletion itself is done" in str(info.value)
    assert (await asyncio.to_thread(mediawiki.imageinfo, title)).get("missing")


async def test_maxlag_waits_retry_after_and_tries_again(tmp_path: Path) -> None:
    """MediaWiki cannot be made lagged on demand: a stand-in API answers maxlag twice, then works."""
    calls: list[str] = []

    async def api(request: web.Request) -> web.Response:
        params = {**request.query, **{k: str(v) for k, v in (await request.post()).items()}}
        calls.append(params.get("action", "?") + ":" + params.get("maxlag", "") + ":"
                     + request.headers.get("Authorization", ""))
        if params.get("meta") == "userinfo" and len(calls) <= 2:
            return web.json_response({"error": {"code": "maxlag", "info": "Waiting for db: 7 seconds lagged"}},
                                     headers={"Retry-After": "7"})
        return web.json_response({"query": {"userinfo": {"name": "Bot", "groups": ["sysop"], "rights": ["delete"]}}})

    app = web.Application()
    app.router.add_route("*", "/api.php", api)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    wapi = WikiApi(WikiSection(id="w", api_url=f"http://127.0.0.1:{port}/api.php"),
                   WikiAuthSection(method="oauth2", token=Secret(file=secret_file(tmp_path, "t0ken"))),
                   "mediamoderation-test/0.1 (ts@example.org)", Metrics(), maxlag=5, sleep=fake_sleep)
    try:
        account = await wapi.account()
    finally:
        await wapi.aclose()
        await runner.cleanup()
    assert account.name == "Bot" and "delete" in account.rights
    assert waits == [7.0, 7.0] and len(calls) == 3
    assert all(c == "query:5:Bearer t0ken" for c in calls), calls  # maxlag on every call; OAuth 2 bearer


# --------------------------------------------------------------------------- the whole service


def exact_bank(path: Path, rows: dict[bytes, str]) -> Path:
    path.write_text("hash,category,source,id\n" + "".join(
        f"{hashlib.sha1(data).hexdigest()},{category},test,{category}-{i}\n" for i, (data, category)
        in enumerate(rows.items())))
    return path


def takedown_config(tmp_path: Path, wiki: MediaWikiServer, sse: EventStreamsServer, smtp: SmtpServer, bank: Path,
                    mode: str, **extra: Any) -> Any:
    auth = {"username": wiki.bot_user, "password": {"file": secret_file(tmp_path, wiki.bot_password)}}
    actions = {"notify": {"sender": "mediamoderation@example.org", "recipients": ["ts@example.org"],
                          "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none"},
                          "review_url": "http://127.0.0.1:1/review",
                          "retry": {"initial_delay": 0.1, "max_delay": 0.5}},
               "takedown": {"mode": mode, "auth": auth, "retry": {"initial_delay": 0.1, "max_delay": 0.5}}}
    return make_config(tmp_path, wiki, sse, smtp, bank, actions=actions, **extra)


async def takedowns_settled(run: Running) -> list[OutboxItem]:
    items: list[OutboxItem] = []

    async def settled() -> bool:
        nonlocal items
        items = [i for i in await run.service.stores.outbox.list_actions() if i.kind == "takedown"]
        return all(i.state != "pending" for i in items)

    await until(settled, what="every takedown finished")
    return items


async def test_auto_mode_deletes_only_child_protection(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running],
) -> None:
    run_id = uuid.uuid4().hex[:8]
    cp, terror, clean = photo_bytes(201), photo_bytes(202), photo_bytes(203)
    bank = exact_bank(tmp_path / "bank.csv", {cp: "child-protection", terror: "terrorism"})
    names = {"cp": f"Auto {run_id} cp.jpg", "terror": f"Auto {run_id} terror.jpg", "clean": f"Auto {run_id} clean.jpg"}
    for key, data in (("cp", cp), ("terror", terror), ("clean", clean)):
        await upload_and_publish(mediawiki, sse_server, names[key], data)

    run = await start(takedown_config(tmp_path, mediawiki, sse_server, smtp_server, bank, "auto"))
    running_list.append(run)
    await run.finished(3)
    items = await takedowns_settled(run)
    # The two match emails; the takedown's own report ("Takedown done:") is checked in test_ts_workflow_e2e.py.
    mails = [m for m in await smtp_server.wait_for_async(3) if "Takedown done:" not in str(m.message["Subject"])]

    assert [(i.payload["title"], i.state) for i in items] == [(f"File:{names['cp']}", "done")]
    assert "verified: file missing" in (items[0].result or "")
    assert (await asyncio.to_thread(mediawiki.imageinfo, names["cp"])).get("missing")  # gone through the API
    assert (await asyncio.to_thread(mediawiki.imageinfo, names["terror"])).get("imageinfo")  # never automatic
    assert (await asyncio.to_thread(mediawiki.imageinfo, names["clean"])).get("imageinfo")
    by_subject = {("terrorism" in str(m.message["Subject"])): m for m in mails}
    cp_text = by_subject[False].message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    t_text = by_subject[True].message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "automatic takedown started" in cp_text and "/review/matches/" in cp_text
    assert "no automatic takedown for terrorism" in t_text
    assert sample(run.service.metrics, "takedowns_total", result="deleted") == 1
    removed = await run.service.stores.review.review_case(hashlib.sha1(cp).hexdigest())
    assert removed is not None and removed.state == "removed"  # nobody has to look at it


@pytest.mark.parametrize("mode", ["dry-run", "off"])
async def test_dry_run_and_off_delete_nothing(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running], mode: str,
) -> None:
    cp = photo_bytes(211 if mode == "off" else 212)
    bank = exact_bank(tmp_path / "bank.csv", {cp: "child-protection"})
    name = f"{mode} {uuid.uuid4().hex[:8]} cp.jpg"
    await upload_and_publish(mediawiki, sse_server, name, cp)

    run = await start(takedown_config(tmp_path, mediawiki, sse_server, smtp_server, bank, mode))
    running_list.append(run)
    await run.finished(1)
    items = await takedowns_settled(run)
    [mail] = await smtp_server.wait_for_async(1)

    assert (await asyncio.to_thread(mediawiki.imageinfo, name)).get("imageinfo")  # still there
    assert not await asyncio.to_thread(delete_log, mediawiki, f"File:{name}")
    text = mail.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    if mode == "dry-run":
        [item] = items
        assert item.key.startswith("dryrun:") and item.state == "done"
        assert "dry-run: would delete the whole page (1 version)" in (item.result or "")
        assert "has the delete right" in (item.result or "")
        assert "would have been deleted automatically" in text
        assert sample(run.service.metrics, "takedowns_total", result="dry-run") == 1
    else:
        assert items == []
        assert "takedown is off" in text
