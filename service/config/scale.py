"""Scale-out: the work topic between ingest and worker replicas, and the backfill command."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from service.config.sources import KafkaConnectionSection
from service.config.values import PosFloat, PosInt


@dataclass(frozen=True)
class WorkSection:
    """The work topic between ``--role ingest`` and ``--role worker`` replicas."""

    connection: KafkaConnectionSection | None = None  # default: source.kafka.connection
    # the work topic.
    topic: str = "mediamoderation.scan-requests"
    # the workers' consumer group.
    group_id: str = "mediamoderation-workers"
    partitions: PosInt = 12  # used when the topic is created
    # used when the topic is created (the partition count caps useful workers).
    replication_factor: PosInt = 1


@dataclass(frozen=True)
class BackfillSection:
    # files per list=allimages request; 0: the most the account may ask ("max")
    batch_size: Annotated[int, Field(ge=0, le=5000)] = 0
    progress_interval: PosFloat = 30.0  # seconds between progress log lines when not on a terminal
    # prefix of the per-wiki, per-range checkpoint.
    checkpoint_name: str = "backfill"
