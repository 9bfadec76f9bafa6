"""What is fetched, hashed and matched: fetch, thumbnail, local hash banks and PhotoDNA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field

from service.config.core import Secret
from service.config.values import NonNegFloat, NonNegInt, PosFloat, PosInt

ImageFormat = Literal["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"]  # what the decoder may be given
PDQ_THRESHOLD_MAX = 100  # PDQ's own recommendation is 31; 256 would match every image
# PDQ's eight dihedral variants, in the order of service.media.pdq.DIHEDRAL_VARIANTS (pdqhash's).
DihedralVariant = Literal[
    "original", "rotate90", "rotate180", "rotate270", "flip-x", "flip-y", "flip-plus1", "flip-minus1",
]
STANDARD_THUMB_WIDTHS = (20, 40, 60, 120, 250, 330, 500, 960, 1280, 1920, 3840)


@dataclass(frozen=True)
class FetchSection:
    # a standard thumbnail width.
    thumb_width: int = 330
    # minimum thumbnail side (PhotoDNA's minimum).
    min_side: PosInt = 160
    # byte cap for any download.
    max_bytes: PosInt = 50_000_000
    # also fetch originals (within the cap) for MD5 banks.
    originals: bool = False
    # per request.
    timeout: PosFloat = 30.0
    # per request.
    retries: NonNegInt = 3
    # per request.
    retry_delay: float = 1.0
    # `maxlag` sent on API requests (a lagged wiki is retried after `Retry-After`, at least 5 s); redirects followed,
    # each one checked against the allowlist.
    maxlag: NonNegInt = 5
    # `maxlag` sent on API requests (a lagged wiki is retried after `Retry-After`, at least 5 s); redirects followed,
    # each one checked against the allowlist.
    max_redirects: PosInt = 5
    # titles per imageinfo request (MediaWiki renders at most 50 thumbnails per request)
    batch_size: Annotated[int, Field(ge=1, le=50)] = 50


@dataclass(frozen=True)
class PdqViewsSection:
    # also hash the image with uniform or near-uniform borders and padding trimmed (any colour, JPEG noise and
    # gradients tolerated).
    trim_border: bool = True
    # also hash the image without a caption strip (a band of text on a flat background at the top or bottom).
    trim_caption: bool = True
    # also hash the image extended at every edge by each of these fractions of its sides (edge pixels repeated),
    # to catch copies cropped by a few percent per side (edges repeated up to 5 %, faded towards the mean beyond);
    # empty: no such views.
    uncrop: tuple[Annotated[float, Field(gt=0, le=0.25)], ...] = (0.025, 0.05, 0.07, 0.095, 0.125)
    # in uncrop views of more than 5 %, the margins fade from the image's edge towards its mean by this factor per
    # 64th of the side (1: the edge pixels are repeated).
    uncrop_fade: Annotated[float, Field(gt=0, le=1)] = 0.8
    # also hash the image extended on ONE side by each of these fractions of that side (four views each: top,
    # bottom, left, right; margins faded beyond 5 % as for `uncrop`), to catch copies cropped on one side; empty:
    # no such views.
    uncrop_sides: tuple[Annotated[float, Field(gt=0, le=0.25)], ...] = (0.04, 0.07, 0.11)
    # the same on two adjacent sides (four views each: top-left, top-right, bottom-left, bottom-right), to catch
    # copies cropped at one corner, e.g. [0.04, 0.07] (corners of 3-6 %); empty: no such views (the default: eight
    # views cost about 0.3 ms of CPU and 16 lookups per upload).
    uncrop_corners: tuple[Annotated[float, Field(gt=0, le=0.25)], ...] = ()
    # the dihedral variants of the one-sided and corner views that are matched (each is one more index lookup per
    # view): the picture as shown and mirrored left-right; add rotations to catch cropped rotated copies too.
    uncrop_sides_variants: Annotated[tuple[DihedralVariant, ...], Field(min_length=1)] = ("original", "flip-y")


NO_VIEWS = PdqViewsSection(trim_border=False, trim_caption=False, uncrop=(), uncrop_sides=(), uncrop_corners=())


@dataclass(frozen=True)
class ThumbnailSection:
    # larger images are `unscannable:decompression-bomb`.
    max_pixels: PosInt = 120_000_000
    # Width x height x bytes per pixel (all bands, all bit depths) above which an image is refused before
    # its pixels are decoded: converting it costs a few times this, which must fit the worker's memory ceiling.
    max_decoded_bytes: PosInt = 200_000_000
    # decoder allowlist.
    formats: tuple[ImageFormat, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
    # images are reduced (block means) to at most this many pixels a side before PDQ; the hash is still computed
    # as for the full-size image.
    pdq_max_side: PosInt = 512
    # JPEG for remote matchers.
    jpeg_min_side: PosInt = 160
    # JPEG for remote matchers.
    jpeg_max_bytes: PosInt = 4_000_000
    # JPEG for remote matchers.
    jpeg_quality: Annotated[int, Field(ge=1, le=95)] = 90
    make_jpeg: bool = False  # produce JPEG bytes for remote matchers (PhotoDNA turns this on)
    # derived views hashed besides the image as uploaded (each with its eight dihedral variants).
    views: PdqViewsSection = field(default_factory=PdqViewsSection)


ExchangeType = Literal["ncmec", "stopncii", "tcap", "threatexchange"]
BankFormat = Literal["auto", "csv", "jsonl"]


@dataclass(frozen=True)
class LabelCategory:
    """Maps one exchange label (an NCMEC classification, a ThreatExchange tag, a StopNCII tag) to a category."""

    label: str = ""  # the label as the exchange sends it, case-insensitive
    category: str = ""  # the service category entries with this label get


@dataclass(frozen=True)
class ExchangeSection:
    # `ncmec` (NCMEC hash sharing), `stopncii`, `tcap` (Tech Against Terrorism), `threatexchange` (Meta
    # ThreatExchange privacy group, how GIFCT-style lists are shared).
    type: ExchangeType = "ncmec"
    # the credentials, `{env: VAR}` or `{file: PATH}`: ncmec and tcap `user:password`; stopncii
    # `fetch_function_key,subscription_key`; threatexchange the Graph API access token.
    credentials: Secret = field(default_factory=Secret)
    # the API's base URL when not the exchange's own (a proxy or a test stand-in); its host must be in
    # `banks.allowed_hosts`.
    base_url: str = ""
    # NCMEC environment (`Industry`, `NGO`, `Exploitative`, ... as named by python-threatexchange).
    environment: str = "Industry"
    # ThreatExchange privacy group id.
    privacy_group: NonNegInt = 0
    # label -> category rules; the first rule naming one of an entry's labels wins, else the bank's `category`.
    categories: tuple[LabelCategory, ...] = ()


@dataclass(frozen=True)
class BankSection:
    # the bank's name (in matches, metrics and the `bank` commands).
    name: str = ""
    # a local bank file (CSV with header `hash,category,source,id`, or JSON lines); reloaded when it changes.
    path: str = ""
    # an https:// URL to a CSV or JSON-lines list, fetched every `interval` with ETag / If-Modified-Since; the host
    # must be in `banks.allowed_hosts`.
    url: str = ""
    # a hash-sharing exchange, fetched incrementally every `interval` through python-threatexchange.
    exchange: ExchangeSection | None = None
    # the category of entries that carry none (and of exchange entries no label rule maps).
    category: str = ""
    # PDQ Hamming distance (of 256 bits) at or below which a hash matches; at most 100 (more matches nearly anything).
    pdq_threshold: Annotated[int, Field(ge=0, le=PDQ_THRESHOLD_MAX)] = 31
    # `csv`, `jsonl` (one `{"hash","category","source","id"}` object per line) or `auto` (`.jsonl`/`.json`
    # files and URLs are JSON lines, the rest CSV).
    format: BankFormat = "auto"
    # seconds between syncs of a `url` or `exchange` bank.
    interval: PosFloat = 3600.0
    # the header carrying `auth` on `url` requests.
    auth_header: str = "Authorization"
    # the value of `auth_header` for `url` requests, `{env: VAR}` or `{file: PATH}` (e.g. `Bearer ...`); unset: none.
    auth: Secret = field(default_factory=Secret)

    @property
    def kind(self) -> str:
        """``file``, ``url`` or ``exchange``: where the bank's content comes from."""
        if self.exchange is not None:
            return "exchange"
        return "url" if self.url else "file"

    @property
    def location(self) -> str:
        """The file, the URL or the exchange type, for logs and ``bank list``."""
        if self.exchange is not None:
            return self.exchange.type
        return self.url or self.path

    @property
    def file_format(self) -> str:
        """``csv`` or ``jsonl``."""
        if self.format != "auto":
            return self.format
        where = (self.url or self.path).lower().split("?")[0]
        return "jsonl" if where.endswith((".jsonl", ".json", ".ndjson")) else "csv"


