"""Upload-event sources (EventStreams, Kafka, MediaWiki API polling) and kafka-python client options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from service.config.core import Secret
from service.config.values import PosFloat, PosInt, Time


@dataclass(frozen=True)
class ReconnectSection:
    # exponential backoff with jitter for reconnects (HTTP 429 honours `Retry-After`).
    initial_delay: float = 1.0
    # exponential backoff with jitter for reconnects (HTTP 429 honours `Retry-After`).
    max_delay: float = 60.0


@dataclass(frozen=True)
class EventStreamsSection:
    # stream URL.
    url: str = "https://stream.wikimedia.org/v2/stream/mediawiki.recentchange"
    # ISO 8601 time to start from when there is no checkpoint.
    since: Time | None = None
    # name of the checkpoint in the store.
    checkpoint_name: str = "eventstreams"
    # seconds.
    connect_timeout: PosFloat = 10.0
    # seconds.
    read_timeout: PosFloat = 60.0
    reconnect: ReconnectSection = field(default_factory=ReconnectSection)


@dataclass(frozen=True)
class SourceSection:
    # the upload source.
    type: Literal["eventstreams", "kafka", "mwapi"] = "eventstreams"
    eventstreams: EventStreamsSection = field(default_factory=EventStreamsSection)
    kafka: KafkaSection = field(default_factory=lambda: KafkaSection())
    mwapi: MwApiSection = field(default_factory=lambda: MwApiSection())


@dataclass(frozen=True)
class KafkaConnectionSection:
    """How to reach one Kafka cluster (and the consumer-group timings used on it)."""

    # `host:port` list; required with `source.type: kafka`.
    bootstrap_servers: tuple[str, ...] = ()
    # Kafka client id.
    client_id: str = "mediamoderation"
    # `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; the password is `{env: VAR}` or `{file: PATH}`; all three required
    # with `SASL_*`.
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    # `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; the password is `{env: VAR}` or `{file: PATH}`; all three required
    # with `SASL_*`.
    sasl_username: str | None = None
    # `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; the password is `{env: VAR}` or `{file: PATH}`; all three required
    # with `SASL_*`.
    sasl_password: Secret = field(default_factory=Secret)
    # TLS settings for `SSL` / `SASL_SSL` (absolute paths; the key password as a secret).
    ssl_cafile: str | None = None
    # TLS settings for `SSL` / `SASL_SSL` (absolute paths; the key password as a secret).
    ssl_certfile: str | None = None
    # TLS settings for `SSL` / `SASL_SSL` (absolute paths; the key password as a secret).
    ssl_keyfile: str | None = None
    # TLS settings for `SSL` / `SASL_SSL` (absolute paths; the key password as a secret).
    ssl_password: Secret = field(default_factory=Secret)
    # TLS settings for `SSL` / `SASL_SSL` (absolute paths; the key password as a secret).
    ssl_check_hostname: bool = True
    # consumer-group timings: a dead consumer's partitions move after the session timeout.
    session_timeout_ms: PosInt = 10_000
    # consumer-group timings: a dead consumer's partitions move after the session timeout.
    heartbeat_interval_ms: PosInt = 3_000
    # consumer-group timings: a dead consumer's partitions move after the session timeout.
    max_poll_interval_ms: PosInt = 300_000
    # consumer-group timings: a dead consumer's partitions move after the session timeout.
    request_timeout_ms: PosInt = 30_000


@dataclass(frozen=True)
class KafkaSection:
    connection: KafkaConnectionSection = field(default_factory=KafkaConnectionSection)
    # topics to consume.
    topics: tuple[str, ...] = ("eqiad.mediawiki.recentchange", "codfw.mediawiki.recentchange")
    # consumer group (a replay uses `<group_id>-replay`).
    group_id: str = "mediamoderation"
    # Where a group with no committed offset starts: latest (new uploads only) or earliest (all retained).
    auto_offset_reset: Literal["latest", "earliest"] = "latest"
    # records per poll.
    max_poll_records: PosInt = 500
    commit_interval: PosFloat = 1.0  # seconds between offset commits (only finished offsets are committed)
    lag_interval: PosFloat = 10.0  # seconds between consumer-lag measurements


@dataclass(frozen=True)
class MwApiSection:
    """Polling ``list=logevents&letype=upload`` for wikis without EventStreams or Kafka."""

    wikis: tuple[str, ...] = ()  # wiki ids to poll (default: every configured wiki)
    poll_interval: PosFloat = 10.0  # seconds between polls once the log is read to its end
    # entries per request (500 is the API's maximum without apihighlimits)
    limit: Annotated[int, Field(ge=1, le=5000)] = 500
    since: Time | None = None  # ISO 8601 time to start at when there is no checkpoint (default: now)
    # checkpoint name in the store.
    checkpoint_name: str = "mwapi"
    # seconds per request.
    timeout: PosFloat = 30.0


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
