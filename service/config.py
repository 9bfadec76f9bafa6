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
    type: Literal["eventstreams", "kafka", "mwapi"] = "eventstreams"
    eventstreams: EventStreamsSection = field(default_factory=EventStreamsSection)
    kafka: KafkaSection = field(default_factory=lambda: KafkaSection())
    mwapi: MwApiSection = field(default_factory=lambda: MwApiSection())


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
    remote: int = 8  # concurrent calls to remote matchers (PhotoDNA); needs >= rate x latency


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
    categories: tuple[CategoryNotifySection, ...] = ()  # per-category recipients (default: recipients)


@dataclass(frozen=True)
class ActionsSection:
    notify: NotifySection = field(default_factory=NotifySection)
    takedown: TakedownSection = field(default_factory=lambda: TakedownSection())


@dataclass(frozen=True)
class BackoffSection:
    initial_delay: float = 0.5
    max_delay: float = 30.0


@dataclass(frozen=True)
class CircuitSection:
    failures: int = 10  # consecutive transient failures that open the circuit
    open_seconds: float = 30.0  # pause before one trial request (doubles while trials fail)
    max_open_seconds: float = 300.0


@dataclass(frozen=True)
class CategoryRule:
    """Maps a PhotoDNA MatchFlag to a service category; the first rule that fits wins."""

    category: str = ""
    source: str | None = None  # the flag's Source (hash list), case-insensitive; None: any
    violations: tuple[str, ...] = ()  # any of these in the flag's Violations; empty: any


@dataclass(frozen=True)
class RescanSection:
    enabled: bool = True
    age_days: float = 90.0  # re-scan files PhotoDNA found clean this long ago
    interval: float = 60.0  # seconds between rescan/retry rounds
    batch: int = 100  # files per round at most
    concurrency: int = 2
    budget_reserve: float = 0.1  # share of the monthly budget rescans never touch
    # Failed scans are retried after these delays (seconds), by number of failures; the last repeats.
    retry_delays: tuple[float, ...] = (60.0, 300.0, 1800.0, 7200.0, 21600.0)


@dataclass(frozen=True)
class PhotoDnaSection:
    enabled: bool = False
    url: str = "https://api.microsoftmoderator.com/photodna/v1.0/Match"
    key: Secret = field(default_factory=Secret)
    enhance: bool = False
    rate: float = 5.0  # requests per second, shared by every call in the process
    burst: int = 1  # requests allowed back to back; 1 keeps every 1 s window at or below ``rate``
    monthly_budget: int = 10_000_000
    timeout: float = 10.0
    retries: int = 4  # further attempts after a transient failure
    backoff: BackoffSection = field(default_factory=BackoffSection)
    max_retry_after: float = 120.0  # a longer Retry-After is capped to this
    circuit: CircuitSection = field(default_factory=CircuitSection)
    auth_retry_interval: float = 60.0  # while the key is refused, one probe request this often
    categories: tuple[CategoryRule, ...] = ()
    default_category: str = "child-protection"
    call_when_local_match: bool = False
    rescan: RescanSection = field(default_factory=RescanSection)


@dataclass(frozen=True)
class StoreSection:
    path: str = "./data/mediamoderation.sqlite3"
    url: str | None = None  # postgresql://user@host/db selects the PostgreSQL store (then ``path`` is unused)
    outbox_lease: float = 300.0  # seconds an outbox item claimed by one replica is hidden from the others


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
    photodna: PhotoDnaSection = field(default_factory=PhotoDnaSection)
    review: ReviewSection = field(default_factory=lambda: ReviewSection())
    store: StoreSection = field(default_factory=StoreSection)
    work: WorkSection = field(default_factory=lambda: WorkSection())
    backfill: BackfillSection = field(default_factory=lambda: BackfillSection())
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
    for stage in ("fetch", "thumbnail", "match", "act", "remote"):
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
    _validate_photodna(cfg, problems)
    _validate_takedown_review(cfg, problems)
    _validate_scale(cfg, problems)
    if not cfg.store.path:
        problems.add("store.path", "is required")


PHOTODNA_MIN_SIDE = 160
PHOTODNA_MAX_BYTES = 4_000_000