@dataclass(frozen=True)
class PdqViewThresholdsSection:
    # PDQ distance at or below which the border-trimmed view matches (a bank's lower pdq_threshold wins).
    trimmed_border: Annotated[int, Field(ge=0, le=PDQ_THRESHOLD_MAX)] = 31
    # PDQ distance at or below which the view without a caption strip matches (a bank's lower pdq_threshold wins).
    trimmed_caption: Annotated[int, Field(ge=0, le=PDQ_THRESHOLD_MAX)] = 31
    # PDQ distance at or below which an uncrop view matches (a bank's lower pdq_threshold wins).
    uncrop: Annotated[int, Field(ge=0, le=PDQ_THRESHOLD_MAX)] = 31


@dataclass(frozen=True)
class FloodGuardSection:
    # A bank change whose new hashes would match more than this many already-scanned files is quarantined: no
    # takedown, one alert email, the hits go to the review queue until `mediamoderation bank quarantine release`.
    max_hits: NonNegInt = 50


@dataclass(frozen=True)
class RetroSection:
    # match the hashes a bank gains against the stored hashes of every file already scanned.
    enabled: bool = True
    # new hashes matched per step; the delta's progress is stored after each step (steps are at least 5,000
    # hashes while rotated / mirrored variants are stored: each step reads all of them once).
    batch: PosInt = 200
    # share of one core the PDQ search may take, by its own CPU time (it runs in a process of its own and pauses
    # between slices of work), so live scanning keeps its pace; it does not wait when it got less.
    cpu_share: Annotated[float, Field(gt=0, le=1)] = 0.1
    # seconds between writes of scanned files' hashes (written in batches, off the scanning path).
    flush_interval: PosFloat = 1.0
    # seconds between looks for newly stored file PDQ hashes (for the index) and released deltas.
    refresh_interval: PosFloat = 10.0


