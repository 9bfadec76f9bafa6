"""What is fetched, hashed and matched: fetch, thumbnail, local hash banks and PhotoDNA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field

from service.config.core import Secret
from service.config.values import NonNegFloat, NonNegInt, PosFloat, PosInt

PDQ_THRESHOLD_MAX = 100  # PDQ's own recommendation is 31; 256 would match every image
STANDARD_THUMB_WIDTHS = (20, 40, 60, 120, 250, 330, 500, 960, 1280, 1920, 3840)


@dataclass(frozen=True)
class FetchSection:
    thumb_width: int = 330
    min_side: PosInt = 160
    max_bytes: PosInt = 50_000_000
    originals: bool = False
    timeout: PosFloat = 30.0
    retries: NonNegInt = 3
    retry_delay: float = 1.0
    maxlag: NonNegInt = 5
    max_redirects: PosInt = 5
    # titles per imageinfo request (MediaWiki renders at most 50 thumbnails per request)
    batch_size: Annotated[int, Field(ge=1, le=50)] = 50


@dataclass(frozen=True)
class ThumbnailSection:
    max_pixels: PosInt = 120_000_000
    # Width x height x bytes per pixel (all bands, all bit depths) above which an image is refused before
    # its pixels are decoded: converting it costs a few times this, which must fit the worker's memory ceiling.
    max_decoded_bytes: PosInt = 200_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
    pdq_max_side: PosInt = 512
    jpeg_min_side: PosInt = 160
    jpeg_max_bytes: PosInt = 4_000_000
    jpeg_quality: Annotated[int, Field(ge=1, le=95)] = 90
    make_jpeg: bool = False  # produce JPEG bytes for remote matchers (PhotoDNA turns this on)


@dataclass(frozen=True)
class BankSection:
    name: str = ""
    path: str = ""
    category: str = ""
    # PDQ Hamming distance (of 256 bits) at or below which a hash matches; at most 100 (more matches nearly anything).
    pdq_threshold: Annotated[int, Field(ge=0, le=PDQ_THRESHOLD_MAX)] = 31


@dataclass(frozen=True)
class BanksSection:
    reload_interval: NonNegFloat = 10.0  # seconds between checks of the bank files for changes; 0: never
    pdq_quality_min: Annotated[int, Field(ge=0, le=100)] = 50
    list: tuple[BankSection, ...] = ()


@dataclass(frozen=True)
class BackoffSection:
    initial_delay: float = 0.5
    max_delay: float = 30.0


@dataclass(frozen=True)
class CircuitSection:
    failures: PosInt = 10  # consecutive transient failures that open the circuit
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
    age_days: PosFloat = 90.0  # re-scan files PhotoDNA found clean this long ago
    interval: PosFloat = 60.0  # seconds between rescan/retry rounds
    batch: PosInt = 100  # files per round at most
    concurrency: PosInt = 2
    budget_reserve: Annotated[float, Field(ge=0, lt=1)] = 0.1  # share of the monthly budget rescans never touch
    # Failed scans are retried after these delays (seconds), by number of failures; the last repeats.
    retry_delays: Annotated[tuple[PosFloat, ...], Field(min_length=1)] = (60.0, 300.0, 1800.0, 7200.0, 21600.0)


@dataclass(frozen=True)
class PhotoDnaSection:
    enabled: bool = False
    url: str = "https://api.microsoftmoderator.com/photodna/v1.0/Match"
    key: Secret = field(default_factory=Secret)
    enhance: bool = False
    rate: PosFloat = 5.0  # requests per second, shared by every call in the process
    burst: PosInt = 1  # requests allowed back to back; 1 keeps every 1 s window at or below ``rate``
    monthly_budget: PosInt = 10_000_000
    timeout: PosFloat = 10.0
    retries: NonNegInt = 4  # further attempts after a transient failure
    backoff: BackoffSection = field(default_factory=BackoffSection)
    max_retry_after: PosFloat = 120.0  # a longer Retry-After is capped to this
    circuit: CircuitSection = field(default_factory=CircuitSection)
    auth_retry_interval: PosFloat = 60.0  # while the key is refused, one probe request this often
    categories: tuple[CategoryRule, ...] = ()
    default_category: str = "child-protection"
    call_when_local_match: bool = False
    rescan: RescanSection = field(default_factory=RescanSection)
