"""The email Subject: whatever its length and characters, readers get it back exactly, never starting
with a space (the email package's own folding can break the line right after ``Subject:``)."""

from __future__ import annotations

import email
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from aiosmtplib.email import flatten_message

from service.actions.notify import EmailNotifier, render_email
from service.config import NotifySection, SmtpSection, WikiSection
from service.metrics import Metrics
from service.store.base import OutboxItem
from tests.infra.smtp import SmtpServer

SENDER = "mediamoderation@example.org"
COMMONS = WikiSection(id="commonswiki", api_url="https://commons.wikimedia.org/w/api.php")
TITLES = [
    "File:Photo.jpg",  # "Subject: " + the subject is 79 characters: folded once, right after "Subject:"
    "File:A (b) c.jpg",
    "File:Photo (cropped) of the old town hall, seen from the river (2024).jpg",
    "File:Foto (1) von Müller, aufgenommen am 3. März 2024 in Köln – Ausschnitt.jpg",
    "File:" + "x" * 120 + ".jpg",  # one word longer than a line
    "File:=?utf-8?q?Not_an_encoded_word?=.jpg",  # must reach readers literally
    "File:日本語のファイル名 (2).png",
]


def payload(title: str, categories: list[str]) -> dict[str, object]:
    return {"wiki": "commonswiki", "title": title, "categories": categories, "matches": []}


def expected(title: str, categories: list[str]) -> str:
    return f"[mediamoderation] {', '.join(categories)} match on commonswiki: {title}"


@pytest.mark.parametrize("categories", [["child-protection"], ["child-protection", "terrorism"]])
@pytest.mark.parametrize("title", TITLES)
def test_subject_reads_back_exactly_and_never_starts_with_a_space(title: str, categories: list[str]) -> None:
    msg = render_email(payload(title, categories), SENDER, ["ts@example.org"], key="k",
                       page_url="https://commons.wikimedia.org/wiki/File:X.jpg", review_url=None)
    for raw in (flatten_message(msg), msg.as_bytes()):  # as aiosmtplib sends it, as it is spooled
        head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
        assert not head.split("Subject:", 1)[1].startswith("\r\n"), head
        subject_lines = head.split("Subject:", 1)[1].split("\r\n")
        assert all(len(line) <= 78 for line in ["Subject:" + subject_lines[0], *subject_lines[1:]])
        assert str(BytesParser(policy=policy.default).parsebytes(raw)["Subject"]) == expected(title, categories)
        legacy = email.message_from_bytes(raw)["Subject"]  # compat32, as many tools still read mail
        assert isinstance(legacy, str) and not legacy[:1].isspace(), repr(legacy)
    assert str(msg["Subject"]) == expected(title, categories)


async def test_subject_through_a_real_smtp_server(tmp_path: Path) -> None:
    with SmtpServer() as server:
        cfg = NotifySection(sender=SENDER, recipients=("ts@example.org",),
                            smtp=SmtpSection(host="127.0.0.1", port=server.port, security="none", timeout=5),
                            outbox_dir=str(tmp_path / "outbox"))
        notifier = EmailNotifier(cfg, Metrics(), wikis=(COMMONS,))
        for i, title in enumerate(TITLES):
            item = OutboxItem(id=i, key=f"notify:{i}", kind="notify", payload=payload(title, ["child-protection"]))
            assert await notifier.perform(item) == "sent"
        mails = await server.wait_for_async(len(TITLES), within=10)
    subjects = [str(m.message["Subject"]) for m in mails]
    assert subjects == [expected(t, ["child-protection"]) for t in TITLES]