@dataclass(frozen=True)
class BanksSection:
    reload_interval: NonNegFloat = 10.0  # seconds between checks of the bank files for changes; 0: never
    # PDQ hashes of lower quality are not matched (each derived view is checked on its own).
    pdq_quality_min: Annotated[int, Field(ge=0, le=100)] = 50
    # per-view PDQ thresholds for the derived views of `thumbnail.views`.
    view_thresholds: PdqViewThresholdsSection = field(default_factory=PdqViewThresholdsSection)
    list: tuple[BankSection, ...] = ()
    # hosts `url` banks and exchange `base_url`s may be fetched from: `host` (port 443) or `host:port`.
    allowed_hosts: tuple[str, ...] = ()
    # largest list a `url` bank may download, in bytes.
    max_bytes: PosInt = 1_000_000_000
    # seconds per request to a `url` bank.
    timeout: PosFloat = 60.0
    # first retry delay (seconds) after a failed sync; doubles per failure up to the bank's `interval`.
    retry_delay: PosFloat = 30.0
    flood_guard: FloodGuardSection = field(default_factory=FloodGuardSection)
    retro: RetroSection = field(default_factory=RetroSection)


@dataclass(frozen=True)
class BackoffSection:
    # exponential backoff with jitter between attempts (a `Retry-After` wins).
    initial_delay: float = 0.5
    # exponential backoff with jitter between attempts (a `Retry-After` wins).
    max_delay: float = 30.0