def _validate_photodna(cfg: Config, problems: _Problems) -> None:
    p = cfg.photodna
    _check_url(problems, "photodna.url", p.url)
    if p.enabled and not (p.key.env or p.key.file):
        problems.add("photodna.key", "is required when photodna is enabled: {env: VAR} or {file: PATH}")
    for name in ("rate", "timeout", "max_retry_after", "auth_retry_interval"):
        if getattr(p, name) <= 0:
            problems.add(f"photodna.{name}", f"must be > 0, got {getattr(p, name)}")
    for name in ("burst", "monthly_budget"):
        if getattr(p, name) < 1:
            problems.add(f"photodna.{name}", f"must be >= 1, got {getattr(p, name)}")
    if p.retries < 0:
        problems.add("photodna.retries", "must be >= 0")
    if p.backoff.initial_delay <= 0 or p.backoff.max_delay < p.backoff.initial_delay:
        problems.add("photodna.backoff", "needs 0 < initial_delay <= max_delay")
    c = p.circuit
    if c.failures < 1:
        problems.add("photodna.circuit.failures", "must be >= 1")
    if c.open_seconds <= 0 or c.max_open_seconds < c.open_seconds:
        problems.add("photodna.circuit", "needs 0 < open_seconds <= max_open_seconds")
    if not p.default_category:
        problems.add("photodna.default_category", "is required (e.g. child-protection)")
    for i, rule in enumerate(p.categories):
        if not rule.category:
            problems.add(f"photodna.categories[{i}].category", "is required")
    r = p.rescan
    for name in ("age_days", "interval"):
        if getattr(r, name) <= 0:
            problems.add(f"photodna.rescan.{name}", "must be > 0")
    for name in ("batch", "concurrency"):
        if getattr(r, name) < 1:
            problems.add(f"photodna.rescan.{name}", "must be >= 1")
    if not 0 <= r.budget_reserve < 1:
        problems.add("photodna.rescan.budget_reserve", "must be >= 0 and < 1")
    if not r.retry_delays:
        problems.add("photodna.rescan.retry_delays", "at least one delay is required")
    for i, delay in enumerate(r.retry_delays):
        if delay <= 0:
            problems.add(f"photodna.rescan.retry_delays[{i}]", "must be > 0 seconds")
    if p.enabled:
        t = cfg.thumbnail
        if t.jpeg_min_side < PHOTODNA_MIN_SIDE:
            problems.add("thumbnail.jpeg_min_side", f"must be >= {PHOTODNA_MIN_SIDE} when photodna is enabled")
        if t.jpeg_max_bytes > PHOTODNA_MAX_BYTES:
            problems.add("thumbnail.jpeg_max_bytes",
                         f"must be <= {PHOTODNA_MAX_BYTES} when photodna is enabled (PhotoDNA's limit)")


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
    data = _yaml_off_is_a_mode(data)
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
    # Remote matchers need JPEG bytes from the thumbnail stage: derived, never a second flag to set.
    thumbnail = dataclasses.replace(cfg.thumbnail, make_jpeg=True) if cfg.photodna.enabled else cfg.thumbnail
    return dataclasses.replace(
        cfg,
        thumbnail=thumbnail,
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
    if not cfg.banks.list and not cfg.photodna.enabled:
        out.append("banks.list is empty: nothing can match")
    p = cfg.photodna
    if p.enabled and not p.key.get():
        out.append(f"photodna.key: no key is available from {p.key!r} right now; PhotoDNA stays not-ready "
                   "until it is")
    out += _takedown_review_warnings(cfg)
    return out


# --------------------------------------------------------------------------- takedown and review queue


@dataclass(frozen=True)
class CategoryNotifySection:
    """Who is emailed about one category's matches (instead of ``actions.notify.recipients``)."""

    category: str = ""
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class WikiAuthSection:
    """The takedown account: a bot password (``User@Bot``) or an OAuth 2 owner-only access token."""

    method: Literal["bot-password", "oauth2"] = "bot-password"
    username: str = ""  # bot-password login name, "User@BotName"
    password: Secret = field(default_factory=Secret)
    token: Secret = field(default_factory=Secret)  # OAuth 2 owner-only access token


@dataclass(frozen=True)
class TakedownSection:
    # off: never delete; review: delete when a reviewer confirms; dry-run: record and email what would be
    # deleted; auto: delete at once (concurrently with the email) for ``categories``.
    mode: Literal["off", "review", "dry-run", "auto"] = "review"
    categories: tuple[str, ...] = ("child-protection",)
    reason: str = "Matched a known-abuse hash list"
    tags: tuple[str, ...] = ()  # change tags for the deletion (must be defined on the wiki)
    suppress: bool = False  # also hide the deleted versions from administrators (needs suppressrevision)
    auth: WikiAuthSection | None = None
    timeout: float = 30.0
    maxlag: int = 5
    concurrency: int = 2
    retry: RetrySection = field(default_factory=lambda: RetrySection(initial_delay=10.0, max_delay=600.0))


@dataclass(frozen=True)
class ReviewerSection:
    name: str = ""
    password_hash: str = ""  # argon2 hash (python -m service.web.review.auth hash); empty: proxy login only


@dataclass(frozen=True)
class ProxyAuthSection:
    header: str | None = None  # e.g. X-Remote-User set by a single-sign-on proxy; None: off
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")  # the header is believed only from these
    listed_only: bool = True  # the header's user must be one of review.reviewers


@dataclass(frozen=True)
class ReviewSection:
    enabled: bool = True
    reviewers: tuple[ReviewerSection, ...] = ()
    proxy_auth: ProxyAuthSection = field(default_factory=ProxyAuthSection)
    secure_cookies: bool = True
    session_idle: float = 1800.0  # seconds without a request before a session ends
    session_max: float = 43200.0  # seconds after login a session ends anyway
    escalate_recipients: tuple[str, ...] = ()  # Escalate emails these (default: actions.notify.recipients)
    blur_radius: float = 12.0
    page_size: int = 50


_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9-]+$")


