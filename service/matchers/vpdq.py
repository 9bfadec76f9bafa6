"""vPDQ: a video's sampled-frame signature against banks of known videos' signatures.

Bank file format (UTF-8 CSV, one header line, one row per frame; the rows of one video share its ``id``)::

    id,category,source,frame_number,quality,pdq,timestamp
    video-1,,example,0,100,f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22,0.000
    video-1,,example,25,98,0c0f...,1.000

The last four columns are the reference ``vpdq`` hasher's output line (``frame_number,quality,pdq_hex,
timestamp``), so a reference signature file becomes a bank by prefixing each line with ``id,category,
source,``.  An empty category means the bank's configured category.

Match rule (the reference's): frames below the quality threshold are dropped and each side is treated as
an unordered bag of distinct hashes; *query-matched* is the share of the upload's distinct hashes within
``pdq_threshold`` of some hash of the bank video, *candidate-matched* the share of the bank video's hashes
within ``pdq_threshold`` of some hash of the upload.  The video matches when both reach the bank's
``query_match_pct`` and ``candidate_match_pct``.  Candidates are first pruned with a
:class:`~service.matchers.pdq_index.PdqIndex` of every bank frame: only videos with at least one frame
near the upload's frames are compared in full.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from dataclasses import dataclass, field

import numpy as np

from service.config.media import VideoSection, VpdqBankSection
from service.errors import BankError
from service.matchers.banks import pdq_scan
from service.matchers.pdq_index import PdqIndex
from service.metrics import Metrics
from service.models import FrameHash, Match, PreparedMedia

log = logging.getLogger(__name__)

HEADER = ("id", "category", "source", "frame_number", "quality", "pdq", "timestamp")
MAX_LISTED = 50


@dataclass(frozen=True)
class VpdqVideo:
    id: str
    category: str
    source: str
    words: np.ndarray = field(repr=False)  # (4, N) uint64, distinct hashes
    frames: int  # rows in the file (before de-duplication)


@dataclass(frozen=True)
class VpdqBank:
    config: VpdqBankSection
    videos: tuple[VpdqVideo, ...]
    index: PdqIndex = field(repr=False)  # every distinct frame hash, id = (video number << 20) | frame row


def words_of(hashes: list[bytes]) -> np.ndarray:
    """Distinct 32-byte hashes as (4, N) uint64 words (the layout of ``pdq_scan``)."""
    distinct = sorted(set(hashes))
    return np.frombuffer(b"".join(distinct), dtype=np.uint64).reshape(-1, 4).T.copy()


def parse_vpdq_bank(config: VpdqBankSection, data: bytes, *, quality_min: int = 50) -> VpdqBank:
    """Parse one vPDQ bank file; raise :class:`BankError` naming the file and line of any problem."""
    where = config.path or config.name
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BankError(f"{where}: not UTF-8 text (byte {exc.start})") from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: dict[str, tuple[str, str, list[bytes], list[int]]] = {}
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip().lower() for h in header) != HEADER:
            raise BankError(f"{where}:1: header must be {','.join(HEADER)}")
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(HEADER):
                raise BankError(f"{where}:{line}: expected {len(HEADER)} fields, got {len(row)}")
            vid, category, source, _frame, quality_text, pdq, _ts = (c.strip() for c in row)
            try:
                quality = int(quality_text)
                value = bytes.fromhex(pdq)
            except ValueError as exc:
                raise BankError(f"{where}:{line}: bad quality or PDQ hex ({exc})") from exc
            if not vid or len(value) != 32:
                raise BankError(f"{where}:{line}: an id and a 64-hex-digit PDQ are required")
            entry = rows.setdefault(vid, (category or config.category, source, [], [0]))
            entry[3][0] += 1
            if quality >= quality_min:
                entry[2].append(value)
    except csv.Error as exc:
        raise BankError(f"{where}:{reader.line_num}: {exc}") from exc
    videos = tuple(VpdqVideo(vid, cat, src, words_of(hashes), count[0])
                   for vid, (cat, src, hashes, count) in rows.items() if hashes)
    index = PdqIndex()
    for n, video in enumerate(videos):
        k = video.words.shape[1]
        index.add((n << 20) | np.arange(k, dtype=np.int64), video.words.T)
    return VpdqBank(config=config, videos=videos, index=index)


def match_bank(bank: VpdqBank, frames: tuple[FrameHash, ...]) -> list[Match]:
    """The bank's videos that ``frames`` (the upload's signature) matches under the reference rule."""
    if not frames or not bank.videos:
        return []
    cfg = bank.config
    query = words_of([f.pdq for f in frames])
    candidates = sorted({vid >> 20 for vid, _, _ in bank.index.query(query.T, cfg.pdq_threshold)})
    out: list[Match] = []
    for n in candidates:
        video = bank.videos[n]
        cand_hit = pdq_scan(video.words, query.T.copy(), cfg.pdq_threshold)  # candidate hashes near the query
        query_hit = pdq_scan(query, video.words.T.copy(), cfg.pdq_threshold)  # query hashes near the candidate
        cand_pct = 100.0 * len(cand_hit) / video.words.shape[1]
        query_pct = 100.0 * len(query_hit) / query.shape[1]
        if cand_pct < cfg.candidate_match_pct or query_pct < cfg.query_match_pct:
            continue
        matched_hashes = {query[:, i].tobytes() for i in query_hit}
        where = sorted((f.timestamp, f.frame_number) for f in frames if f.pdq in matched_hashes)
        best = min(d for d, _ in cand_hit.values())
        out.append(Match(
            matcher="vpdq", bank=cfg.name, category=video.category, hash_id=video.id, hash_value="",
            distance=best, source=video.source or None,
            details={
                "media": "video",
                "query_matched_pct": round(query_pct, 1),
                "candidate_matched_pct": round(cand_pct, 1),
                "frames_matched": len(where),
                "frames_hashed": len(frames),
                "candidate_frames": video.frames,
                "offsets": [t for t, _ in where[:MAX_LISTED]],
                "frame_numbers": [n for _, n in where[:MAX_LISTED]],
                "threshold": cfg.pdq_threshold,
            },
        ))
    return out


class VpdqMatcher:
    """Matches video uploads' frame signatures against the configured vPDQ banks (loaded at start)."""

    name = "vpdq"

    def __init__(self, cfg: VideoSection, metrics: Metrics) -> None:
        self.banks: list[VpdqBank] = []
        for section in cfg.vpdq_banks:
            try:
                with open(section.path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise BankError(f"{section.path}: cannot read vPDQ bank {section.name!r}: {exc}") from exc
            bank = parse_vpdq_bank(section, data, quality_min=cfg.quality_min)
            metrics.vpdq_videos.labels(section.name).set(len(bank.videos))
            log.info("vPDQ bank %s: %d videos", section.name, len(bank.videos))
            self.banks.append(bank)

    async def match(self, media: PreparedMedia) -> list[Match]:
        if media.kind != "video" or not media.frames or not self.banks:
            return []
        return await asyncio.to_thread(self._match, media.frames)

    def _match(self, frames: tuple[FrameHash, ...]) -> list[Match]:
        return [m for bank in self.banks for m in match_bank(bank, frames)]

    async def aclose(self) -> None:
        return None