@dataclass(frozen=True)
class CircuitSection:
    failures: PosInt = 10  # consecutive transient failures that open the circuit
    open_seconds: float = 30.0  # pause before one trial request (doubles while trials fail)
    # circuit breaker: consecutive transient failures that pause calls; pause before a trial request; longest pause.
    max_open_seconds: float = 300.0


@dataclass(frozen=True)
class CategoryRule:
    """Maps a PhotoDNA MatchFlag to a service category; the first rule that fits wins."""

    category: str = ""
    source: str | None = None  # the flag's Source (hash list), case-insensitive; None: any
    violations: tuple[str, ...] = ()  # any of these in the flag's Violations; empty: any


@dataclass(frozen=True)
class RescanSection:
    # re-scan old clean content (failed scans are retried regardless).
    enabled: bool = True
    age_days: PosFloat = 90.0  # re-scan files PhotoDNA found clean this long ago
    interval: PosFloat = 60.0  # seconds between rescan/retry rounds
    batch: PosInt = 100  # files per round at most
    # items per round; concurrent items.
    concurrency: PosInt = 2
    budget_reserve: Annotated[float, Field(ge=0, lt=1)] = 0.1  # share of the monthly budget rescans never touch
    # Failed scans are retried after these delays (seconds), by number of failures; the last repeats.
    retry_delays: Annotated[tuple[PosFloat, ...], Field(min_length=1)] = (60.0, 300.0, 1800.0, 7200.0, 21600.0)


@dataclass(frozen=True)
class PhotoDnaSection:
    # ask PhotoDNA about every upload the local banks did not match.
    enabled: bool = False
    # the Match endpoint.
    url: str = "https://api.microsoftmoderator.com/photodna/v1.0/Match"
    # the subscription key: `{env: VAR}` or `{file: PATH}` (re-read, so it can be rotated); never in the YAML.
    key: Secret = field(default_factory=Secret)
    # PhotoDNA's `enhance` query parameter (broader matching, slower).
    enhance: bool = False
    rate: PosFloat = 5.0  # requests per second, shared by every call in the process
    burst: PosInt = 1  # requests allowed back to back; 1 keeps every 1 s window at or below ``rate``
    # requests per UTC calendar month, never exceeded, survives restarts.
    monthly_budget: PosInt = 10_000_000
    # seconds per request.
    timeout: PosFloat = 10.0
    retries: NonNegInt = 4  # further attempts after a transient failure
    backoff: BackoffSection = field(default_factory=BackoffSection)
    max_retry_after: PosFloat = 120.0  # a longer Retry-After is capped to this
    circuit: CircuitSection = field(default_factory=CircuitSection)
    auth_retry_interval: PosFloat = 60.0  # while the key is refused, one probe request this often
    # `{category, source, violations}` rules mapping a MatchFlag to a category; `source` (case-insensitive) and
    # `violations` (any of) are optional; the first rule that fits wins.
    categories: tuple[CategoryRule, ...] = ()
    # the category when no rule fits.
    default_category: str = "child-protection"
    # also ask PhotoDNA when a local bank already matched (local matches are still acted on first).
    call_when_local_match: bool = False
    rescan: RescanSection = field(default_factory=RescanSection)
