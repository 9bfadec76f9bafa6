"""EmailNotifier against real aiosmtpd servers on 127.0.0.1, plus .eml spooling and message content."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.actions.base import OutboxDispatcher
from service.actions.notify import (
    EmailNotifier,
    email_links,
    message_id,
    notification_payload,
    render_email,
    spool_name,
)
from service.config import NotifySection, RetrySection, Secret, SmtpSection, WikiSection
from service.errors import NotifyError
from service.metrics import Metrics
from service.models import Match, UploadEvent
from service.store.base import NewAction, OutboxItem
from tests.fakes import FakeClock, MemoryOutbox
from tests.infra.smtp import SmtpServer

SENDER = "mediamoderation@example.org"
RCPT = ("ts@example.org",)
HOSTILE_TITLE = 'File:<script>alert("x")</script> & <img src=x onerror=alert(1)>.jpg'
HOSTILE_USER = '<b>Mallory</b>"&\r\nBcc: victim@example.net'
MEDIA_HOST = "upload.wikimedia.org"
COMMONS = WikiSection(id="commonswiki", api_url="https://commons.wikimedia.org/w/api.php",
                      media_hosts=(MEDIA_HOST,))
REVIEW = "https://review.example.org/mm/"
# The hostile title as MediaWiki puts it in a URL: spaces to underscores, the rest percent-encoded.
HOSTILE_PAGE = ("https://commons.wikimedia.org/wiki/File:%3Cscript%3Ealert(%22x%22)%3C/script%3E_%26_"
                "%3Cimg_src%3Dx_onerror%3Dalert(1)%3E.jpg")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def event(**kw: Any) -> UploadEvent:
    base: dict[str, Any] = dict(
        event_id="c118d26b-d9a7-45bf-a25a-32a6821adf66", wiki="commonswiki", title=HOSTILE_TITLE,
        server_url="https://commons.wikimedia.org",
        page_url="https://commons.wikimedia.org/wiki/File:Evil.jpg", uploader=HOSTILE_USER,
        upload_time=dt.datetime(2023, 5, 25, 14, 10, 53, tzinfo=dt.UTC), log_action="overwrite",
        sha1="c6bafc12cb88488369fad574226e2b6d72617f8d",
    )
    base.update(kw)
    return UploadEvent(**base)


MATCHES = [
    Match("pdq", "test-bank", "child-protection", "hash-42", "ab" * 32, distance=12, source="test-source"),
    Match("sha1", "tve-bank", "terrorism", "tve-7", "c6bafc12cb88488369fad574226e2b6d72617f8d"),
]


def payload(**kw: Any) -> dict[str, Any]:
    return notification_payload(event(**kw), MATCHES, done=["match recorded", "no automatic takedown"],
                                review_url="https://review.example.org/mm/")


def item(key: str = "notify:commonswiki:File:Evil.jpg:c6ba", p: dict[str, Any] | None = None) -> OutboxItem:
    return OutboxItem(id=1, key=key, kind="notify", payload=p if p is not None else payload())


def notifier(smtp: SmtpSection | None, tmp_path: Path, recipients: tuple[str, ...] = RCPT,
             **kw: Any) -> tuple[EmailNotifier, Metrics]:
    metrics = Metrics()
    cfg = NotifySection(sender=SENDER, recipients=recipients, smtp=smtp, outbox_dir=str(tmp_path / "outbox"))
    return EmailNotifier(cfg, metrics, wikis=(COMMONS,), **kw), metrics


def render(p: dict[str, Any], key: str = "k") -> EmailMessage:
    page, review = email_links(p, {COMMONS.id: COMMONS}, REVIEW)
    return render_email(p, SENDER, RCPT, page_url=page, review_url=review, key=key)


def count(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("mediamoderation_notifications_total", {"result": result}) or 0.0


def parts(msg: EmailMessage) -> dict[str, str]:
    return {p.get_content_type(): p.get_content() for p in msg.walk() if not p.is_multipart()}


# --------------------------------------------------------------------------- content


def test_payload_is_json_ready() -> None:
    import json

    p = payload()
    assert json.loads(json.dumps(p)) == p
    assert p["categories"] == ["child-protection", "terrorism"]
    assert p["upload_time"] == "2023-05-25T14:10:53+00:00"
    assert p["review_url"] == "https://review.example.org/mm/matches/c6bafc12cb88488369fad574226e2b6d72617f8d"
    assert p["matches"][0]["hash_id"] == "hash-42" and p["log_action"] == "overwrite"


def test_email_content_both_parts_escaped_no_media() -> None:
    msg = render(payload(), key="notify:k1")
    assert msg["Subject"].startswith("[mediamoderation] child-protection, terrorism match on commonswiki: File:<")
    assert "\n" not in msg["Subject"] and msg["Bcc"] is None
    assert msg.get_content_type() == "multipart/alternative"
    assert list(msg.iter_attachments()) == []
    body = parts(msg)
    assert set(body) == {"text/plain", "text/html"}
    text, page = body["text/plain"], body["text/html"]
    for part in (text, page):
        assert HOSTILE_PAGE in part
        assert "2023-05-25T14:10:53+00:00" in part and "overwrite" in part
        for needle in ("pdq", "test-bank", "hash-42", "12", "test-source", "tve-7", "terrorism"):
            assert needle in part
        assert "no automatic takedown" in part
        assert "https://review.example.org/mm/matches/c6bafc12cb88488369fad574226e2b6d72617f8d" in part
    # Attacker-controlled text is escaped in HTML and never breaks a line or a header.
    assert "<script>" not in page and "<img" not in page and "<b>Mallory" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;b&gt;Mallory&lt;/b&gt;&quot;&amp; Bcc: victim@example.net" in page
    assert "\nBcc:" not in text
    raw = msg.as_bytes()
    assert MEDIA_HOST.encode() not in raw and b"thumb" not in raw.lower()
    assert msg["Message-ID"] == message_id("notify:k1", SENDER)
    assert render(payload(), key="notify:k1")["Message-ID"] == msg["Message-ID"]
    assert render(payload(), key="notify:k2")["Message-ID"] != msg["Message-ID"]


def test_unsafe_links_are_not_linked() -> None:
    page = parts(render_email(payload(), SENDER, RCPT, page_url="javascript:alert(1)", review_url=None,
                              key="k"))["text/html"]
    assert "javascript:" not in page and "<a href" not in page


@pytest.mark.parametrize("forged", ["https://phish.example/wiki/File:Evil.jpg",
                                    "http://169.254.169.254/latest/meta-data/iam/"])
def test_links_in_a_stored_payload_never_reach_the_email(forged: str) -> None:
    """A payload stored by an older version carries the event's own URLs: the email rebuilds its links."""
    p = {**payload(), "page_url": forged, "review_url": forged}
    msg = render(p)
    raw = msg.as_bytes().decode()
    assert "phish.example" not in raw and "169.254.169.254" not in raw
    for part in parts(msg).values():
        assert HOSTILE_PAGE in part
        assert "https://review.example.org/mm/matches/c6bafc12cb88488369fad574226e2b6d72617f8d" in part
    # An unconfigured wiki has no link at all, rather than the stored one.
    page, _ = email_links({**p, "wiki": "otherwiki"}, {COMMONS.id: COMMONS}, REVIEW)
    assert page is None
    assert "(no valid link)" in parts(render_email(p, SENDER, RCPT, page_url=page, review_url=None))["text/plain"]


