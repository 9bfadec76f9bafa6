"""Derived views of a decoded image that undo common edits made to dodge hash lists.

Each view is a slice of the one decoded luminance array (no copy), optionally extended by margins that
repeat its edge pixels, and is hashed with its eight dihedral variants like the image as uploaded:

* ``trimmed-border``: uniform or near-uniform borders and padding trimmed on every side (any colour,
  with a tolerance for JPEG noise and for gradients along or across the border);
* ``trimmed-caption``: a caption strip removed (a band of text on a flat background at the top or
  bottom);
* ``uncrop-N``: the image extended by N % of its sides at every edge, for copies cropped by a few
  percent per side (PDQ itself is not crop-tolerant: see docs/evasion.md for the rates reached).  Up to
  5 % the margins repeat the edge pixels; beyond, where more of the picture is missing, they fade from
  the edge towards the picture's mean (``uncrop_fade``), which measured closer to the original's hash.
* ``uncrop-SIDE-N`` (``uncrop-left-4``, ``uncrop-top-left-4``): the image extended by N % on one side only
  (``uncrop_sides``) or on the two sides of one corner (``uncrop_corners``), faded alike, for copies cropped
  on one side or at one corner.  There are four of each per amount, so only the variants of
  ``uncrop_sides_variants`` (as shown and mirrored, by default) are kept and matched: each costs a lookup.

A trimmed view that leaves too little of the image (mostly flat padding) is dropped here; views whose
PDQ quality is low are dropped by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
from numba import njit

from service.config.matching import DihedralVariant, PdqViewsSection
from service.media.pdq import kernel_array

ORIGINAL = "original"
TRIMMED_BORDER = "trimmed-border"
TRIMMED_CAPTION = "trimmed-caption"
UNCROP = "uncrop"

_MAX_DEPTH = 0.45  # a border or strip never covers more than this share of a side
_MIN_KEPT = 0.3  # a trimmed view keeps at least this share of each side, else it is dropped as flat
_MIN_KEPT_PX = 32
_SMOOTH_RMS = 10.0  # a border row fits a straight line (uniform or gradient) within this RMS (grey levels)
_STEP_MEAN = 8.0  # consecutive border rows differ in mean by at most this
_STEP_SLOPE = 12.0  # ... and in the slope of their fitted line, over the row's length, by at most this
_PROBE = 4  # rows looked at first
_CAPTION_TOL = 16  # pixels within this of the strip's background colour count as background
_CAPTION_BG = 0.15  # a caption row (text on background) has at least this share of background pixels
_CAPTION_PURE = 0.95  # a row of the strip's margins: background but for JPEG noise
_CAPTION_MIN, _CAPTION_MAX = 0.05, 0.3  # a caption strip's share of the height
_CAPTION_TEXT_ROWS = 3  # rows with some text in them, needed to call a flat band a caption
UNCROP_FADE_FROM = 0.05  # the margins of uncrop views of more than this share fade (cfg.uncrop_fade)
UNCROP_SIDES = ("top", "bottom", "left", "right")  # uncrop_sides views, in this order per amount
UNCROP_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")  # uncrop_corners views
# The PDQ dihedral variants (service.media.pdq.DIHEDRAL_VARIANTS, whose order the config's names follow).
_VARIANTS = get_args(DihedralVariant)


@dataclass(frozen=True, slots=True)
class View:
    """A derived view: rows ``top:bottom`` and columns ``left:right`` of the luminance array, then
    ``pad`` = (top, bottom, left, right) pixels of repeated edge added around it, faded towards the mean by
    ``fade`` per 64th of the side (1: not faded; see :func:`service.media.pdq.dihedral_hashes`).  ``variants``:
    the indexes (in ``DIHEDRAL_VARIANTS``) of the dihedral variants kept, empty for all eight."""

    name: str
    top: int
    bottom: int
    left: int
    right: int
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    fade: float = 1.0
    variants: tuple[int, ...] = ()


def describe_view(name: object) -> str:
    """The view that matched, in words for reviewers ("" for the image as uploaded)."""
    if not isinstance(name, str) or name == ORIGINAL:
        return ""
    if name == TRIMMED_BORDER:
        return "after trimming a border"
    if name == TRIMMED_CAPTION:
        return "after removing a caption strip"
    if name.startswith(UNCROP + "-"):
        where, _, amount = name.removeprefix(UNCROP + "-").rpartition("-")
        if where in UNCROP_SIDES:
            return f"after extending the {where} edge by {amount}% (a copy cropped on one side)"
        if where in UNCROP_CORNERS:
            return f"after extending the {where.replace('-', ' and ')} edges by {amount}% (a copy cropped at a corner)"
        return f"after extending the edges by {name.removeprefix(UNCROP + '-')}% (a cropped copy)"
    return f"in view {name[:40]}"


def derived_views(luma: np.ndarray, cfg: PdqViewsSection) -> list[View]:
    """The derived views of a 2-D luminance array that ``cfg`` enables and that apply to it."""
    h, w = luma.shape
    out: list[View] = []
    if cfg.trim_border:
        top, bottom, left, right = border_depths(luma)
        view = _trimmed(TRIMMED_BORDER, h, w, top, bottom, left, right)
        if view is not None:
            out.append(view)
    if cfg.trim_caption:
        top, bottom = caption_depths(luma)
        view = _trimmed(TRIMMED_CAPTION, h, w, top, bottom, 0, 0)
        if view is not None:
            out.append(view)
    for share in cfg.uncrop:
        ph, pw = round(h * share), round(w * share)
        if ph or pw:
            fade = cfg.uncrop_fade if share > UNCROP_FADE_FROM else 1.0
            out.append(View(f"{UNCROP}-{share * 100:g}", 0, h, 0, w, (ph, ph, pw, pw), fade))
    kept = tuple(dict.fromkeys(_VARIANTS.index(v) for v in cfg.uncrop_sides_variants))
    for shares, places in ((cfg.uncrop_sides, UNCROP_SIDES), (cfg.uncrop_corners, UNCROP_CORNERS)):
        for share in shares:
            ph, pw = round(h * share), round(w * share)
            fade = cfg.uncrop_fade if share > UNCROP_FADE_FROM else 1.0
            for where in places:
                pad = (ph if "top" in where else 0, ph if "bottom" in where else 0,
                       pw if "left" in where else 0, pw if "right" in where else 0)
                if any(pad):
                    out.append(View(f"{UNCROP}-{where}-{share * 100:g}", 0, h, 0, w, pad, fade, kept))
    return out


def _trimmed(name: str, h: int, w: int, top: int, bottom: int, left: int, right: int) -> View | None:
    """A trimmed view, or None when nothing worth trimming was found or too little would be left."""
    if max(_significant(top, h), _significant(bottom, h), _significant(left, w), _significant(right, w)) == 0:
        return None
    kept_h, kept_w = h - top - bottom, w - left - right
    if kept_h < max(_MIN_KEPT_PX, _MIN_KEPT * h) or kept_w < max(_MIN_KEPT_PX, _MIN_KEPT * w):
        return None
    return View(name, top, h - bottom, left, w - right)


def _significant(depth: int, side: int) -> int:
    """``depth`` if it is at least 1 % of the side (and 2 px), else 0: a pixel or two of edge is noise."""
    return depth if depth >= max(2, 0.01 * side) else 0


# --------------------------------------------------------------------------- borders

def border_depths(luma: np.ndarray) -> tuple[int, int, int, int]:
    """Rows or columns of border at the top, bottom, left and right (0 where there is none)."""
    luma = kernel_array(luma)
    return _border_depths(luma, int(luma.shape[0] * _MAX_DEPTH), int(luma.shape[1] * _MAX_DEPTH))


@njit(cache=True, nogil=True)
def _border_depths(luma: np.ndarray, max_rows: int, max_cols: int) -> tuple[int, int, int, int]:  # pragma: no cover
    h, w = luma.shape
    top = _border_run(luma, False, False, max_rows, 0, w)
    bottom = _border_run(luma, False, True, max_rows, 0, w)
    lo, hi = (top, h - bottom) if h - top - bottom >= _MIN_KEPT_PX else (0, h)
    left = _border_run(luma, True, False, max_cols, lo, hi)
    return top, bottom, left, _border_run(luma, True, True, max_cols, lo, hi)


@njit(cache=True, nogil=True)
def _border_run(luma: np.ndarray, columns: bool, from_end: bool, limit: int, lo: int,
                hi: int) -> int:  # pragma: no cover - compiled
    """How many lines (rows, or ``columns``) from an edge of ``luma`` (the far one when ``from_end``), at most
    ``limit``, form a border, each line read over ``lo:hi`` of the other axis: each line is smooth (a
    straight line fits it, so uniform colours and gradients along the edge pass, JPEG noise too) and close
    to the line before it (so gradients across the border pass, but not the picture's content)."""
    n = hi - lo
    if limit < _PROBE or n < 2:
        return 0
    centre = (n - 1) / 2
    norm = 0.0
    for t in range(n):
        norm += (t - centre) ** 2
    last = luma.shape[1 if columns else 0] - 1
    prev_mean = prev_slope = 0.0
    for r in range(limit):
        line = luma[lo:hi, last - r if from_end else r] if columns else luma[last - r if from_end else r, lo:hi]
        total = moment = 0.0
        for t in range(n):
            total += line[t]
            moment += line[t] * (t - centre)
        mean, slope = total / n, moment / norm
        resid = 0.0
        for t in range(n):
            d = line[t] - mean - slope * (t - centre)
            resid += d * d
        if resid / n > _SMOOTH_RMS ** 2:
            return r
        if r and (abs(mean - prev_mean) > _STEP_MEAN or abs(slope - prev_slope) * n > _STEP_SLOPE):
            return r
        prev_mean, prev_slope = mean, slope
    return limit


# --------------------------------------------------------------------------- captions

def caption_depths(luma: np.ndarray) -> tuple[int, int]:
    """Rows of caption strip at the top and at the bottom (0 where there is none)."""
    luma = kernel_array(luma)
    h = luma.shape[0]
    limit = min(h, int(h * _CAPTION_MAX) + 1)
    return _caption_run(luma, False, limit), _caption_run(luma, True, limit)


@njit(cache=True, nogil=True)
def _caption_run(luma: np.ndarray, from_end: bool, limit: int) -> int:  # pragma: no cover - compiled
    """Rows (at most ``limit``, from the top or ``from_end``) that form a caption strip: it starts with rows
    of flat background, holds rows of text (background between the letters), and ends with the last row
    of pure background before the picture (the first row with almost no background colour in it)."""
    if limit < 2:
        return 0
    height, last = luma.shape[0], luma.shape[0] - 1
    bg = int(np.median(luma[last if from_end else 0]))
    depth = text_rows = text_seen = 0
    for r in range(limit):
        row = luma[last - r if from_end else r]
        near = 0
        for x in range(row.shape[0]):
            near += abs(row[x] - bg) <= _CAPTION_TOL
        share = near / row.shape[0]
        if r == 0 and share < _CAPTION_PURE:
            return 0  # the edge row is not flat: no strip (most images)
        if share < _CAPTION_BG:
            break  # the picture
        if share >= _CAPTION_PURE:
            depth, text_rows = r + 1, text_seen
        else:
            text_seen += 1
    if text_rows < _CAPTION_TEXT_ROWS or not _CAPTION_MIN * height <= depth <= _CAPTION_MAX * height:
        return 0
    return depth


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels, so that the first upload does not wait for them."""
    luma = np.zeros((40, 40), np.float32)
    border_depths(luma)
    caption_depths(luma)
