"""Semantic checks on a built :class:`Config`: each problem is added with its key path, in a fixed order."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from service.config.core import Secret
from service.config.fields import check_https_url, check_path, check_secret_shapes, check_url, check_wiki_urls
from service.config.matching import STANDARD_THUMB_WIDTHS, BankSection
from service.config.problems import _Problems
from service.config.root import Config
from service.config.values import EMAIL_RE
from service.net import DIRECT, proxy_problem

MIN_DECODE_MEMORY = 256 * 1024 * 1024  # room to decode and hash a thumbnail, beyond the worker's libraries
GENERIC_AGENTS = ("python-requests", "aiohttp", "python-urllib", "curl/", "wget/", "mozilla/")


_ARTICLE_PATH_RE = re.compile(r"^/(?!/)[A-Za-z0-9/._~!$&'()*+,;=:@%?-]*$")


def _is_host_port(value: str) -> bool:
    """``host`` or ``host:port`` (IPv6 in brackets), nothing else."""
    if not value or any(c in value for c in "/\\?#@ ") or any(ord(c) < 33 or ord(c) > 126 for c in value):
        return False
    try:
        parts = urlsplit(f"//{value}")
        port = parts.port
    except ValueError:
        return False
    return bool(parts.hostname) and (port is None or 0 < port) and not value.endswith(":")


def _is_server(url: str) -> bool:
    """``scheme://host[:port]`` and nothing more (a wiki's ``server_url``)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.path.strip("/") \
        and not (parts.query or parts.fragment or parts.username) and _is_host_port(parts.netloc)


def _validate_network(cfg: Config, problems: _Problems) -> None:
    proxy = cfg.network.proxy
    if isinstance(proxy, str) and proxy not in ("", DIRECT) and (problem := proxy_problem(proxy)):
        problems.add("network.proxy", problem)
    for i, entry in enumerate(cfg.network.no_proxy):
        if isinstance(entry, str) and (not entry.strip() or "://" in entry or any(c in entry for c in "@?# ")):
            problems.add(f"network.no_proxy[{i}]", f"must be a host, IP address, CIDR block or *, got {entry!r}")


def _validate(cfg: Config, base: Path, problems: _Problems) -> None:
    ua = cfg.service.user_agent.strip()
    if not ua:
        problems.add("service.user_agent", "is required: a descriptive User-Agent with contact details")
    elif not ("@" in ua or "http://" in ua or "https://" in ua) or ua.lower().startswith(GENERIC_AGENTS):
        problems.add(
            "service.user_agent",
            "must name the client and a contact URL or email, e.g. 'mediamoderation/0.1 (https://…; ts@…)'",
        )
    _validate_network(cfg, problems)

    es = cfg.source.eventstreams
    check_https_url(problems, "source.eventstreams.url", es.url)
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
        check_wiki_urls(problems, p, w)
        for j, host in enumerate(w.media_hosts):
            if not _is_host_port(host):
                problems.add(f"{p}.media_hosts[{j}]", f"must be a host name or host:port, got {host!r}")
        if w.server_url and not _is_server(w.server_url):
            problems.add(f"{p}.server_url", f"must be scheme://host[:port] only, got {w.server_url!r}")
        if not _ARTICLE_PATH_RE.match(w.article_path) or w.article_path.count("$1") != 1:
            problems.add(f"{p}.article_path", f"must be a path with one $1, e.g. /wiki/$1, got {w.article_path!r}")

    pl = cfg.pipeline
    if pl.decode_memory_limit != 0 and pl.decode_memory_limit < MIN_DECODE_MEMORY:
        problems.add("pipeline.decode_memory_limit", f"must be 0 (no limit) or at least {MIN_DECODE_MEMORY} "
                     f"bytes (256 MiB), got {pl.decode_memory_limit}")

    f = cfg.fetch
    if f.thumb_width not in STANDARD_THUMB_WIDTHS:
        problems.add("fetch.thumb_width", f"must be a standard thumbnail width {STANDARD_THUMB_WIDTHS}")

    b = cfg.banks
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
        _check_bank_source(problems, p, base, bank, b.allowed_hosts)

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
        if n.smtp.username and not (n.smtp.password.env or n.smtp.password.file):
            problems.add("actions.notify.smtp.password", "a username needs password.env or password.file")
    if n.review_url is not None:
        check_url(problems, "actions.notify.review_url", n.review_url)
    if n.retry.initial_delay <= 0 or n.retry.max_delay < n.retry.initial_delay:
        problems.add("actions.notify.retry", "needs 0 < initial_delay <= max_delay")
    _validate_photodna(cfg, problems)
    _validate_takedown_review(cfg, problems)
    _validate_scale(cfg, problems)
    if not cfg.store.path:
        problems.add("store.path", "is required")
    check_path(problems, "store.path", base, cfg.store.path)
    check_path(problems, "actions.notify.outbox_dir", base, cfg.actions.notify.outbox_dir)
    check_secret_shapes(cfg, problems)


PHOTODNA_MIN_SIDE = 160
PHOTODNA_MAX_BYTES = 4_000_000


