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
import hashlib
import io
import logging
from dataclasses import dataclass, field

import numpy as np

from service.config.media import VideoSection, VpdqBankSection
from service.errors import BankError
from service.matchers.banks import FileStat, file_stat, pdq_scan, watch_files
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
    """Matches video uploads' frame signatures against the configured vPDQ banks.

    The files are read at start (a bad file then stops the start) and re-read when they change
    (:meth:`reload_if_changed`, run by :meth:`watch`); a bad file met on reload keeps that bank's previous
    content, logged and counted in ``mediamoderation_bank_reloads_total{result="error"}``."""

    name = "vpdq"

    def __init__(self, cfg: VideoSection, metrics: Metrics) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self.banks: list[VpdqBank] = []
        self._stats: dict[str, FileStat | None] = {}
        self._digests: dict[str, str] = {}  # of the file content last seen (loaded or refused)
        self._content: dict[str, str] = {}  # of the file content loaded
        for section in cfg.vpdq_banks:
            stat, data = self._read(section)
            bank = parse_vpdq_bank(section, data, quality_min=cfg.quality_min)
            self._stats[section.name], self._digests[section.name] = stat, hashlib.sha256(data).hexdigest()
            self._content[section.name] = self._digests[section.name]
            self._loaded(bank, "loaded")
            self.banks.append(bank)
        self._version = self._compute_version()

    @property
    def version(self) -> str:
        """Changes when a bank's loaded content or match settings change: part of the scan version, so that a
        new or changed vPDQ bank makes already scanned videos be looked at again (not reused from the cache)."""
        return self._version

    def _compute_version(self) -> str:
        h = hashlib.sha256(f"quality_min={self._cfg.quality_min}\n".encode())
        for bank in self.banks:
            c = bank.config
            h.update(f"{c.name}\0{c.category}\0{c.pdq_threshold}\0{c.query_match_pct}\0{c.candidate_match_pct}\0"
                     f"{self._content.get(c.name, '')}\n".encode())
        return h.hexdigest()[:16]

    @staticmethod
    def _read(section: VpdqBankSection) -> tuple[FileStat, bytes]:
        try:
            stat = file_stat(section.path)
            with open(section.path, "rb") as f:
                return stat, f.read()
        except OSError as exc:
            raise BankError(f"{section.path}: cannot read vPDQ bank {section.name!r}: {exc}") from exc

    def _loaded(self, bank: VpdqBank, verb: str) -> None:
        name = bank.config.name
        self._metrics.vpdq_videos.labels(name).set(len(bank.videos))
        self._metrics.bank_reloads.labels(name, verb).inc()
        log.info("vPDQ bank %s %s: %d videos", name, verb, len(bank.videos))

    def reload_if_changed(self) -> bool:
        """Re-read the bank files that changed (stat, then content digest).  True if any bank changed."""
        changed = False
        banks = list(self.banks)
        for i, bank in enumerate(banks):
            section = bank.config
            try:
                stat: FileStat | None = file_stat(section.path)
            except OSError as exc:
                self._failed(section, None, f"cannot stat {section.path}: {exc}")
                continue
            if stat == self._stats.get(section.name):
                continue
            try:
                stat, data = self._read(section)
                digest = hashlib.sha256(data).hexdigest()
                if digest == self._digests.get(section.name):  # touched only
                    self._stats[section.name] = stat
                    continue
                self._digests[section.name] = digest  # a bad content is reported once
                banks[i] = parse_vpdq_bank(section, data, quality_min=self._cfg.quality_min)
            except BankError as exc:
                self._failed(section, stat, str(exc))
                continue
            self._stats[section.name] = stat
            self._content[section.name] = digest
            self._loaded(banks[i], "reloaded")
            changed = True
        if changed:
            self.banks = banks  # one assignment: a match in progress keeps the list it started with
            self._version = self._compute_version()
        return changed

    def _failed(self, section: VpdqBankSection, stat: FileStat | None, why: str) -> None:
        if stat != self._stats.get(section.name):  # report each bad state once, not on every check
            log.error("vPDQ bank %s: reload failed, keeping the previous content: %s", section.name, why)
            self._metrics.bank_reloads.labels(section.name, "error").inc()
        self._stats[section.name] = stat

    async def watch(self, interval: float, stop: asyncio.Event) -> None:
        """Check for changed files every ``interval`` seconds until ``stop`` is set (0 disables)."""
        await watch_files(self.reload_if_changed, interval, stop)

    async def match(self, media: PreparedMedia) -> list[Match]:
        if media.kind != "video" or not media.frames or not self.banks:
            return []
        return await asyncio.to_thread(self._match, media.frames)

    def _match(self, frames: tuple[FrameHash, ...]) -> list[Match]:
        return [m for bank in self.banks for m in match_bank(bank, frames)]

    async def aclose(self) -> None:
        return None
