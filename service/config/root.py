"""The root of the configuration tree: :class:`Config`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pydantic import ConfigDict, with_config

from service.config.actions import ActionsSection, ReviewSection
from service.config.core import (
    HttpSection,
    NetworkSection,
    PipelineSection,
    ServiceSection,
    StoreSection,
    WikiSection,
)
from service.config.matching import BanksSection, FetchSection, PhotoDnaSection, ThumbnailSection
from service.config.media import MediaSection
from service.config.scale import BackfillSection, WorkSection
from service.config.sources import SourceSection


# Unknown keys and non-finite numbers are refused in every section (pydantic applies this to nested ones).
@with_config(ConfigDict(extra="forbid", allow_inf_nan=False))
@dataclass(frozen=True)
class Config:
    service: ServiceSection = field(default_factory=ServiceSection)
    http: HttpSection = field(default_factory=HttpSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    source: SourceSection = field(default_factory=SourceSection)
    wikis: tuple[WikiSection, ...] = ()
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    fetch: FetchSection = field(default_factory=FetchSection)
    thumbnail: ThumbnailSection = field(default_factory=ThumbnailSection)
    banks: BanksSection = field(default_factory=BanksSection)
    media: MediaSection = field(default_factory=MediaSection)
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
