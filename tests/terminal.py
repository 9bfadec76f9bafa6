"""Run ``python -m service ...`` under a pseudo-terminal (stdlib ``pty``) and read what it draws."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A command whose stdin, stdout and stderr are one pseudo-terminal of ``columns`` x ``rows``."""

    def __init__(self, args: list[str], cwd: Path, *, columns: int = 160, rows: int = 40,
                 env: dict[str, str] | None = None) -> None:
        master, slave = pty.openpty()
        import fcntl
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
        environ.update({"PYTHONPATH": str(REPO), "TERM": "xterm-256color", **(env or {})})
        self.proc = subprocess.Popen([sys.executable, "-m", "service", *args], cwd=cwd, stdin=slave, stdout=slave,
                                     stderr=slave, env=environ, close_fds=True, start_new_session=True)
        os.close(slave)
        self.master = master
        self.raw = b""

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the other side closed
            return False
        if not chunk:
            return False
        self.raw += chunk
        return True

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def wait_for(self, condition: Callable[[str], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.text):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met in {timeout} s; output so far:\n{self.text[-3000:]}")
            if not self._read(0.2) and self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before the condition; output:\n{self.text}")

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def finish(self, timeout: float) -> int:
        """Read until the command exits (and its output is drained); return its exit code."""
        deadline = time.monotonic() + timeout
        while self._read(0.2) or self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"still running after {timeout} s; output:\n{self.text[-3000:]}")
            if self.proc.poll() is not None and not select.select([self.master], [], [], 0.1)[0]:
                break
        os.close(self.master)
        return self.proc.wait(10)

    def pieces(self) -> list[str]:
        """The runs of text written without a cursor movement or line end in between (what shares a line)."""
        parts = re.split(r"\r|\n|\x1b\[[0-9;?]*[A-Za-ln-z]", self.text)  # cursor moves and erases, not colours
        return [text for text in (ANSI.sub("", part) for part in parts) if text.strip()]

    def plain(self) -> str:
        return ANSI.sub("", self.text).replace("\r\n", "\n")
