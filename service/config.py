"""Configuration: YAML parsed once into frozen, typed dataclasses and injected everywhere.

``load_config(path)`` returns a :class:`Config` or raises :class:`ConfigError` listing every
problem with its key path.  No other module reads the YAML or the environment for settings;
secrets are resolved through :class:`Secret` (an environment variable or a file), never the YAML.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml

from service.errors import ConfigError

EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
STANDARD_THUMB_WIDTHS = (20, 40, 60, 120, 250, 330, 500, 960, 1280, 1920, 3840)
GENERIC_AGENTS = ("python-requests", "aiohttp", "python-urllib", "curl/", "wget/", "mozilla/")


@dataclass(frozen=True)
class Secret:
    """Where a secret lives: an environment variable or a file.  Never the value itself."""

    env: str | None = None
    file: str | None = None

    def get(self) -> str | None:
        if self.env:
            value = os.environ.get(self.env)
            if value:
                return value
        if self.file:
            try:
                return Path(self.file).read_text(encoding="utf-8").strip()
            except OSError:
                return None
        return None

    def __repr__(self) -> str:  # never show values; names are fine
        return f"Secret(env={self.env!r}, file={self.file!r})"


@dataclass(frozen=True)
class ServiceSection:
    user_agent: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace: float = 30.0


@dataclass(frozen=True)
class HttpSection:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    # The readiness probe fails when the source has delivered nothing for this long (0 disables).
    ready_source_idle: float = 0.0


@dataclass(frozen=True)
class ReconnectSection:
    initial_delay: float = 1.0
    max_delay: float = 60.0


@dataclass(frozen=True)
class EventStreamsSection:
    url: str = "https://stream.wikimedia.org/v2/stream/mediawiki.recentchange"
    since: str | None = None
    checkpoint_name: str = "eventstreams"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    reconnect: ReconnectSection = field(default_factory=ReconnectSection)


@dataclass(frozen=True)
class SourceSection:
    type: Literal["eventstreams"] = "eventstreams"
    eventstreams: EventStreamsSection = field(default_factory=EventStreamsSection)


@dataclass(frozen=True)
class WikiSection:
    id: str = ""
    api_url: str = ""
    media_hosts: tuple[str, ...] = ()

    @property
    def api_host(self) -> str:
        return (urlsplit(self.api_url).hostname or "").lower()

    @property
    def allowed_hosts(self) -> frozenset[str]:
        return frozenset({self.api_host, *(h.lower() for h in self.media_hosts)})


@dataclass(frozen=True)
class ConcurrencySection:
    fetch: int = 8
    thumbnail: int = 4
    match: int = 4
    act: int = 4


@dataclass(frozen=True)
class PipelineSection:
    queue_size: int = 64
    concurrency: ConcurrencySection = field(default_factory=ConcurrencySection)
    cpu_workers: int | None = None  # default: number of cores
    cpu_pool: Literal["process", "thread"] = "process"
    event_deadline: float = 300.0
    dedupe_retention_days: float = 14.0


@dataclass(frozen=True)
class FetchSection:
    thumb_width: int = 330
    min_side: int = 160
    max_bytes: int = 50_000_000
    originals: bool = False
    timeout: float = 30.0
    retries: int = 3
    retry_delay: float = 1.0
    maxlag: int = 5
    max_redirects: int = 5
    batch_size: int = 50  # titles per imageinfo request (MediaWiki renders at most 50 thumbnails per request)


@dataclass(frozen=True)
class ThumbnailSection:
    max_pixels: int = 120_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
    pdq_max_side: int = 512
    jpeg_min_side: int = 160
    jpeg_max_bytes: int = 4_000_000
    jpeg_quality: int = 90
    make_jpeg: bool = False  # produce JPEG bytes for remote matchers (PhotoDNA turns this on)


@dataclass(frozen=True)
class BankSection:
    name: str = ""
    path: str = ""
    category: str = ""
    pdq_threshold: int = 31


@dataclass(frozen=True)
class BanksSection:
    reload_interval: float = 10.0
    pdq_quality_min: int = 50
    list: tuple[BankSection, ...] = ()


@dataclass(frozen=True)
class SmtpSection:
    host: str = ""
    port: int = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: Secret = field(default_factory=Secret)
    timeout: float = 30.0


@dataclass(frozen=True)
class RetrySection:
    initial_delay: float = 5.0
    max_delay: float = 600.0


@dataclass(frozen=True)
class NotifySection:
    enabled: bool = True
    sender: str = ""
    recipients: tuple[str, ...] = ()
    smtp: SmtpSection | None = None
    outbox_dir: str = "./outbox"
    review_url: str | None = None  # base URL of the review queue, used for links in emails
    retry: RetrySection = field(default_factory=RetrySection)


@dataclass(frozen=True)
class ActionsSection:
    notify: NotifySection = field(default_factory=NotifySection)


@dataclass(frozen=True)
class StoreSection:
    path: str = "./data/mediamoderation.sqlite3"


@dataclass(frozen=True)
class Config:
    service: ServiceSection = field(default_factory=ServiceSection)
    http: HttpSection = field(default_factory=HttpSection)
    source: SourceSection = field(default_factory=SourceSection)
    wikis: tuple[WikiSection, ...] = ()
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    fetch: FetchSection = field(default_factory=FetchSection)
    thumbnail: ThumbnailSection = field(default_factory=ThumbnailSection)
    banks: BanksSection = field(default_factory=BanksSection)
    actions: ActionsSection = field(default_factory=ActionsSection)
    store: StoreSection = field(default_factory=StoreSection)
    path: str = field(default="", metadata={"internal": True})

    def wiki(self, wiki_id: str) -> WikiSection | None:
        for w in self.wikis:
            if w.id == wiki_id:
                return w
        return None

    @property
    def cpu_workers(self) -> int:
        return self.pipeline.cpu_workers or os.cpu_count() or 1


# --------------------------------------------------------------------------- generic typed loading


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        path = path or "<root>"
        if all(p != path for p, _ in self.items):  # the first problem of a key is the one to fix
            self.items.append((path, message))


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, path: str, problems: _Problems) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], path, problems)
    if origin is Literal:
        if value not in get_args(tp):
            problems.add(path, f"must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            problems.add(path, f"must be a list, got {type(value).__name__}")
            return ()
        item_tp = get_args(tp)[0]
        return tuple(_convert(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if tp is bool:
        if not isinstance(value, bool):
            problems.add(path, f"must be a boolean, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(path, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.add(path, f"must be a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.add(path, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # pragma: no cover - programming error


def _build(cls: Any, data: Any, path: str, problems: _Problems) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add(path, f"must be a mapping, got {type(data).__name__}")
        return cls()
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            problems.add(sub, f"unknown key (known: {', '.join(sorted(fields))})")
            continue
        kwargs[key] = _convert(value, hints[key], sub, problems)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - only on wrong types already reported
        problems.add(path, str(exc))
        return cls()


# --------------------------------------------------------------------------- semantic checks


def _check_url(problems: _Problems, path: str, url: str, *, schemes: tuple[str, ...] = ("http", "https")) -> None:
    parts = urlsplit(url or "")
    if parts.scheme not in schemes or not parts.hostname:
        problems.add(path, f"must be an absolute {'/'.join(schemes)} URL, got {url!r}")


def _validate(cfg: Config, base: Path, problems: _Problems) -> None:
    ua = cfg.service.user_agent.strip()
    if not ua:
        problems.add("service.user_agent", "is required: a descriptive User-Agent with contact details")
    elif not ("@" in ua or "http://" in ua or "https://" in ua) or ua.lower().startswith(GENERIC_AGENTS):
        problems.add(
            "service.user_agent",
            "must name the client and a contact URL or email, e.g. 'mediamoderation/0.1 (https://…; ts@…)'",
        )
    if cfg.service.shutdown_grace < 0:
        problems.add("service.shutdown_grace", "must be >= 0")
    if not 0 <= cfg.http.port <= 65535:
        problems.add("http.port", f"must be a TCP port (0-65535), got {cfg.http.port}")

    es = cfg.source.eventstreams
    _check_url(problems, "source.eventstreams.url", es.url)
    if es.since is not None:
        try:
            parse_time(es.since)
        except ValueError as exc:
            problems.add("source.eventstreams.since", str(exc))
    for name in ("connect_timeout", "read_timeout"):
        if getattr(es, name) <= 0:
            problems.add(f"source.eventstreams.{name}", "must be > 0")
    if es.reconnect.initial_delay <= 0 or es.reconnect.max_delay < es.reconnect.initial_delay:
        problems.add("source.eventstreams.reconnect", "needs 0 < initial_delay <= max_delay")

    if not cfg.wikis:
        problems.add("wikis", "at least one wiki is required")
    seen: set[str] = set()
    for i, w in enumerate(cfg.wikis):
        p = f"wikis[{i}]"
        if not w.id:
            problems.add(f"{p}.id", "is required (the event's 'wiki' field, e.g. commonswiki)")
        elif w.id in seen:
            problems.add(f"{p}.id", f"duplicate wiki id {w.id!r}")
        seen.add(w.id)
        _check_url(problems, f"{p}.api_url", w.api_url)
        for j, host in enumerate(w.media_hosts):
            if not host or "/" in host or ":" in host.strip("[]"):
                problems.add(f"{p}.media_hosts[{j}]", f"must be a bare host name, got {host!r}")

    pl = cfg.pipeline
    if pl.queue_size < 1:
        problems.add("pipeline.queue_size", f"must be >= 1, got {pl.queue_size}")
    for stage in ("fetch", "thumbnail", "match", "act"):
        n = getattr(pl.concurrency, stage)
        if isinstance(n, int) and n < 1:
            problems.add(f"pipeline.concurrency.{stage}", f"must be >= 1, got {n}")
    if pl.cpu_workers is not None and pl.cpu_workers < 1:
        problems.add("pipeline.cpu_workers", f"must be >= 1, got {pl.cpu_workers}")
    if pl.event_deadline <= 0:
        problems.add("pipeline.event_deadline", "must be > 0 seconds")
    if pl.dedupe_retention_days <= 0:
        problems.add("pipeline.dedupe_retention_days", "must be > 0")

    f = cfg.fetch
    if f.thumb_width not in STANDARD_THUMB_WIDTHS:
        problems.add("fetch.thumb_width", f"must be a standard thumbnail width {STANDARD_THUMB_WIDTHS}")
    for name in ("min_side", "max_bytes", "max_redirects"):
        if getattr(f, name) < 1:
            problems.add(f"fetch.{name}", "must be >= 1")
    if f.timeout <= 0:
        problems.add("fetch.timeout", "must be > 0")
    if f.retries < 0:
        problems.add("fetch.retries", "must be >= 0")
    if f.maxlag < 0:
        problems.add("fetch.maxlag", "must be >= 0")
    if not 1 <= f.batch_size <= 50:
        problems.add("fetch.batch_size", f"must be between 1 and 50, got {f.batch_size}")

    t = cfg.thumbnail
    for name in ("max_pixels", "pdq_max_side", "jpeg_min_side", "jpeg_max_bytes"):
        if getattr(t, name) < 1:
            problems.add(f"thumbnail.{name}", "must be >= 1")
    if not 1 <= t.jpeg_quality <= 95:
        problems.add("thumbnail.jpeg_quality", "must be between 1 and 95")
    known = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"}
    for i, fmt in enumerate(t.formats):
        if fmt not in known:
            problems.add(f"thumbnail.formats[{i}]", f"unknown format {fmt!r} (known: {', '.join(sorted(known))})")

    b = cfg.banks
    if b.reload_interval < 0:
        problems.add("banks.reload_interval", "must be >= 0 (0 disables reloading)")
    if not 0 <= b.pdq_quality_min <= 100:
        problems.add("banks.pdq_quality_min", "must be between 0 and 100")
    names: set[str] = set()
    for i, bank in enumerate(b.list):
        p = f"banks.list[{i}]"
        if not bank.name:
            problems.add(f"{p}.name", "is required")
        elif bank.name in names:
            problems.add(f"{p}.name", f"duplicate bank name {bank.name!r}")
        names.add(bank.name)
        if not bank.category:
            problems.add(f"{p}.category", "is required (e.g. child-protection, terrorism)")
        if not 0 <= bank.pdq_threshold <= 256:
            problems.add(f"{p}.pdq_threshold", "must be between 0 and 256")
        if not bank.path:
            problems.add(f"{p}.path", "is required")
        elif not resolve_path(base, bank.path).is_file():
            problems.add(f"{p}.path", f"file does not exist: {resolve_path(base, bank.path)}")

    n = cfg.actions.notify
    if n.enabled:
        if not EMAIL_RE.match(n.sender or ""):
            problems.add("actions.notify.sender", f"must be an email address, got {n.sender!r}")
        if not n.recipients:
            problems.add("actions.notify.recipients", "at least one recipient is required")
        for i, r in enumerate(n.recipients):
            if not EMAIL_RE.match(r):
                problems.add(f"actions.notify.recipients[{i}]", f"not an email address: {r!r}")
    if n.smtp is not None:
        if not n.smtp.host:
            problems.add("actions.notify.smtp.host", "is required when smtp is set")
        if not 0 < n.smtp.port <= 65535:
            problems.add("actions.notify.smtp.port", "must be a TCP port")
        if n.smtp.username and not (n.smtp.password.env or n.smtp.password.file):
            problems.add("actions.notify.smtp.password", "a username needs password.env or password.file")
    if n.review_url is not None:
        _check_url(problems, "actions.notify.review_url", n.review_url)
    if n.retry.initial_delay <= 0 or n.retry.max_delay < n.retry.initial_delay:
        problems.add("actions.notify.retry", "needs 0 < initial_delay <= max_delay")
    if not cfg.store.path:
        problems.add("store.path", "is required")


def _find_inline_secrets(data: Any, path: str, problems: _Problems) -> None:
    """Secrets never live in the YAML: a ``password:`` with a plain string value is refused."""
    if isinstance(data, dict):
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in ("password", "key", "token", "secret") and isinstance(value, str):
                problems.add(sub, "secrets are not allowed in the YAML: use {env: VAR} or {file: PATH}")
            else:
                _find_inline_secrets(value, sub, problems)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _find_inline_secrets(v, f"{path}[{i}]", problems)


def resolve_path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def parse_time(value: str) -> Any:
    """Parse an ISO 8601 time (``Z`` allowed) or Unix milliseconds into an aware datetime."""
    from datetime import UTC, datetime

    text = value.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or Unix milliseconds: {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def config_from_dict(data: Any, *, base: Path | None = None, source: str = "") -> Config:
    problems = _Problems()
    _find_inline_secrets(data, "", problems)
    cfg = _build(Config, data, "", problems)
    base = base or Path.cwd()
    try:
        _validate(cfg, base, problems)
    except (TypeError, AttributeError, ValueError):
        if not problems.items:  # only tolerated when a wrong type was already reported
            raise
    if problems.items:
        raise ConfigError(problems.items)
    # Resolve relative paths against the config file's directory, once.
    banks = tuple(
        dataclasses.replace(b, path=str(resolve_path(base, b.path))) for b in cfg.banks.list
    )
    notify = cfg.actions.notify
    return dataclasses.replace(
        cfg,
        banks=dataclasses.replace(cfg.banks, list=banks),
        store=dataclasses.replace(cfg.store, path=str(resolve_path(base, cfg.store.path))),
        actions=dataclasses.replace(
            cfg.actions,
            notify=dataclasses.replace(notify, outbox_dir=str(resolve_path(base, notify.outbox_dir))),
        ),
        path=source,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("<file>", f"cannot read {p}: {exc.strerror or exc}")]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([("<file>", f"invalid YAML in {p}: {exc}")]) from exc
    return config_from_dict(data, base=p.resolve().parent, source=str(p))


def warnings_for(cfg: Config) -> list[str]:
    """Non-fatal advice printed by ``check-config`` and logged by ``run``."""
    out: list[str] = []
    n = cfg.actions.notify
    if n.enabled and n.smtp is None:
        out.append(f"actions.notify.smtp is not set: notifications are written as .eml files to {n.outbox_dir}")
    if not cfg.banks.list:
        out.append("banks.list is empty: nothing can match")
    return out