def _yaml_off_is_a_mode(data: Any) -> Any:
    """YAML 1.1 reads ``mode: off`` as the boolean False; ``actions.takedown.mode`` means the string."""
    try:
        if data["actions"]["takedown"]["mode"] is False:
            data = {**data, "actions": {**data["actions"],
                                        "takedown": {**data["actions"]["takedown"], "mode": "off"}}}
    except (KeyError, TypeError):
        pass
    return data


def _check_emails(problems: _Problems, path: str, values: tuple[str, ...]) -> None:
    for i, r in enumerate(values):
        if not EMAIL_RE.match(r or ""):
            problems.add(f"{path}[{i}]", f"not an email address: {r!r}")


def _validate_takedown_review(cfg: Config, problems: _Problems) -> None:
    n = cfg.actions.notify
    seen: set[str] = set()
    for i, route in enumerate(n.categories):
        p = f"actions.notify.categories[{i}]"
        if not route.category:
            problems.add(f"{p}.category", "is required")
        elif route.category in seen:
            problems.add(f"{p}.category", f"duplicate category {route.category!r}")
        seen.add(route.category)
        if not route.recipients:
            problems.add(f"{p}.recipients", "at least one recipient is required")
        _check_emails(problems, f"{p}.recipients", route.recipients)

    t = cfg.actions.takedown
    for i, category in enumerate(t.categories):
        if not category:
            problems.add(f"actions.takedown.categories[{i}]", "must not be empty")
    if not t.reason.strip():
        problems.add("actions.takedown.reason", "is required (it is written to the deletion log)")
    for i, tag in enumerate(t.tags):
        if not tag or "|" in tag:
            problems.add(f"actions.takedown.tags[{i}]", f"not a change tag: {tag!r}")
    if t.timeout <= 0:
        problems.add("actions.takedown.timeout", "must be > 0")
    if t.maxlag < 0:
        problems.add("actions.takedown.maxlag", "must be >= 0")
    if t.concurrency < 1:
        problems.add("actions.takedown.concurrency", "must be >= 1")
    if t.retry.initial_delay <= 0 or t.retry.max_delay < t.retry.initial_delay:
        problems.add("actions.takedown.retry", "needs 0 < initial_delay <= max_delay")
    a = t.auth
    if a is None:
        if t.mode == "auto":
            problems.add("actions.takedown.auth", "is required when mode is auto (the account that deletes)")
    elif a.method == "bot-password":
        if "@" not in a.username:
            problems.add("actions.takedown.auth.username",
                         f"must be a bot-password login 'User@Bot', got {a.username!r}")
        if not (a.password.env or a.password.file):
            problems.add("actions.takedown.auth.password", "is required: {env: VAR} or {file: PATH}")
    elif not (a.token.env or a.token.file):
        problems.add("actions.takedown.auth.token",
                     "an OAuth 2 access token is required: {env: VAR} or {file: PATH}")

    r = cfg.review
    names: set[str] = set()
    for i, reviewer in enumerate(r.reviewers):
        p = f"review.reviewers[{i}]"
        if not reviewer.name.strip():
            problems.add(f"{p}.name", "is required")
        elif reviewer.name in names:
            problems.add(f"{p}.name", f"duplicate reviewer {reviewer.name!r}")
        names.add(reviewer.name)
        if reviewer.password_hash and not reviewer.password_hash.startswith("$argon2"):
            problems.add(f"{p}.password_hash", "must be an argon2 hash (python -m service.web.review.auth hash)")
        if not reviewer.password_hash and r.proxy_auth.header is None:
            problems.add(f"{p}.password_hash", "is required unless review.proxy_auth.header is set")
    if r.proxy_auth.header is not None and not _HEADER_NAME_RE.match(r.proxy_auth.header):
        problems.add("review.proxy_auth.header", f"not an HTTP header name: {r.proxy_auth.header!r}")
    if r.session_idle <= 0 or r.session_max < r.session_idle:
        problems.add("review", "needs 0 < session_idle <= session_max")
    if r.blur_radius < 4:
        problems.add("review.blur_radius", "must be >= 4 (the preview must stay unrecognisable)")
    if not 1 <= r.page_size <= 500:
        problems.add("review.page_size", "must be between 1 and 500")
    _check_emails(problems, "review.escalate_recipients", r.escalate_recipients)