def _validate_photodna(cfg: Config, problems: _Problems) -> None:
    p = cfg.photodna
    check_https_url(problems, "photodna.url", p.url)
    if p.enabled and not (p.key.env or p.key.file):
        problems.add("photodna.key", "is required when photodna is enabled: {env: VAR} or {file: PATH}")
    if p.backoff.initial_delay <= 0 or p.backoff.max_delay < p.backoff.initial_delay:
        problems.add("photodna.backoff", "needs 0 < initial_delay <= max_delay")
    c = p.circuit
    if c.open_seconds <= 0 or c.max_open_seconds < c.open_seconds:
        problems.add("photodna.circuit", "needs 0 < open_seconds <= max_open_seconds")
    if not p.default_category:
        problems.add("photodna.default_category", "is required (e.g. child-protection)")
    for i, rule in enumerate(p.categories):
        if not rule.category:
            problems.add(f"photodna.categories[{i}].category", "is required")
    if p.enabled:
        t = cfg.thumbnail
        if t.jpeg_min_side < PHOTODNA_MIN_SIDE:
            problems.add("thumbnail.jpeg_min_side", f"must be >= {PHOTODNA_MIN_SIDE} when photodna is enabled")
        if t.jpeg_max_bytes > PHOTODNA_MAX_BYTES:
            problems.add("thumbnail.jpeg_max_bytes",
                         f"must be <= {PHOTODNA_MAX_BYTES} when photodna is enabled (PhotoDNA's limit)")


_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9-]+$")


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

    t = cfg.actions.takedown
    for i, category in enumerate(t.categories):
        if not category:
            problems.add(f"actions.takedown.categories[{i}]", "must not be empty")
    if not t.reason.strip():
        problems.add("actions.takedown.reason", "is required (it is written to the deletion log)")
    for i, tag in enumerate(t.tags):
        if not tag or "|" in tag:
            problems.add(f"actions.takedown.tags[{i}]", f"not a change tag: {tag!r}")
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
        stored = reviewer.password_hash
        if isinstance(stored, str) and stored and not stored.startswith("$argon2"):
            problems.add(f"{p}.password_hash", "must be an argon2 hash (mediamoderation reviewer hash-password)")
        has_hash = stored.configured if isinstance(stored, Secret) else bool(stored)
        if not has_hash and r.proxy_auth.header is None:
            problems.add(f"{p}.password_hash", "is required unless review.proxy_auth.header is set")
    if r.proxy_auth.header is not None and not _HEADER_NAME_RE.match(r.proxy_auth.header):
        problems.add("review.proxy_auth.header", f"not an HTTP header name: {r.proxy_auth.header!r}")
    if r.proxy_auth.client_header is not None and not _HEADER_NAME_RE.match(r.proxy_auth.client_header):
        problems.add("review.proxy_auth.client_header", f"not an HTTP header name: {r.proxy_auth.client_header!r}")
    if r.session_idle <= 0 or r.session_max < r.session_idle:
        problems.add("review", "needs 0 < session_idle <= session_max")


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
        if c.heartbeat_interval_ms >= c.session_timeout_ms:
            problems.add(f"{path}.heartbeat_interval_ms", "must be below session_timeout_ms")
    if cfg.source.type == "kafka":
        if not k.connection.bootstrap_servers:
            problems.add("source.kafka.connection.bootstrap_servers", "at least one host:port is required")
        if not k.topics:
            problems.add("source.kafka.topics", "at least one topic is required")
    if not k.group_id:
        problems.add("source.kafka.group_id", "is required")
    m = cfg.source.mwapi
    known = {w.id for w in cfg.wikis}
    for i, wiki in enumerate(m.wikis):
        if wiki not in known:
            problems.add(f"source.mwapi.wikis[{i}]", f"not a configured wiki: {wiki!r}")
    w = cfg.work
    if not w.topic or not w.group_id:
        problems.add("work", "topic and group_id are required")
    s = cfg.store
    if s.url is not None and not s.url.startswith(("postgresql://", "postgres://")):
        problems.add("store.url", f"must be a postgresql:// URL, got {s.url.split('@')[-1]!r}")


def _check_bank_source(problems: _Problems, p: str, base: Path, bank: BankSection,
                       allowed_hosts: tuple[str, ...]) -> None:
    """Exactly one of ``path``, ``url``, ``exchange``; URLs https:// (loopback http:// for tests), allowlisted."""
    given = [k for k, v in (("path", bank.path), ("url", bank.url), ("exchange", bank.exchange)) if v]
    if not given:
        problems.add(f"{p}.path", "one of path, url or exchange is required")
        return
    if len(given) > 1:
        problems.add(f"{p}.{given[1]}", f"only one of path, url or exchange may be set, got {', '.join(given)}")
        return
    if bank.path:
        check_path(problems, f"{p}.path", base, bank.path, must_exist=True)
    urls = [("url", bank.url)] if bank.url else []
    if bank.exchange is not None:
        ex = bank.exchange
        if ex.base_url:
            urls.append(("exchange.base_url", ex.base_url))
        if not ex.credentials.configured:
            problems.add(f"{p}.exchange.credentials", "is required: {env: VAR} or {file: PATH}")
        if ex.type == "threatexchange" and not ex.privacy_group:
            problems.add(f"{p}.exchange.privacy_group", "is required for threatexchange")
        if ex.type == "ncmec":
            from service.exchanges.names import NCMEC_ENVIRONMENTS

            if ex.environment not in NCMEC_ENVIRONMENTS:
                problems.add(f"{p}.exchange.environment",
                             f"must be one of {', '.join(NCMEC_ENVIRONMENTS)}, got {ex.environment!r}")
    for key, url in urls:
        check_https_url(problems, f"{p}.{key}", url)
        if not host_allowed(allowed_hosts, url):
            problems.add(f"{p}.{key}", f"host is not in banks.allowed_hosts: {url!r}")


def host_allowed(allowed_hosts: tuple[str, ...], url: str) -> bool:
    """Whether ``url``'s host (and port: 443/80 when not given) is one of ``allowed_hosts`` (``host[:port]``)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    host = (parts.hostname or "").lower().rstrip(".")
    if not host or parts.username is not None or parts.password is not None:
        return False
    for entry in allowed_hosts:
        try:
            allowed = urlsplit(f"//{entry}")
            allowed_port = allowed.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            continue
        if (allowed.hostname or "").lower().rstrip(".") == host and allowed_port == port:
            return True
    return False
