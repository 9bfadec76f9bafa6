"""What flows through the pipeline's stages: the plug-in protocols and the per-upload work item.

:mod:`service.pipeline` runs the stages; this module holds the plain types they share (the fetcher,
exact bank, prepare and planner contracts, :class:`Work`) and two small helpers, so they can change
(or be imported) without the orchestration.  The matcher's contract is :mod:`service.matchers.base`,
re-exported here.  ``from service.pipeline import X`` still works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.config import ThumbnailSection, WikiSection
from service.matchers.base import Matcher as Matcher  # declared once, in service.matchers.base
from service.models import FetchedMedia, Match, PreparedMedia, UploadEvent
from service.store.base import NewAction, ScanRecord


class Fetcher(Protocol):
    async def fetch(self, wiki: WikiSection, title: str, *, expected_sha1: str | None = None) -> FetchedMedia: ...


class ExactBank(Protocol):
    @property
    def version(self) -> str: ...

    def match_sha1(self, sha1: str) -> list[Match]: ...


def scan_version(banks_version: str, local: Sequence[object] = (), remote: Sequence[str] = ()) -> str:
    """What a stored scan result is valid for: the banks' version, then ``<name>:<version>`` of each local
    matcher with content of its own (:class:`~service.matchers.base.VersionedMatcher`: ``vpdq``), then the names
    of the remote matchers asked.  With neither it is the banks' version alone, as earlier releases stored it."""
    parts = [banks_version]
    # (what isinstance(m, VersionedMatcher) checks, without a runtime protocol check per upload: ~10 us each)
    parts += [f"{getattr(m, 'name', '')}:{v}" for m in local if isinstance(v := getattr(m, "version", None), str)]
    parts += remote
    return "+".join(parts)


Prepare = Callable[..., PreparedMedia]
# A planner turns the matches of one upload into the effects to perform (notify, later takedown).
Planner = Callable[[UploadEvent, str, Sequence[Match]], list[NewAction]]


@dataclass(slots=True)
class Work:
    seq: int
    event: UploadEvent
    started: float
    deadline: float
    sha1: str | None = None
    fetched: FetchedMedia | None = None
    prepared: PreparedMedia | None = None
    matches: list[Match] = field(default_factory=list)
    cached: bool = False
    cached_scan: ScanRecord | None = None  # the scan cache's record (its hashes are kept for retroactive matching)
    outcome: str | None = None
    recorded: bool = False  # local matches were already recorded (and acted on) before the remote stage
    counted: int = 0  # matches already counted in the metrics
    remote_states: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # matcher -> (state, error)


class _Finished(Exception):
    """Raised inside a stage to end an item early with ``outcome``."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def _merge(work: Work, hits: Sequence[Match]) -> None:
    seen = {m.key for m in work.matches}
    for hit in hits:
        if hit.key not in seen:
            seen.add(hit.key)
            work.matches.append(hit)


def _call_prepare(
    prepare: Prepare, data: bytes, sha1: str, cfg: ThumbnailSection, md5: str | None, source: str
) -> PreparedMedia:
    return prepare(data, sha1, cfg, md5=md5, source=source)