def _takedown_review_warnings(cfg: Config) -> list[str]:
    out: list[str] = []
    t = cfg.actions.takedown
    if "terrorism" in t.categories:
        out.append(f"actions.takedown.categories includes terrorism: in {t.mode} mode terrorism matches are "
                   "taken down without a human review")
    if t.auth is None and t.mode in ("review", "dry-run"):
        out.append("actions.takedown.auth is not set: " + (
            "confirmed takedowns cannot run" if t.mode == "review" else "dry-run records without asking the wiki"))
    r = cfg.review
    ui = r.enabled and cfg.http.enabled
    if t.mode == "review" and not ui:
        out.append("actions.takedown.mode is review but the review UI is off (review.enabled / http.enabled): "
                   "nothing will be taken down")
    if ui and not r.reviewers and r.proxy_auth.header is None:
        out.append("review.reviewers is empty and review.proxy_auth is off: nobody can log in to the review queue")
    if ui and cfg.actions.notify.review_url is None:
        out.append("actions.notify.review_url is not set: emails will not link to the review page")
    if ui and not r.escalate_recipients:
        out.append("review.escalate_recipients is empty: Escalate emails actions.notify.recipients")
    if ui and not r.secure_cookies:
        out.append("review.secure_cookies is off: session cookies are sent over plain HTTP")
    return out


# --------------------------------------------------------------------------- Kafka, polling, backfill, scale-out


@dataclass(frozen=True)
class KafkaConnectionSection:
    """How to reach one Kafka cluster (and the consumer-group timings used on it)."""

    bootstrap_servers: tuple[str, ...] = ()
    client_id: str = "mediamoderation"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: Secret = field(default_factory=Secret)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: Secret = field(default_factory=Secret)
    ssl_check_hostname: bool = True
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    request_timeout_ms: int = 30_000


@dataclass(frozen=True)
class KafkaSection:
    connection: KafkaConnectionSection = field(default_factory=KafkaConnectionSection)
    topics: tuple[str, ...] = ("eqiad.mediawiki.recentchange", "codfw.mediawiki.recentchange")
    group_id: str = "mediamoderation"
    # Where a group with no committed offset starts: latest (new uploads only) or earliest (all retained).
    auto_offset_reset: Literal["latest", "earliest"] = "latest"
    max_poll_records: int = 500
    commit_interval: float = 1.0  # seconds between offset commits (only finished offsets are committed)
    lag_interval: float = 10.0  # seconds between consumer-lag measurements


@dataclass(frozen=True)
class MwApiSection:
    """Polling ``list=logevents&letype=upload`` for wikis without EventStreams or Kafka."""

    wikis: tuple[str, ...] = ()  # wiki ids to poll (default: every configured wiki)
    poll_interval: float = 10.0  # seconds between polls once the log is read to its end
    limit: int = 500  # entries per request (500 is the API's maximum without apihighlimits)
    since: str | None = None  # ISO 8601 time to start at when there is no checkpoint (default: now)
    checkpoint_name: str = "mwapi"
    timeout: float = 30.0


@dataclass(frozen=True)
class WorkSection:
    """The work topic between ``--role ingest`` and ``--role worker`` replicas."""

    connection: KafkaConnectionSection | None = None  # default: source.kafka.connection
    topic: str = "mediamoderation.scan-requests"
    group_id: str = "mediamoderation-workers"
    partitions: int = 12  # used when the topic is created
    replication_factor: int = 1


