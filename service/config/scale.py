"""Scale-out: the work topic between ingest and worker replicas, and the backfill command."""

from __future__ import annotations

from dataclasses import dataclass

from service.config.sources import KafkaConnectionSection


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
