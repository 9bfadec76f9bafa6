"""Retroactive matching end to end with the real parts: files scanned clean on the test MediaWiki, then a
bank file gains their hashes (reload -> BankDelta); the matches are recorded and emailed once with the
retroactive marker, a restart mid-delta sends nothing twice, and the flood guard holds a delta hitting
too many files."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from service.config import ThumbnailSection
from service.media.thumbnail import prepare
from service.store.base import RETRO_ACTING, RETRO_DONE, RETRO_QUARANTINED
from tests.helpers import until
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, make_config, running_list, start, upload_and_publish
from tests.test_e2e import pytestmark as pytestmark  # needs the wiki

__all__ = ["running_list"]  # the fixture, shared with test_e2e

HEADER = "hash,category,source,id\n"


async def test_bank_gains_hashes_of_files_scanned_clean(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    running_list: list[Running],
) -> None:
    run_id = uuid.uuid4().hex[:8]
    bank = tmp_path / "bank.csv"
    bank.write_text(HEADER)
    files = {f"Retro {run_id} {n}.jpg": images.jpeg_bytes(images.photo(8100 + n)) for n in range(4)}
    names = list(files)
    events = [await upload_and_publish(mediawiki, sse_server, name, data) for name, data in files.items()]
    cfg = make_config(tmp_path, mediawiki, sse_server, smtp_server, bank,
                      banks={"reload_interval": 0.1, "flood_guard": {"max_hits": 2},
                             "retro": {"flush_interval": 0.1, "refresh_interval": 0.2}})
    run = await start(cfg)
    running_list.append(run)
    await run.finished(len(events))
    stores = run.service.stores
    for e in events:
        assert await stores.ledger.event_outcome(e["meta"]["id"]) == "clean"
    await until(stores.retro.count_file_hashes, 10)
    await until(lambda: _count(stores.retro), 10)

    # The bank gains the PDQ hash of file 0 (hashed here from the original: the service hashed the wiki's
    # thumbnail) and the SHA-1 of file 1.
    pdq0 = prepare(files[names[0]], "0" * 40, ThumbnailSection()).pdq
    assert pdq0 is not None
    sha1_1 = hashlib.sha1(files[names[1]]).hexdigest()
    bank.write_text(f"{HEADER}{pdq0.hex},,test-source,late-pdq\n{sha1_1},terrorism,test-source,late-sha1\n")
    mails = await smtp_server.wait_for_async(2, within=30)
    subjects = sorted(str(m.message["Subject"]) for m in mails)
    assert len(mails) == 2, subjects
    assert any(names[0] in s and "child-protection" in s for s in subjects), subjects
    assert any(names[1] in s and "terrorism" in s for s in subjects), subjects
    for mail in mails:
        body = mail.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        assert "found by retroactive match: cp-test, added " in body
    [delta] = await stores.retro.list_retro_deltas()
    await until(lambda: _state(stores.retro, delta.id, RETRO_DONE), 10)
    assert {r.get("matcher") for r in await _matches(run)} == {"pdq", "sha1"}
    await run.stop()

    # A crash while acting on the delta: the restart resumes it, and nobody is emailed twice.
    from service.store import sqlite_stores

    side = sqlite_stores(cfg.store.path)
    await side.open()
    await side.retro.update_retro_delta(delta.id, state=RETRO_ACTING, progress=0)
    await side.close()
    run2 = await start(cfg)
    running_list.append(run2)
    stores = run2.service.stores
    await until(lambda: _state(stores.retro, delta.id, RETRO_DONE), 20)

    # A delta hitting 3 files (limit 2) is quarantined: one alert, no per-file email, hits in review.
    sha1s = [hashlib.sha1(files[n]).hexdigest() for n in names[1:]]
    bank.write_text(f"{HEADER}{pdq0.hex},,test-source,late-pdq\n{sha1_1},terrorism,test-source,late-sha1\n"
                    + "".join(f"{s},,flood,flood-{i}\n" for i, s in enumerate(sha1s)))
    mails = await smtp_server.wait_for_async(3, within=30)
    assert "FLOOD GUARD" in str(mails[-1].message["Subject"])
    [held] = await stores.retro.list_retro_deltas((RETRO_QUARANTINED,))
    assert held.note == "3 files hit (limit 2)"
    await until(lambda: _no_pending(run2), 10)
    assert len(smtp_server.messages) == 3  # the first delta's two, the alert: nothing twice
    flood_rows = [r for r in await _matches(run2) if str(r["hash_id"]).startswith("flood-")]
    assert {r["title"] for r in flood_rows} == {f"File:{n}" for n in names[1:]}
    await run2.stop()


async def _count(store: object) -> bool:
    return bool(await store.count_file_hashes() == 4)  # type: ignore[attr-defined]


async def _state(store: object, delta_id: int, state: str) -> bool:
    d = await store.get_retro_delta(delta_id)  # type: ignore[attr-defined]
    return d is not None and d.state == state


async def _no_pending(run: Running) -> bool:
    return await run.service.stores.outbox.pending_count() == 0


async def _matches(run: Running) -> list[dict[str, object]]:
    return await run.service.stores.pipeline.list_matches(100)  # type: ignore[attr-defined, no-any-return]
