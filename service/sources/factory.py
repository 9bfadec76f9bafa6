"""Build the configured source: the live one (``source.type``), the work topic's, or a replay."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from service.config import Config, KafkaSection
from service.metrics import Metrics
from service.net import Proxies
from service.sources.base import Source


def live_source(cfg: Config, store: Any, metrics: Metrics, since: datetime | None = None) -> Source:
    """The upload source named by ``source.type``; ``since`` overrides the stored checkpoint."""
    kind = cfg.source.type
    if kind == "kafka":
        from service.sources.kafka import KafkaSource

        if since is not None:
            raise ValueError("--since is not supported with the Kafka source: use `mediamoderation replay --since`")
        return KafkaSource(cfg.source.kafka, metrics=metrics, shutdown_grace=_drain_time(cfg))
    if kind == "mwapi":
        from service.sources.mwapi import LogEventsSource

        return LogEventsSource(cfg, checkpoints=store, metrics=metrics, since=since)
    from service.sources.eventstreams import EventStreamsSource

    return EventStreamsSource(cfg.source.eventstreams, user_agent=cfg.service.user_agent, checkpoints=store,
                              metrics=metrics, since=since, proxies=Proxies.for_config(cfg.network))


def work_section(cfg: Config) -> KafkaSection:
    """The consumer settings of the work topic (``--role worker``)."""
    w = cfg.work
    return dataclasses.replace(
        cfg.source.kafka, connection=w.connection or cfg.source.kafka.connection, topics=(w.topic,),
        group_id=w.group_id, auto_offset_reset="earliest",
    )


def worker_source(cfg: Config, metrics: Metrics) -> Source:
    from service.sources.kafka import KafkaSource

    return KafkaSource(work_section(cfg), metrics=metrics, shutdown_grace=_drain_time(cfg), name="work")


def _drain_time(cfg: Config) -> float:
    """How long a Kafka source waits for handed-out events at shutdown: most of the grace period."""
    return max(1.0, cfg.service.shutdown_grace * 0.8)
