"""Plain data passed between stages.  Everything here is immutable or owned by one stage at a time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

LOG_ACTIONS = ("upload", "overwrite", "revert")


@dataclass(frozen=True, slots=True)
class RawEvent:
    """What a source yields: the undecoded event and the source position just after it.

    ``position`` is opaque to the pipeline and JSON-serialisable; it becomes the checkpoint once
    this event and every event before it have finished the pipeline.
    """

    data: str | bytes
    position: Any
    label: str = ""  # human-readable position for logs, e.g. "offset 42"
    problem: str | None = None  # the source already found it malformed (e.g. "too-large", discarded unread)


@dataclass(frozen=True, slots=True)
class UploadEvent:
    """One file upload, overwrite or revert, parsed from a recentchange event."""

    event_id: str
    wiki: str
    title: str  # "File:Name.jpg"
    server_url: str
    page_url: str
    uploader: str | None
    upload_time: datetime
    log_action: str  # upload / overwrite / revert
    sha1: str | None  # 40 hex digits, converted from the event's base 36
    position: Any = None

    @property
    def file_name(self) -> str:
        return self.title.split(":", 1)[1] if ":" in self.title else self.title


@dataclass(frozen=True, slots=True)
class FileInfo:
    """The parts of ``prop=imageinfo`` the service uses."""

    title: str
    url: str
    description_url: str
    sha1: str
    size: int
    width: int
    height: int
    mime: str
    mediatype: str
    thumb_url: str | None = None
    thumb_width: int | None = None
    thumb_height: int | None = None
    pagecount: int = 1  # pages of a PDF, DjVu or multi-page TIFF


# What kind of media an upload is, for the decode step and the outcome (see docs/media-coverage.md).
KIND_IMAGE = "image"  # still or animated image, SVG (the wiki's PNG rendering)
KIND_DOCUMENT = "document"  # PDF, DjVu, multi-page TIFF: the wiki's page thumbnails
KIND_VIDEO = "video"  # the original, streamed to a temporary file and decoded in the decode pool
KIND_AUDIO = "audio"  # exact MD5 / SHA-1 only


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    info: FileInfo
    data: bytes  # the bytes to decode: thumbnail, or the original when no thumbnail could be had
    data_source: str  # "thumbnail" or "original"
    original_md5: str | None = None  # MD5 of the original, when the original was fetched
    kind: str = KIND_IMAGE
    path: str | None = None  # video: the original, streamed to this temporary file (deleted after decoding)
    pages: tuple[tuple[int, bytes], ...] = ()  # documents: (page number, thumbnail bytes) of pages after the first


@dataclass(frozen=True, slots=True)
class FrameHash:
    """The PDQ of one sampled video or animation frame, or of one document page (vPDQ's per-frame record)."""

    frame_number: int  # video/animation: index of the decoded frame; document: the page number
    timestamp: float  # seconds from the start (0 for document pages)
    pdq: bytes  # 32 bytes, standard PDQ hex order
    quality: int


@dataclass(frozen=True, slots=True)
class PdqSignal:
    """PDQ hashes of all eight dihedral variants (index 0 is the image as shown) and the quality, of the
    image as uploaded (``view`` "original") or of a derived view (service.media.views).  A view may keep only
    some variants (the one-sided uncrop views): ``variants`` then says which (indexes into
    ``DIHEDRAL_VARIANTS``), one per hash."""

    hashes: tuple[bytes, ...]  # 32 bytes each
    quality: int
    view: str = "original"
    variants: tuple[int, ...] = ()  # empty: the hashes are the variants in DIHEDRAL_VARIANTS order

    def variant_of(self, row: int) -> int:
        """The index in ``DIHEDRAL_VARIANTS`` of ``hashes[row]``."""
        return self.variants[row] if self.variants else row

    def __reduce__(self) -> tuple[type[PdqSignal], tuple[tuple[bytes, ...], int, str, tuple[int, ...]]]:
        # Pickled by its fields in order: a prepared image carries some twenty of these from the decode worker,
        # and the dataclass's own state methods (a field lookup per object) cost three times as much.
        return PdqSignal, (self.hashes, self.quality, self.view, self.variants)

    @property
    def hex(self) -> str:
        return self.hashes[0].hex()


@dataclass(frozen=True, slots=True)
class PreparedMedia:
    """The thumbnail stage's output: signals for the matchers, no pixels kept."""

    sha1: str
    md5: str | None
    pdq: PdqSignal | None
    jpeg: bytes | None  # >= 160 x 160, < 4 MB, for remote matchers such as PhotoDNA
    width: int
    height: int
    source: str = "thumbnail"
    kind: str = KIND_IMAGE
    frames: tuple[FrameHash, ...] = ()  # sampled frames (video, animation) or further pages (document)
    frames_sampled: int = 0  # frames hashed, including those below the quality threshold
    duration: float | None = None  # seconds (video, animation)
    keyframes: tuple[tuple[float, bytes], ...] = ()  # video: (time, JPEG) of the best frames for remote matchers
    pdq_views: tuple[PdqSignal, ...] = ()  # derived views (borders trimmed, ...) that passed the quality gate

    @property
    def pdq_signals(self) -> tuple[PdqSignal, ...]:
        """The image's PDQ signal first, then its derived views' (empty when there is no PDQ)."""
        return () if self.pdq is None else (self.pdq, *self.pdq_views)


@dataclass(frozen=True, slots=True)
class Match:
    """One hit of one matcher against one bank entry."""

    matcher: str  # sha1 / md5 / pdq / photodna
    bank: str
    category: str
    hash_id: str
    hash_value: str
    distance: int | None = None
    source: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Stable identity of this hit, independent of which upload produced it."""
        return f"{self.matcher}:{self.bank}:{self.hash_id or self.hash_value}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "matcher": self.matcher,
            "bank": self.bank,
            "category": self.category,
            "hash_id": self.hash_id,
            "hash_value": self.hash_value,
            "distance": self.distance,
            "source": self.source,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Match:
        return cls(
            matcher=d["matcher"],
            bank=d["bank"],
            category=d["category"],
            hash_id=d.get("hash_id", ""),
            hash_value=d.get("hash_value", ""),
            distance=d.get("distance"),
            source=d.get("source"),
            details=d.get("details") or {},
        )


def where_matched(details: Mapping[str, Any]) -> str | None:
    """Where in a video, animation or document a match was found, for emails and the review page:
    ``"video at 4.0 s, 5.0 s, 6.0 s (3 of 11 sampled frames)"``, ``"document page 2"``; None for images."""
    media = details.get("media")
    if media is None:
        return None
    pages = details.get("pages")
    if isinstance(pages, list | tuple) and pages:
        return f"{media} page{'s' if len(pages) > 1 else ''} " + ", ".join(str(int(p)) for p in pages)
    offsets = details.get("offsets")
    if not isinstance(offsets, list | tuple) or not offsets:
        return None
    text = f"{media} at " + ", ".join(f"{float(t):.1f} s" for t in offsets[:10])
    if len(offsets) > 10:
        text += ", ..."
    matched, hashed = details.get("frames_matched"), details.get("frames_hashed")
    if isinstance(matched, int) and isinstance(hashed, int):
        text += f" ({matched} of {hashed} sampled frames)"
    return text


# Outcome strings: "clean", "match", "gone", "unscannable:<reason>", "error:<reason>".
CLEAN = "clean"
CLEAN_EXACT_ONLY = "clean:exact-only"  # audio: only exact hashes exist to match against (no perceptual lists)
MATCH = "match"
GONE = "gone"


def unscannable(reason: str) -> str:
    return f"unscannable:{reason}"


def error(reason: str) -> str:
    return f"error:{reason}"