# --------------------------------------------------------------------------- SMTP


async def test_sends_through_smtp_with_auth_from_env(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    password = "correct horse battery staple"
    monkeypatch.setenv("MM_TEST_SMTP_PASSWORD", password)
    with SmtpServer(auth_user="mm-bot", auth_password=password) as server:
        smtp = SmtpSection(host="127.0.0.1", port=server.port, security="none", username="mm-bot",
                           password=Secret(env="MM_TEST_SMTP_PASSWORD"), timeout=5)
        n, metrics = notifier(smtp, tmp_path, recipients=("ts@example.org", "ts2@example.org"))
        with caplog.at_level(logging.DEBUG):
            assert await n.perform(item("notify:k1")) == "sent"
        [mail] = server.wait_for(1, timeout=5)
    assert mail.auth_user == "mm-bot"
    assert mail.mail_from == SENDER and mail.rcpt_tos == ("ts@example.org", "ts2@example.org")
    assert mail.message["Message-ID"] == message_id("notify:k1", SENDER)
    assert set(parts(mail.message)) == {"text/plain", "text/html"}
    assert list(mail.message.iter_attachments()) == []
    assert MEDIA_HOST.encode() not in mail.raw
    assert count(metrics, "sent") == 1
    assert password not in caplog.text


async def test_wrong_password_is_retriable_and_not_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MM_TEST_SMTP_PASSWORD", "wrong-password-123")
    with SmtpServer(auth_user="mm-bot", auth_password="right") as server:
        smtp = SmtpSection(host="127.0.0.1", port=server.port, security="none", username="mm-bot",
                           password=Secret(env="MM_TEST_SMTP_PASSWORD"), timeout=5)
        n, metrics = notifier(smtp, tmp_path)
        with caplog.at_level(logging.DEBUG), pytest.raises(NotifyError) as ei:
            await n.perform(item())
        assert server.auth_failures >= 1 and server.messages == []  # one per mechanism tried
    assert ei.value.retriable
    assert "wrong-password-123" not in caplog.text and "wrong-password-123" not in str(ei.value)
    assert count(metrics, "failed") == 1


async def test_missing_password_is_retriable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MM_TEST_SMTP_PASSWORD", raising=False)
    smtp = SmtpSection(host="127.0.0.1", port=free_port(), security="none", username="mm-bot",
                       password=Secret(env="MM_TEST_SMTP_PASSWORD"))
    n, _ = notifier(smtp, tmp_path)
    with pytest.raises(NotifyError) as ei:
        await n.perform(item())
    assert ei.value.retriable and "MM_TEST_SMTP_PASSWORD" in str(ei.value)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Sink:
    """aiosmtpd handler: captures messages; ``rcpt_reply``/``data_reply`` script refusals."""

    def __init__(self, rcpt_reply: dict[str, str] | None = None, data_reply: str | None = None) -> None:
        self.messages: list[tuple[Envelope, Session]] = []
        self.rcpt_reply = rcpt_reply or {}
        self.data_reply = data_reply

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.rcpt_reply.get(address) or self.rcpt_reply.get("*")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append((envelope, session))
        return "250 Message accepted"


@pytest.fixture
def controller_factory() -> Iterator[Any]:
    started: list[Controller] = []

    def start(handler: Sink, **kw: Any) -> Controller:
        c = Controller(handler, hostname="127.0.0.1", port=free_port(), **kw)
        c.start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


async def test_starttls_with_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, controller_factory: Any) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"tls-secret")

    sink = Sink()
    c = controller_factory(sink, tls_context=server_ctx, require_starttls=True, auth_required=True,
                           authenticator=authenticator)
    monkeypatch.setenv("MM_TEST_SMTP_PASSWORD", "tls-secret")
    smtp = SmtpSection(host="127.0.0.1", port=c.port, security="starttls", username="mm-bot",
                       password=Secret(env="MM_TEST_SMTP_PASSWORD"), timeout=5)
    n, _ = notifier(smtp, tmp_path, tls_context=ssl.create_default_context(cafile=str(cert)))
    assert await n.perform(item()) == "sent"
    assert logins == [(b"mm-bot", b"tls-secret")]
    [(envelope, session)] = sink.messages
    assert session.ssl is not None  # the message went over TLS
    assert envelope.rcpt_tos == list(RCPT)

    # Without trusting that certificate the connection is refused, retriably.
    untrusting, _ = notifier(smtp, tmp_path)
    with pytest.raises(NotifyError) as ei:
        await untrusting.perform(item())
    assert ei.value.retriable


