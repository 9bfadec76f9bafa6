"""A real SMTP server (aiosmtpd, in its own thread) that captures mail for tests.

``stop()`` and ``start()`` keep the port, so a test can simulate an outage and a recovery.  With
``auth_user``/``auth_password`` the server advertises AUTH PLAIN/LOGIN without TLS and refuses
``MAIL FROM`` from unauthenticated sessions (530), like a relay that needs a login.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class CapturedMail:
    """One accepted message: the SMTP envelope and the parsed message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes
    auth_user: str | None


class _Handler:
    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.owner.auth_user is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.owner._capture(CapturedMail(
            mail_from=str(envelope.mail_from), rcpt_tos=tuple(envelope.rcpt_tos), message=message, raw=raw,
            auth_user=login.decode() if isinstance(login, bytes) else None,
        ))
        return "250 Message accepted for delivery"


class SmtpServer:
    """SMTP sink on ``host:port``; ``messages`` grows as mail arrives, ``wait_for`` blocks for it."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *,
                 auth_user: str | None = None, auth_password: str | None = None) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self.auth_user = auth_user
        self.auth_password = auth_password
        self.auth_failures = 0
        self._messages: list[CapturedMail] = []
        self._condition = threading.Condition()
        self._controller: Controller | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    @property
    def messages(self) -> list[CapturedMail]:
        with self._condition:
            return list(self._messages)

    def start(self) -> None:
        if self._controller is not None:
            return
        kwargs: dict[str, Any] = {}
        if self.auth_user is not None:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False, auth_required=False)
        # asyncio binds with SO_REUSEADDR, so a restart on the same port works right after stop().
        controller = Controller(_Handler(self), hostname=self.host, port=self.port, **kwargs)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == self.auth_user
              and auth_data.password.decode() == self.auth_password)
        if not ok:
            with self._condition:
                self.auth_failures += 1
                self._condition.notify_all()
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _capture(self, mail: CapturedMail) -> None:
        with self._condition:
            self._messages.append(mail)
            self._condition.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[CapturedMail]:
        """Block until at least ``count`` messages arrived; returns them all (AssertionError on timeout)."""
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._messages) >= count, timeout):
                raise AssertionError(f"expected {count} mail(s) within {timeout}s, got {len(self._messages)}")
            return list(self._messages)

    async def wait_for_async(self, count: int, within: float = 10.0) -> list[CapturedMail]:
        """``wait_for`` for async tests: waits in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.wait_for, count, within)

    def clear(self) -> None:
        with self._condition:
            self._messages.clear()