@dataclass(frozen=True)
class BackfillSection:
    batch_size: int = 0  # files per list=allimages request; 0: the most the account may ask ("max")
    progress_interval: float = 30.0  # seconds between progress log lines when not on a terminal
    checkpoint_name: str = "backfill"


def _validate_scale(cfg: Config, problems: _Problems) -> None:
    k = cfg.source.kafka
    conns = [("source.kafka.connection", k.connection)]
    if cfg.work.connection is not None:
        conns.append(("work.connection", cfg.work.connection))
    for path, c in conns:
        for i, server in enumerate(c.bootstrap_servers):
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                problems.add(f"{path}.bootstrap_servers[{i}]", f"must be host:port, got {server!r}")
        if c.security_protocol.startswith("SASL"):
            if c.sasl_mechanism is None:
                problems.add(f"{path}.sasl_mechanism", f"is required with {c.security_protocol}")
            if not c.sasl_username:
                problems.add(f"{path}.sasl_username", f"is required with {c.security_protocol}")
            if not (c.sasl_password.env or c.sasl_password.file):
                problems.add(f"{path}.sasl_password", "is required: {env: VAR} or {file: PATH}")
        for name in ("session_timeout_ms", "heartbeat_interval_ms", "max_poll_interval_ms", "request_timeout_ms"):
            if getattr(c, name) < 1:
                problems.add(f"{path}.{name}", "must be >= 1")
        if c.heartbeat_interval_ms >= c.session_timeout_ms:
            problems.add(f"{path}.heartbeat_interval_ms", "must be below session_timeout_ms")
    if cfg.source.type == "kafka":
        if not k.connection.bootstrap_servers:
            problems.add("source.kafka.connection.bootstrap_servers", "at least one host:port is required")
        if not k.topics:
            problems.add("source.kafka.topics", "at least one topic is required")
    if not k.group_id:
        problems.add("source.kafka.group_id", "is required")
    if k.max_poll_records < 1:
        problems.add("source.kafka.max_poll_records", "must be >= 1")
    if k.commit_interval <= 0 or k.lag_interval <= 0:
        problems.add("source.kafka", "commit_interval and lag_interval must be > 0")
    m = cfg.source.mwapi
    known = {w.id for w in cfg.wikis}
    for i, wiki in enumerate(m.wikis):
        if wiki not in known:
            problems.add(f"source.mwapi.wikis[{i}]", f"not a configured wiki: {wiki!r}")
    if m.poll_interval <= 0 or m.timeout <= 0:
        problems.add("source.mwapi", "poll_interval and timeout must be > 0")
    if not 1 <= m.limit <= 5000:
        problems.add("source.mwapi.limit", f"must be between 1 and 5000, got {m.limit}")
    if m.since is not None:
        try:
            parse_time(m.since)
        except ValueError as exc:
            problems.add("source.mwapi.since", str(exc))
    w = cfg.work
    if not w.topic or not w.group_id:
        problems.add("work", "topic and group_id are required")
    if w.partitions < 1 or w.replication_factor < 1:
        problems.add("work", "partitions and replication_factor must be >= 1")
    b = cfg.backfill
    if not 0 <= b.batch_size <= 5000:
        problems.add("backfill.batch_size", f"must be between 0 (max) and 5000, got {b.batch_size}")
    if b.progress_interval <= 0:
        problems.add("backfill.progress_interval", "must be > 0")
    s = cfg.store
    if s.url is not None and not s.url.startswith(("postgresql://", "postgres://")):
        problems.add("store.url", f"must be a postgresql:// URL, got {s.url.split('@')[-1]!r}")
    if s.outbox_lease <= 0:
        problems.add("store.outbox_lease", "must be > 0")


def kafka_client_options(c: KafkaConnectionSection) -> dict[str, Any]:
    """kafka-python keyword arguments for one cluster (security settings included, secrets resolved)."""
    opts: dict[str, Any] = {
        "bootstrap_servers": list(c.bootstrap_servers),
        "client_id": c.client_id,
        "security_protocol": c.security_protocol,
        "request_timeout_ms": c.request_timeout_ms,
    }
    if c.security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = c.sasl_mechanism
        opts["sasl_plain_username"] = c.sasl_username
        opts["sasl_plain_password"] = c.sasl_password.get()
    if c.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_check_hostname"] = c.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(c, name):
                opts[name] = getattr(c, name)
        if c.ssl_password.env or c.ssl_password.file:
            opts["ssl_password"] = c.ssl_password.get()
    return opts
