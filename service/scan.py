"""``mediamoderation scan FILE...``: hash local files and match them against the configured banks.

Useful to check a bank file, to see what the service would decide for a file, and to produce the
hashes of a file for a bank.  One JSON-able dict per file; a missing file or a bad file gives an
outcome, never an exception.

Each file gets what an upload of its kind gets in the service, with the pipeline's own media code and
the ``media`` config (see docs/media-coverage.md):

* image: PDQ of the picture; an animated GIF / WebP / APNG also its frames sampled by time, a multi-page
  TIFF its further pages (:func:`~service.media.frames.prepare_frames`);
* video: frames sampled and PDQ-hashed (:func:`~service.media.video.prepare_video`), matched against the
  image banks and the vPDQ banks;
* audio: exact MD5 / SHA-1 only (``clean:exact-only`` when nothing matched);
* PDF, DjVu, SVG: exact hashes only.  The service never renders them: their pages are matched only
  through a wiki's rendering, so without an exact match the outcome is
  ``unscannable:needs-wiki-rendering`` (exit code 3), never ``clean``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

from service.config import Config, ThumbnailSection
from service.errors import Unscannable
from service.matchers.banks import BankSet
from service.matchers.frames import match_frames
from service.matchers.vpdq import VpdqMatcher, match_bank
from service.media.frames import prepare_frames
from service.media.thumbnail import prepare
from service.media.video import prepare_video
from service.metrics import Metrics
from service.models import (
    CLEAN,
    CLEAN_EXACT_ONLY,
    KIND_AUDIO,
    KIND_DOCUMENT,
    KIND_IMAGE,
    KIND_VIDEO,
    MATCH,
    Match,
    PreparedMedia,
    error,
    unscannable,
)

NEEDS_WIKI = "needs-wiki-rendering"
_SNIFF_BYTES = 4096


def sniff(head: bytes) -> str:
    """What the file is, from its first bytes: ``image``, ``video`` (any audio/video container: the decoder says
    which), ``audio`` (formats without a decodable picture, such as MIDI) or ``pdf`` / ``djvu`` / ``svg``."""
    if head.startswith(b"%PDF"):
        return "pdf"
    if head.startswith(b"AT&TFORM"):
        return "djvu"
    if head.startswith(b"MThd") or (head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC")):
        return KIND_AUDIO
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<") and b"<svg" in text:
        return "svg"
    containers = (b"\x1a\x45\xdf\xa3", b"OggS", b"fLaC", b"ID3", b"FLV", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3",
                  b"\x30\x26\xb2\x75")
    if head.startswith(containers) or (head.startswith(b"RIFF") and head[8:12] in (b"WAVE", b"AVI ")):
        return KIND_VIDEO
    if head[4:8] == b"ftyp" and head[8:12] not in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
        return KIND_VIDEO  # MP4, QuickTime, 3GP (not the HEIF / AVIF still-image brands)
    if len(head) > 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return KIND_VIDEO  # an MPEG audio frame (MP3 without ID3); JPEG's FF D8 has no layer bits
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return KIND_VIDEO  # MPEG transport stream
    return KIND_IMAGE


def scan_paths(paths: list[str], cfg: Config, *, banks: BankSet | None = None,
               vpdq: VpdqMatcher | None = None) -> Iterator[dict[str, Any]]:
    """Yield one result per path, in order.  Loading the banks (image banks, and the vPDQ banks when ``vpdq`` is
    not given) may raise :class:`BankError`."""
    banks = banks or BankSet(cfg.banks, Metrics(), views=cfg.thumbnail.views)
    if vpdq is None and cfg.media.video.vpdq_banks:
        vpdq = VpdqMatcher(cfg.media.video, Metrics())
    thumb_cfg = dataclasses.replace(cfg.thumbnail, make_jpeg=False)
    for path in paths:
        yield _scan_one(path, cfg, thumb_cfg, banks, vpdq)


def _scan_one(path: str, cfg: Config, thumb_cfg: ThumbnailSection, banks: BankSet,
              vpdq: VpdqMatcher | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "file": path, "kind": None, "size": None, "sha1": None, "md5": None, "pdq": None, "pdq_quality": None,
        "width": None, "height": None, "frames_hashed": None, "duration": None, "matches": [], "outcome": "",
        "detail": None,
    }
    sha1, md5, size = hashlib.sha1(), hashlib.md5(), 0
    data = bytearray()  # the bytes to decode (images), kept only up to the size limit
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
            what = sniff(head)
            limit = cfg.media.video.max_bytes if what == KIND_VIDEO else cfg.fetch.max_bytes
            keep = what == KIND_IMAGE
            chunk = head
            while chunk:
                sha1.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                if keep and size <= limit:
                    data += chunk
                chunk = f.read(1 << 20)
    except FileNotFoundError:
        return result | {"outcome": error("not-found"), "detail": "no such file"}
    except OSError as exc:
        return result | {"outcome": error("unreadable"), "detail": exc.strerror or str(exc)}

    result.update(size=size, sha1=sha1.hexdigest(), md5=md5.hexdigest())
    matches: list[Match] = banks.match_sha1(result["sha1"]) + banks.match_md5(result["md5"])
    try:
        if what in ("pdf", "djvu", "svg"):
            result["kind"] = KIND_DOCUMENT if what != "svg" else KIND_IMAGE
            raise Unscannable(NEEDS_WIKI, f"{what.upper()} is matched perceptually only through a wiki's rendering "
                                          "(the service never renders it); exact hashes were checked")
        if size > limit:
            raise Unscannable("too-large", f"{size} bytes, more than {limit}")
        if what == KIND_AUDIO or (what == KIND_VIDEO and not cfg.media.video.enabled):
            result.update(kind=what, outcome=CLEAN_EXACT_ONLY)
        elif what == KIND_VIDEO:
            media = prepare_video(path, result["sha1"], result["md5"], cfg.media.video, thumb_cfg)
            matches += _perceptual(media, banks, vpdq)
            result.update(outcome=CLEAN_EXACT_ONLY if media.kind == KIND_AUDIO else CLEAN)
            _describe(result, media)
        else:
            media = prepare_frames(prepare, bytes(data), result["sha1"], thumb_cfg, result["md5"], "original",
                                   cfg.media.animation, (), cfg.media.documents)
            matches += _perceptual(media, banks, vpdq)
            result.update(outcome=CLEAN)
            _describe(result, media)
    except Unscannable as exc:
        result.update(outcome=unscannable(exc.reason), detail=exc.detail or None)
        result["kind"] = result["kind"] or (what if what in (KIND_VIDEO, KIND_AUDIO) else KIND_IMAGE)
    result["matches"] = [m.to_dict() for m in _distinct(matches)]
    if matches:
        result["outcome"] = MATCH  # an exact match counts even when the file cannot be decoded
    return result


def _perceptual(media: PreparedMedia, banks: BankSet, vpdq: VpdqMatcher | None) -> list[Match]:
    """The matches the pipeline's local matchers would find: the picture (and its views), each sampled frame or
    page against the image banks, a video's signature against the vPDQ banks."""
    found = banks.match_pdq_signals(media.pdq_signals) if media.pdq is not None else []
    if media.frames:
        found += match_frames(banks, media)
    if vpdq is not None and media.kind == KIND_VIDEO and media.frames:
        found += [m for bank in vpdq.banks for m in match_bank(bank, media.frames)]
    return found


def _describe(result: dict[str, Any], media: PreparedMedia) -> None:
    result.update(kind=media.kind, width=media.width or None, height=media.height or None,
                  frames_hashed=media.frames_sampled or None, duration=media.duration)
    if media.pdq is not None:
        result.update(pdq=media.pdq.hex, pdq_quality=media.pdq.quality)


def _distinct(matches: list[Match]) -> list[Match]:
    """Each match once, by its key, as the pipeline merges its matchers' results."""
    seen: set[str] = set()
    out = []
    for m in matches:
        if m.key not in seen:
            seen.add(m.key)
            out.append(m)
    return out
