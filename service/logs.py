"""Logs for people and machines: a readable, coloured console format on a terminal, JSON lines otherwise.

``setup_logging`` returns a :class:`LogOutput` whose ``console`` is the one rich Console that writes to
the terminal: progress bars (``service.progress``) draw through it, so a log line printed while a bar is
live goes above the bar instead of through it.  JSON lines carry the ``extra`` fields of each call;
the console format shows them as ``key=value`` after the message.  Never secrets.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "console", "json")
LogFormat = Literal["auto", "console", "json"]


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """The message, then the ``extra`` fields as ``key=value`` (the level, time and logger are columns)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = " ".join(f"{k}={_short(v)}" for k, v in _extras(record).items())
        return f"{message}  {fields}" if fields else message


def _short(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False) if not value or any(c.isspace() for c in value) else value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


class _ConsoleJsonHandler(logging.Handler):
    """JSON lines printed through the rich Console (on a terminal, so that a live progress bar stays whole)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(Text(self.format(record)), soft_wrap=True, highlight=False)
        except Exception:
            self.handleError(record)


@dataclass(frozen=True)
class LogOutput:
    """How this process logs: the level, the format chosen, and the console that draws on the terminal."""

    level: str
    format: Literal["console", "json"]
    console: Console

    @property
    def interactive(self) -> bool:
        """True when stderr is a terminal: live progress bars are drawn (through :attr:`console`)."""
        return self.console.is_terminal


def normalise_level(level: str) -> str:
    """``INFO``, ``Info`` and ``info`` are the same level; anything else is a :class:`ValueError`."""
    name = str(level).strip().lower()
    if name == "warn":
        name = "warning"
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)}; any case)")
    return name


def setup_logging(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> LogOutput:
    """Send every log record to ``stream`` (stderr): console format on a terminal, JSON otherwise (``auto``)."""
    out = stream if stream is not None else sys.stderr
    level = normalise_level(level)
    isatty = bool(getattr(out, "isatty", lambda: False)())
    # Not a terminal (``--log-format console`` into a file): wide lines rather than rich's 80-column default.
    console = Console(file=out, force_terminal=isatty or None, width=None if isatty else 200)
    chosen: Literal["console", "json"] = ("console" if isatty else "json") if fmt == "auto" else fmt
    handler: logging.Handler
    if chosen == "console":
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False,
                              omit_repeated_times=False, log_time_format="%H:%M:%S")
        handler.setFormatter(ConsoleFormatter())
    elif isatty:
        handler = _ConsoleJsonHandler(console)
        handler.setFormatter(JsonFormatter())
    else:  # a pipe or a file: plain writes, no rich in the way of a busy service's log stream
        handler = logging.StreamHandler(out)
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter (urllib3 connection pool lines, aiohttp access logs) stays out of the stream.
    for noisy in ("urllib3", "aiohttp.access", "asyncio", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return LogOutput(level=level, format=chosen, console=console)
