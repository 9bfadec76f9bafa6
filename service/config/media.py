"""What video, animations, documents and audio get: sampling rates, caps, budgets, vPDQ banks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field

from service.config.values import NonNegInt, PosFloat, PosInt

Percent = Annotated[float, Field(ge=0, le=100)]


@dataclass(frozen=True)
class VpdqBankSection:
    # one vPDQ bank file (CSV `id,category,source,frame_number,quality,pdq,timestamp`, one row per frame);
    # the category applies to rows with an empty category.
    name: str = ""
    # one vPDQ bank file (CSV `id,category,source,frame_number,quality,pdq,timestamp`, one row per frame);
    # the category applies to rows with an empty category.
    path: str = ""
    # one vPDQ bank file (CSV `id,category,source,frame_number,quality,pdq,timestamp`, one row per frame);
    # the category applies to rows with an empty category.
    category: str = ""
    # PDQ distance at or below which two frames match (vPDQ's reference: 31).
    pdq_threshold: Annotated[int, Field(ge=0, le=100)] = 31
    # share (%) of the upload's distinct frames that must match a frame of the bank video.
    query_match_pct: Percent = 0.0
    # share (%) of the bank video's distinct frames that must match a frame of the upload.
    candidate_match_pct: Percent = 80.0


@dataclass(frozen=True)
class VideoSection:
    # stream, decode and hash video originals; off: video gets the exact banks only (`clean:exact-only`).
    enabled: bool = True
    # largest original streamed (bytes); larger ones end `unscannable:too-large` (checked before and while streaming).
    max_bytes: PosInt = 1_000_000_000
    # longest video decoded (seconds, from the container); longer ones end `unscannable:too-long`.
    max_duration: PosFloat = 4 * 3600.0
    # largest frame decoded (width x height); larger ones end `unscannable:too-large-decoded`.
    max_frame_pixels: PosInt = 8192 * 4320
    # seconds of CPU time for decoding one file (and at most 3 times that in wall time); past it the file ends
    # `unscannable:decode-timeout`.  A decoder that does not return control is killed at twice this CPU time
    # and the file ends `unscannable:decoder-crashed`.
    decode_budget: PosFloat = 300.0
    # frames sampled per second of video (vPDQ samples 1).
    sample_rate: PosFloat = 1.0
    # at most this many frames are hashed per file (then sampling stops: the rest is not looked at).
    max_frames: PosInt = 3600
    # sampled frames are reduced to this before PDQ.
    frame_max_side: PosInt = 512
    # frames of at least this PDQ quality are kept (vPDQ's reference: 50).
    quality_min: Annotated[int, Field(ge=0, le=100)] = 50
    # where PhotoDNA is enabled: up to this many distinct frames of the highest PDQ quality are sent, best first,
    # until one matches (each is one request of the budget); 0: videos are not sent.
    photodna_keyframes: NonNegInt = 3
    # vPDQ banks the whole video is matched against (frames are also matched against the image PDQ banks).
    vpdq_banks: tuple[VpdqBankSection, ...] = ()


@dataclass(frozen=True)
class AnimationSection:
    # animated GIF, PNG (APNG) and WebP: frames sampled per second of animation.
    sample_rate: PosFloat = 1.0
    # animated GIF, PNG (APNG) and WebP: at most this many frames hashed per file.
    max_frames: PosInt = 60
    # GIF and WebP originals up to this size are decoded from the original (all frames) instead of the wiki's
    # thumbnail (which may show the first frame only); 0: thumbnails only.  PNG always uses the thumbnail.
    original_max_bytes: NonNegInt = 5_000_000


@dataclass(frozen=True)
class DocumentSection:
    # PDF, DjVu, multi-page TIFF: besides page 1, the wiki's thumbnails of this many further pages are matched.
    extra_pages: NonNegInt = 4
    # TIFF originals up to this size (bytes, and at most `fetch.max_bytes`) are fetched and their pages decoded by the
    # service (Pillow, in the decode pool), pages 2 .. 1 + `extra_pages` hashed besides page 1: without
    # PagedTiffHandler a wiki renders page 1 only.  0: TIFF is judged by the wiki's thumbnails only.
    tiff_original_max_bytes: NonNegInt = 50_000_000
    # a TIFF with more pages than this ends `unscannable:too-many-pages` (only the page headers are read to count).
    tiff_max_pages: PosInt = 1000
    # seconds of CPU time for counting and decoding the pages of one TIFF; past it the file ends
    # `unscannable:decode-timeout`.
    tiff_decode_budget: PosFloat = 60.0


@dataclass(frozen=True)
class MediaSection:
    video: VideoSection = field(default_factory=VideoSection)
    animation: AnimationSection = field(default_factory=AnimationSection)
    documents: DocumentSection = field(default_factory=DocumentSection)