@pytest.mark.parametrize(
    ("sink", "recipients", "retriable"),
    [
        (Sink(rcpt_reply={"*": "451 4.3.0 Try again later"}), RCPT, True),
        (Sink(rcpt_reply={"*": "550 5.1.1 No such user"}), RCPT, False),
        (Sink(rcpt_reply={"ts@example.org": "550 5.1.1 No such user", "b@example.org": "452 4.2.2 Full"}),
         ("ts@example.org", "b@example.org"), True),  # not every refusal permanent: try again
        (Sink(data_reply="554 5.7.1 Message rejected"), RCPT, False),
        (Sink(data_reply="451 4.7.1 Greylisted"), RCPT, True),
    ],
    ids=["rcpt-451", "rcpt-550", "rcpt-mixed", "data-554", "data-451"],
)
async def test_smtp_reply_classification(tmp_path: Path, controller_factory: Any, sink: Sink,
                                         recipients: tuple[str, ...], retriable: bool) -> None:
    c = controller_factory(sink)
    n, metrics = notifier(SmtpSection(host="127.0.0.1", port=c.port, security="none", timeout=5), tmp_path,
                          recipients=recipients)
    with pytest.raises(NotifyError) as ei:
        await n.perform(item())
    assert ei.value.retriable is retriable
    assert count(metrics, "failed" if retriable else "rejected") == 1
    assert sink.messages == []


async def test_some_recipients_refused_still_sent(tmp_path: Path, controller_factory: Any) -> None:
    sink = Sink(rcpt_reply={"gone@example.org": "550 5.1.1 No such user"})
    c = controller_factory(sink)
    n, metrics = notifier(SmtpSection(host="127.0.0.1", port=c.port, security="none", timeout=5), tmp_path,
                          recipients=("ts@example.org", "gone@example.org"))
    assert await n.perform(item()) == "sent"
    assert [e.rcpt_tos for e, _ in sink.messages] == [["ts@example.org"]]
    assert count(metrics, "partial") == 1


