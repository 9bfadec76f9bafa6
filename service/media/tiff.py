"""Pages of a multi-page TIFF, decoded by the service itself (in the decode pool).

A wiki without PagedTiffHandler (not in Debian, absent from many wikis) renders page 1 of a TIFF only, and
MediaWiki 1.39 with ImageMagick fails to render a multi-page TIFF at all.  TIFF is an image format, decoded
with Pillow like any image upload (the rule against rendering untrusted PDF, DjVu or SVG does not apply), so
the fetcher brings the original (up to ``media.documents.tiff_original_max_bytes``) and
:func:`tiff_pages` hashes pages 2 .. 1 + ``extra_pages`` here, each under the image budgets
(``thumbnail.max_pixels``, ``thumbnail.max_decoded_bytes``), the whole file under a page cap
(``tiff_max_pages``, counted from page headers only) and a budget of this thread's CPU time
(``tiff_decode_budget``, checked between pages; a decoder that does not return control is killed at twice
that, as a video's is).
"""

from __future__ import annotations

import io
import time
import warnings

import numpy as np
import pdqhash
from PIL import Image

from service.config.matching import ThumbnailSection
from service.config.media import DocumentSection
from service.errors import Unscannable
from service.media.thumbnail import _resize_to_fit, _to_rgb, decoded_bytes, pdq_bytes
from service.media.video import cpu_kill_timer
from service.models import FrameHash

TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders


def is_tiff(data: bytes) -> bool:
    return data[:4] in TIFF_MAGIC


def tiff_pages(data: bytes, cfg: DocumentSection, thumb: ThumbnailSection) -> tuple[FrameHash, ...] | None:
    """PDQ of pages 2 .. 1 + ``cfg.extra_pages`` of a multi-page TIFF (``frame_number`` is the page number), or
    None when ``data`` is not a TIFF or has one page.  Page 1 is the caller's (:func:`~service.media.thumbnail.
    prepare` decoded it already).

    Raises :class:`Unscannable`: ``too-many-pages`` (more than ``cfg.tiff_max_pages``), ``decompression-bomb`` /
    ``too-large-decoded`` (a page over the image budgets: a page that cannot be looked at hides the file),
    ``decode-timeout`` (over ``cfg.tiff_decode_budget`` seconds of CPU) or ``undecodable`` (a broken page)."""
    if not is_tiff(data) or "TIFF" not in thumb.formats:
        return None
    start = time.thread_time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # page sizes are checked below, page by page
            img = Image.open(io.BytesIO(data), formats=["TIFF"])
    except Exception:  # prepare() judged the file already: not a TIFF Pillow reads, nothing more to do
        return None
    frames: list[FrameHash] = []
    with img, cpu_kill_timer(cfg.tiff_decode_budget * 2):
        page = 1
        while True:
            if time.thread_time() - start > cfg.tiff_decode_budget:
                raise Unscannable("decode-timeout", f"TIFF pages: over {cfg.tiff_decode_budget} s of CPU "
                                                    f"at page {page + 1}")
            try:
                img.seek(page)  # reads this page's header (IFD) only
            except EOFError:
                break
            except Exception as exc:
                raise Unscannable("undecodable", f"TIFF page {page + 1}: {type(exc).__name__}: {exc}") from exc
            page += 1  # the page now open (1-based)
            if page > cfg.tiff_max_pages:
                raise Unscannable("too-many-pages", f"TIFF has more than {cfg.tiff_max_pages} pages")
            if page <= 1 + cfg.extra_pages:
                frames.append(_hash_page(img, page, thumb))
    return tuple(frames) if frames else None


def _hash_page(img: Image.Image, page: int, thumb: ThumbnailSection) -> FrameHash:
    w, h = img.size
    if w * h > thumb.max_pixels:
        raise Unscannable("decompression-bomb", f"TIFF page {page}: {w}x{h} pixels exceeds the limit of "
                                                f"{thumb.max_pixels}")
    size = decoded_bytes(img.mode, w, h)
    if size > thumb.max_decoded_bytes:
        raise Unscannable("too-large-decoded", f"TIFF page {page}: {w}x{h} {img.mode} decodes to {size} bytes, "
                                               f"over the budget of {thumb.max_decoded_bytes}")
    try:
        img.load()
        rgb = _resize_to_fit(_to_rgb(img), thumb.pdq_max_side)
    except MemoryError as exc:
        raise Unscannable("decoder-memory", f"TIFF page {page}: out of memory while decoding") from exc
    except Exception as exc:  # any decoder failure on untrusted bytes
        raise Unscannable("undecodable", f"TIFF page {page}: {type(exc).__name__}: {exc}") from exc
    vector, quality = pdqhash.compute(np.asarray(rgb))
    return FrameHash(page, 0.0, pdq_bytes(vector), int(quality))


def tiff_page_png(data: bytes, page: int) -> bytes | None:
    """Page ``page`` (1-based) of a TIFF as PNG, for the review preview; None when ``data`` is not a TIFF."""
    if not is_tiff(data):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=["TIFF"]) as img:
                img.seek(page - 1)
                out = io.BytesIO()
                _to_rgb(img.copy()).save(out, "PNG")
                return out.getvalue()
    except Exception as exc:
        raise Unscannable("undecodable", f"TIFF page {page}: {type(exc).__name__}: {exc}") from exc
