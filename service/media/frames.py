"""More than one picture per upload: animation frames sampled by time, and further document pages.

:func:`prepare_frames` runs in the decode pool like :func:`service.media.thumbnail.prepare` (which it
calls for the picture shown, so a still image is judged exactly as before) and adds
:attr:`~service.models.PreparedMedia.frames`:

* an animated GIF, PNG (APNG) or WebP: one frame per ``1 / sample_rate`` seconds of the animation (the
  first frame always), at most ``max_frames``, each PDQ-hashed as shown (transparency on white);
* a document (PDF, DjVu, multi-page TIFF): the thumbnails the wiki rendered for the further pages
  (the service never renders PDF, DjVu or SVG itself);
* a multi-page TIFF original: its further pages, decoded here (:mod:`service.media.tiff`).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pdqhash
from PIL import Image, ImageSequence

from service.config.matching import NO_VIEWS, ThumbnailSection
from service.config.media import AnimationSection, DocumentSection
from service.errors import Unscannable
from service.media.thumbnail import _resize_to_fit, _to_rgb, pdq_bytes
from service.media.tiff import tiff_page_png, tiff_pages
from service.models import KIND_DOCUMENT, KIND_VIDEO, FetchedMedia, FrameHash, PreparedMedia

if TYPE_CHECKING:
    from service.stages import Prepare

log = logging.getLogger(__name__)

ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")
_DEFAULT_FRAME_MS = 100  # browsers show a GIF frame without a delay for about 100 ms


def prepare_frames(
    prepare: Prepare,
    data: bytes,
    sha1: str,
    cfg: ThumbnailSection,
    md5: str | None,
    source: str,
    animation: AnimationSection | None,
    pages: tuple[tuple[int, bytes], ...] = (),
    documents: DocumentSection | None = None,
) -> PreparedMedia:
    """``prepare`` (the picture shown), plus the sampled animation frames or the further pages (the wiki's
    ``pages``, or with ``documents`` those of a multi-page TIFF original)."""
    media = prepare(data, sha1, cfg, md5=md5, source=source)
    if documents is not None and not pages:
        tiff = tiff_pages(data, documents, cfg)
        if tiff is not None:
            first = (FrameHash(1, 0.0, media.pdq.hashes[0], media.pdq.quality),) if media.pdq is not None else ()
            return replace(media, kind=KIND_DOCUMENT, frames=first + tiff, frames_sampled=len(tiff) + 1)
    if pages:
        frames = [f for f in (_page(prepare, n, page, sha1, cfg) for n, page in pages) if f is not None]
        if media.pdq is not None:
            frames.insert(0, FrameHash(1, 0.0, media.pdq.hashes[0], media.pdq.quality))
        return replace(media, kind=KIND_DOCUMENT, frames=tuple(frames), frames_sampled=len(pages) + 1)
    if animation is None:
        return media
    sampled = animation_frames(data, animation, cfg)
    if sampled is None:
        return media
    return replace(media, frames=sampled[0], frames_sampled=sampled[1], duration=sampled[2])


def _page(prepare: Prepare, number: int, data: bytes, sha1: str, cfg: ThumbnailSection) -> FrameHash | None:
    try:  # only the page's own hash is kept: no derived views
        page = prepare(data, sha1, replace(cfg, views=NO_VIEWS), source=f"page{number}")
    except Unscannable as exc:  # one page the wiki rendered badly does not hide the others
        log.info("%s page %d: %s", sha1, number, exc)
        return None
    if page.pdq is None:
        return None
    return FrameHash(number, 0.0, page.pdq.hashes[0], page.pdq.quality)


def animation_frames(data: bytes, cfg: AnimationSection,
                     thumb: ThumbnailSection) -> tuple[tuple[FrameHash, ...], int, float] | None:
    """``(frames, frames hashed, duration)`` of an animated image, or None for a still one.

    Frames are kept whatever their PDQ quality (the banks' ``pdq_quality_min`` applies when matching)."""
    formats: list[str] = [f for f in thumb.formats if f in ANIMATED_FORMATS]
    if not formats:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=formats)
    except Exception:  # not one of the animated formats: nothing more to do
        return None
    if not getattr(img, "is_animated", False):
        return None
    w, h = img.size
    if w * h > thumb.max_pixels:
        return None  # the still path already refused or judged it
    step = 1.0 / cfg.sample_rate
    next_t = t = 0.0
    frames: list[FrameHash] = []
    sampled = 0
    try:
        for index, frame in enumerate(ImageSequence.Iterator(img)):
            if t + 1e-6 >= next_t:
                rgb = _resize_to_fit(_to_rgb(frame.copy()), thumb.pdq_max_side)
                vector, quality = pdqhash.compute(np.asarray(rgb))
                frames.append(FrameHash(index, round(t, 3), pdq_bytes(vector), int(quality)))
                sampled += 1
                next_t = (int(t / step + 1e-6) + 1) * step
                if sampled >= cfg.max_frames:
                    break
            t += max(0, int(frame.info.get("duration") or _DEFAULT_FRAME_MS)) / 1000.0
    except Exception as exc:  # a broken later frame: keep the frames read so far
        log.info("animation: stopped after %d frames (%s: %s)", sampled, type(exc).__name__, exc)
    finally:
        img.close()
    return (tuple(frames), sampled, t) if frames else None


def matched_picture(fetched: FetchedMedia, details: Mapping[str, Any]) -> bytes:
    """The picture a match was found in, for the review preview: the matched video frame (first offset),
    animation frame or document page; the fetched bytes themselves for a still image."""
    offsets = details.get("offsets") or []
    if fetched.kind == KIND_VIDEO and fetched.path:
        from service.media.video import frame_png

        return frame_png(fetched.path, float(offsets[0]) if offsets else 0.0)
    pages = dict(fetched.pages)
    for page in details.get("pages") or []:
        if page in pages:
            return pages[page]
        if not pages and fetched.data:  # a TIFF original whose pages the service decoded
            picture = tiff_page_png(fetched.data, int(page))
            if picture is not None:
                return picture
    numbers = details.get("frame_numbers") or []
    if numbers and fetched.data:
        try:
            with Image.open(io.BytesIO(fetched.data), formats=ANIMATED_FORMATS) as img:
                img.seek(int(numbers[0]))
                out = io.BytesIO()
                _to_rgb(img.copy()).save(out, "PNG")
                return out.getvalue()
        except Exception as exc:
            raise Unscannable("undecodable", f"{type(exc).__name__}: {exc}") from exc
    return fetched.data