async def test_connection_refused_is_retriable(tmp_path: Path) -> None:
    n, metrics = notifier(SmtpSection(host="127.0.0.1", port=free_port(), security="none", timeout=5), tmp_path)
    with pytest.raises(NotifyError) as ei:
        await n.perform(item())
    assert ei.value.retriable and count(metrics, "failed") == 1


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts TCP connections and never says a word (a hung SMTP server)."""
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for w in writers:
        w.close()
    server.close()
    await server.wait_closed()


async def test_timeout_is_retriable(tmp_path: Path, silent_server: int) -> None:
    n, _ = notifier(SmtpSection(host="127.0.0.1", port=silent_server, security="none", timeout=0.3), tmp_path)
    with pytest.raises(NotifyError) as ei:
        await n.perform(item())
    assert ei.value.retriable


async def test_stop_during_a_stuck_send_returns_at_once(tmp_path: Path) -> None:
    """Cancelling a send whose server never answers DATA must not wait for the SMTP timeout."""
    import threading

    in_data = threading.Event()

    class Stuck:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            in_data.set()
            await asyncio.sleep(3600)  # a server that never answers DATA: the behaviour under test
            return "250 OK"

    port = free_port()
    controller = Controller(Stuck(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        n, _ = notifier(SmtpSection(host="127.0.0.1", port=port, security="none", timeout=30), tmp_path)
        task = asyncio.create_task(n.perform(item()))
        await asyncio.to_thread(in_data.wait, 10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert loop.time() - started < 2  # not the 30 s timeout waiting for a QUIT reply
    finally:
        controller.stop(no_assert=True)


async def test_malformed_payload_is_permanent(tmp_path: Path) -> None:
    n, _ = notifier(None, tmp_path)
    with pytest.raises(NotifyError) as ei:
        await n.perform(item(p={"matches": 5}))
    assert not ei.value.retriable


# --------------------------------------------------------------------------- spooling


async def test_spools_eml_atomically_when_smtp_unset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n, metrics = notifier(None, tmp_path)
    with caplog.at_level(logging.WARNING, logger="service.actions.notify"):
        assert await n.perform(item("notify:commonswiki:File:A/../b.jpg:1")) == "spooled"
        assert await n.perform(item("notify:commonswiki:File:A/../b.jpg:1")) == "spooled"  # same key, same file
        assert await n.perform(item("notify:other")) == "spooled"
    outbox = tmp_path / "outbox"
    files = sorted(p.name for p in outbox.iterdir())
    assert files == sorted([spool_name("notify:commonswiki:File:A/../b.jpg:1"), spool_name("notify:other")])
    assert all(f.endswith(".eml") and not f.startswith(".") and "/" not in f for f in files)
    msg = BytesParser(policy=policy.default).parsebytes(
        (outbox / spool_name("notify:other")).read_bytes())
    assert isinstance(msg, EmailMessage)
    assert msg["Message-ID"] == message_id("notify:other", SENDER)
    assert set(parts(msg)) == {"text/plain", "text/html"}
    warnings = [r for r in caplog.records if "SMTP is not configured" in r.getMessage()]
    assert len(warnings) == 1
    assert count(metrics, "spooled") == 3


async def test_spool_failure_is_retriable(tmp_path: Path) -> None:
    (tmp_path / "outbox").write_text("a file where the directory should be")
    n, _ = notifier(None, tmp_path)
    with pytest.raises(NotifyError) as ei:
        await n.perform(item())
    assert ei.value.retriable


# --------------------------------------------------------------------------- with the dispatcher


async def test_outage_then_recovery_through_the_dispatcher(tmp_path: Path) -> None:
    server = SmtpServer()  # not started yet: the relay is down
    clock = FakeClock()
    outbox = MemoryOutbox(clock)
    n, _ = notifier(SmtpSection(host="127.0.0.1", port=server.port, security="none", timeout=5), tmp_path)
    d = OutboxDispatcher(outbox, {"notify": n}, RetrySection(initial_delay=5, max_delay=60), Metrics(), clock)
    await outbox.add_actions([NewAction("notify:k1", "notify", payload())])
    assert await d.drain(10) == 1
    first = outbox.by_key("notify:k1")
    assert first.state == "pending" and "cannot send" in (first.last_error or "")
    with server:
        clock.advance(first.next_attempt_at - clock())
        assert await d.drain(10) == 1
        [mail] = server.wait_for(1, timeout=5)
    assert outbox.by_key("notify:k1").state == "done" and outbox.by_key("notify:k1").result == "sent"
    assert mail.message["Message-ID"] == message_id("notify:k1", SENDER)
