"""Core sections: the service itself, its HTTP endpoint, the wikis, the pipeline, the store; and :class:`Secret`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field

from service.config.values import NonNegFloat, PosFloat, PosInt, lower


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
            except (OSError, UnicodeDecodeError):
                return None
        return None

    @property
    def configured(self) -> bool:
        return bool(self.env or self.file)

    def problem(self) -> str | None:
        """Why :meth:`get` finds no value right now, naming the variable or file (never a value); None when
        it finds one or when no source is configured."""
        if not self.configured or self.get():
            return None
        reasons = []
        if self.env:
            reasons.append(f"environment variable {self.env} is {'empty' if self.env in os.environ else 'not set'}")
        if self.file:
            try:
                Path(self.file).read_bytes().decode("utf-8")
                reasons.append(f"file {self.file} is empty")
            except OSError as exc:
                reasons.append(f"file {self.file} cannot be read: {exc.strerror or type(exc).__name__}")
            except UnicodeDecodeError:
                reasons.append(f"file {self.file} is not UTF-8 text")
        return " and ".join(reasons)

    def __repr__(self) -> str:  # never show values; names are fine
        return f"Secret(env={self.env!r}, file={self.file!r})"


@dataclass(frozen=True)
class ServiceSection:
    # User-Agent on every request; must name the client and a contact URL or email (Wikimedia blocks generic agents).
    user_agent: str = ""
    # `debug`, `info`, `warning`, `error` (in any case). Logs go to stderr: coloured console lines on a terminal,
    # JSON lines otherwise (`--log-format`, `--log-level`, `-v`/`-q` override).
    log_level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(lower)] = "info"
    # seconds to finish in-flight events after SIGTERM.
    shutdown_grace: NonNegFloat = 30.0


@dataclass(frozen=True)
class HttpSection:
    # serve `/metrics`, `/healthz`, `/readyz`, `/healthz/pipeline`.
    enabled: bool = True
    # listen address.
    host: str = "127.0.0.1"
    # listen address.
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # `/healthz/pipeline` (check `source`) fails when the source has delivered nothing for this long (0 disables).
    ready_source_idle: float = 0.0


@dataclass(frozen=True)
class NetworkSection:
    """Outgoing HTTP (the wikis, EventStreams, PhotoDNA); Kafka, SMTP and PostgreSQL never use the proxy."""

    # proxy for outgoing HTTP (wikis, EventStreams, PhotoDNA; never Kafka, SMTP, PostgreSQL): empty uses
    # HTTPS_PROXY / HTTP_PROXY from the environment, `direct` none, a URL `http://host:port` that proxy
    # (credentials only in the environment).
    proxy: str = ""
    # hosts reached without the proxy (empty: NO_PROXY): names (with their subdomains), IP addresses, CIDR blocks, `*`.
    no_proxy: tuple[str, ...] = ()


@dataclass(frozen=True)
class WikiSection:
    # the event's `wiki` field (e.g. `commonswiki`); events for other wikis are skipped.
    id: str = ""
    # the wiki's `api.php`.
    api_url: str = ""
    # hosts thumbnails and originals may come from besides the API host: "host" (the API's scheme, its default
    # port) or "host:port".
    media_hosts: tuple[str, ...] = ()
    # the wiki's `server` from `meta=siteinfo` (default: the API's scheme://host[:port]); links in emails and the
    # review queue are built from it and `article_path`, never from an event.
    server_url: str = ""
    # the wiki's `articlepath` from `meta=siteinfo`, with one `$1` for the title.
    article_path: str = "/wiki/$1"

    @property
    def api_host(self) -> str:
        return (urlsplit(self.api_url).hostname or "").lower()

    @property
    def server(self) -> str:
        """The wiki's own address, ``scheme://host[:port]`` with no trailing slash."""
        if self.server_url:
            return self.server_url.rstrip("/")
        parts = urlsplit(self.api_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def allowed_hosts(self) -> frozenset[str]:
        """Host names only (ports are compared by :func:`service.fetch.origin_allowed`)."""
        return frozenset({self.api_host, *((urlsplit(f"//{h}").hostname or "").lower() for h in self.media_hosts)})


@dataclass(frozen=True)
class ConcurrencySection:
    fetch: PosInt = 8
    thumbnail: PosInt = 4
    match: PosInt = 4
    act: PosInt = 4
    remote: PosInt = 8  # concurrent calls to remote matchers (PhotoDNA); needs >= rate x latency


@dataclass(frozen=True)
class PipelineSection:
    # capacity of each stage's queue.
    queue_size: PosInt = 64
    concurrency: ConcurrencySection = field(default_factory=ConcurrencySection)
    cpu_workers: PosInt | None = None  # size of the decode/hash pool (default: number of cores)
    # `process` or `thread`.
    cpu_pool: Literal["process", "thread"] = "process"
    # Address space (RLIMIT_AS, bytes) each decode worker process may map beyond what it maps once started (its
    # libraries and compiled kernels, shared with the other workers); 0: no ceiling.  Not for cpu_pool: thread.
    decode_memory_limit: int = 1024 * 1024 * 1024
    # seconds an event may spend in the pipeline before it ends as `error:deadline`.
    event_deadline: PosFloat = 300.0
    # how long handled event ids are remembered.
    dedupe_retention_days: PosFloat = 14.0


@dataclass(frozen=True)
class StoreSection:
    # the SQLite store.
    path: str = "./data/mediamoderation.sqlite3"
    # postgresql://user@host:5432/db selects the PostgreSQL store (then ``path`` is unused); put the password in
    # ~/.pgpass or PGPASSWORD, not in the URL.
    url: str | None = None
    outbox_lease: PosFloat = 300.0  # seconds an outbox item claimed by one replica is hidden from the others
