"""Exactly one effect per match across a restart in the middle of acting (real SMTP, real MediaWiki).

The SMTP server holds every session at MAIL FROM until the test opens a gate: the emails are in
flight when the service stops; the takedown of the same match runs meanwhile and finishes (the
failure of one effect never holds up the other).  After a restart, with the same events delivered
again (same id, and a copy with a new id as another data centre would send), each match has exactly
one email and exactly one deletion.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import threading
import uuid
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from service.config import Config
from tests.infra.mediawiki import MediaWikiServer, free_port
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_e2e import Running, running_list, start, upload_and_publish
from tests.test_takedown import delete_log, exact_bank, photo_bytes, takedown_config, takedowns_settled, until

pytestmark = pytest.mark.wiki
__all__ = ["running_list"]


class GatedSmtp:
    """A real SMTP server whose sessions wait at MAIL FROM until ``gate`` is set."""

    def __init__(self) -> None:
        self.port = free_port()
        self.gate = threading.Event()
        self.mail_attempts = 0
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        with self._lock:
            self.mail_attempts += 1
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content or b"")
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def received(self) -> list[EmailMessage]:
        with self._lock:
            return list(self.messages)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self.gate.set()
        self._controller.stop()


@pytest.fixture
def gated_smtp() -> Iterator[GatedSmtp]:
    server = GatedSmtp()
    server.start()
    yield server
    server.stop()


def config(tmp_path: Path, wiki: MediaWikiServer, sse: EventStreamsServer, smtp: GatedSmtp, bank: Path) -> Config:
    stand_in = SmtpServer(port=smtp.port)  # only its port is used by the config builder
    cfg = takedown_config(tmp_path, wiki, sse, stand_in, bank, "auto", service={"shutdown_grace": 1})
    # aiosmtplib says QUIT when a send is cancelled and waits for the answer up to the timeout: keep it
    # short so that stopping in the middle of a held session does not take the default 30 s.
    notify = cfg.actions.notify
    assert notify.smtp is not None
    smtp_section = dataclasses.replace(notify.smtp, timeout=2.0)
    return dataclasses.replace(cfg, actions=dataclasses.replace(
        cfg.actions, notify=dataclasses.replace(notify, smtp=smtp_section)))


async def test_one_email_and_one_delete_per_match_across_a_restart(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, gated_smtp: GatedSmtp,
    running_list: list[Running],
) -> None:
    run_id = uuid.uuid4().hex[:8]
    cp, terror = photo_bytes(301), photo_bytes(302)
    bank = exact_bank(tmp_path / "bank.csv", {cp: "child-protection", terror: "terrorism"})
    cp_name, terror_name = f"Restart {run_id} cp.jpg", f"Restart {run_id} terror.jpg"
    events = [await upload_and_publish(mediawiki, sse_server, cp_name, cp),
              await upload_and_publish(mediawiki, sse_server, terror_name, terror)]
    cfg = config(tmp_path, mediawiki, sse_server, gated_smtp, bank)

    # 1. Both emails are held at the SMTP server; the takedown goes through regardless.
    run = await start(cfg)
    running_list.append(run)
    await run.finished(2)
    [takedown] = await takedowns_settled(run)
    assert takedown.state == "done" and takedown.attempts == 1

    async def both_emails_in_flight() -> bool:
        return gated_smtp.mail_attempts >= 2

    await until(both_emails_in_flight, what="both emails reached the SMTP server")
    assert gated_smtp.received() == []
    assert (await asyncio.to_thread(mediawiki.imageinfo, cp_name)).get("missing")

    # 2. Stop in the middle of sending: the emails stay pending in the store.
    await run.stop()
    assert gated_smtp.received() == []

    # 3. Restart with the SMTP server letting mail through; the same uploads are delivered again.
    gated_smtp.gate.set()
    for event in events:
        sse_server.publish(copy.deepcopy(event))  # the same meta.id
        other_dc: dict[str, Any] = copy.deepcopy(event)
        other_dc["meta"] = {**other_dc["meta"], "id": str(uuid.uuid4())}  # the same upload, another id
        sse_server.publish(other_dc)
    run2 = await start(cfg)
    running_list.append(run2)
    await run2.finished(4)

    async def outbox_empty() -> bool:
        return await run2.service.stores.outbox.pending_count() == 0

    await until(outbox_empty, what="every pending action performed")
    received = gated_smtp.received()
    # The takedown's own report (issue 13) is one more email, once; the match emails are checked below.
    assert sum("Takedown done:" in str(m["Subject"]) for m in received) == 1
    mails = [m for m in received if "Takedown done:" not in str(m["Subject"])]
    assert sorted(str(m["Subject"]).split(": ", 1)[1] for m in mails) == sorted(
        [f"File:{cp_name}", f"File:{terror_name}"]), [str(m["Subject"]) for m in mails]
    assert len({m["Message-ID"] for m in mails}) == 2
    assert len(await asyncio.to_thread(delete_log, mediawiki, f"File:{cp_name}")) == 1  # one delete, ever
    everything = await run2.service.stores.outbox.list_actions()
    # Besides: the takedown's report (sent) and the preservation reminder (due in 335 days).
    extra = sorted((i.key.split(":", 1)[0], i.state) for i in everything
                   if i.key.startswith(("report:", "preservation:")))
    assert extra == [("preservation", "pending"), ("report", "done")]
    items = [i for i in everything if not i.key.startswith(("report:", "preservation:"))]
    assert sorted((i.kind, i.state) for i in items) == [("notify", "done"), ("notify", "done"), ("takedown", "done")]
    assert {i.payload["sha1"] for i in items} == {hashlib.sha1(cp).hexdigest(), hashlib.sha1(terror).hexdigest()}
    await run2.stop()
    assert len(gated_smtp.received()) == 3
