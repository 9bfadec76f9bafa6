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

A trimmed view that leaves too little of the image (mostly flat padding) is dropped here; views whose
PDQ quality is low are dropped by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.config.matching import PdqViewsSection

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


@dataclass(frozen=True, slots=True)
class View:
    """A derived view: rows ``top:bottom`` and columns ``left:right`` of the luminance array, then
    ``pad`` = (top, bottom, left, right) pixels of repeated edge added around it, faded towards the mean by
    ``fade`` per 64th of the side (1: not faded; see :func:`service.media.pdq.dihedral_hashes`)."""

    name: str
    top: int
    bottom: int
    left: int
    right: int
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    fade: float = 1.0

    def pixels(self, luma: np.ndarray) -> np.ndarray:
        return luma[self.top:self.bottom, self.left:self.right]


def describe_view(name: object) -> str:
    """The view that matched, in words for reviewers ("" for the image as uploaded)."""
    if not isinstance(name, str) or name == ORIGINAL:
        return ""
    if name == TRIMMED_BORDER:
        return "after trimming a border"
    if name == TRIMMED_CAPTION:
        return "after removing a caption strip"
    if name.startswith(UNCROP + "-"):
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
    h, w = luma.shape
    # Most images have no border: their first rows decide it, for both sides of an axis at once.
    top, bottom = _border_runs(luma[: int(h * _MAX_DEPTH)], luma[::-1][: int(h * _MAX_DEPTH)])
    inner = luma[top:h - bottom] if h - top - bottom >= _MIN_KEPT_PX else luma
    left, right = _border_runs(inner.T[: int(w * _MAX_DEPTH)], inner.T[::-1][: int(w * _MAX_DEPTH)])
    return top, bottom, left, right


def _border_runs(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """:func:`_border_rows` of two opposite sides (row 0 at the image's edge), probing both together."""
    if a.shape[0] < _PROBE or a.shape[1] < 2:
        return 0, 0
    head = _border_rows(np.stack((a[:_PROBE], b[:_PROBE])))
    return tuple(  # type: ignore[return-value]
        int(n) if n < _PROBE else int(_border_rows(side[None])[0]) for n, side in zip(head, (a, b), strict=True))


def _border_rows(block: np.ndarray) -> np.ndarray:
    """For each side of ``block`` (sides x rows x length, row 0 at the image's edge), how many rows form a
    border: each row is smooth (a straight line fits it, so uniform colours and gradients along the edge
    pass, JPEG noise too) and close to the row before it (so gradients across the border pass, but not
    the picture's content)."""
    x = block.astype(np.float32)
    n = x.shape[2]
    j = np.arange(n, dtype=np.float32) - (n - 1) / 2
    mean = x.mean(axis=2)
    slope = (x @ j) / float(j @ j)
    resid = x - mean[..., None] - slope[..., None] * j
    ok = np.mean(resid * resid, axis=2) <= _SMOOTH_RMS ** 2
    ok[:, 1:] &= (np.abs(np.diff(mean, axis=1)) <= _STEP_MEAN) & (np.abs(np.diff(slope, axis=1)) * n <= _STEP_SLOPE)
    return np.where(ok.all(axis=1), ok.shape[1], np.argmin(ok, axis=1))


# --------------------------------------------------------------------------- captions

def caption_depths(luma: np.ndarray) -> tuple[int, int]:
    """Rows of caption strip at the top and at the bottom (0 where there is none)."""
    h = luma.shape[0]
    limit = int(h * _CAPTION_MAX) + 1
    return _caption_run(luma[:limit], h), _caption_run(luma[::-1][:limit], h)


def _caption_run(block: np.ndarray, height: int) -> int:
    """Rows of ``block`` (row 0 at the edge) that form a caption strip: it starts with rows of flat
    background, holds rows of text (background between the letters), and ends with the last row of pure
    background before the picture (the first row with almost no background colour in it)."""
    if block.shape[0] < 2:
        return 0
    bg = int(np.median(block[0]))
    if np.mean(np.abs(block[0].astype(np.int16) - bg) <= _CAPTION_TOL) < _CAPTION_PURE:
        return 0  # the edge row is not flat: no strip (most images)
    share = (np.abs(block.astype(np.int16) - bg) <= _CAPTION_TOL).mean(axis=1)
    picture = np.flatnonzero(share < _CAPTION_BG)
    band = share[: int(picture[0]) if picture.size else share.size]
    depth = int(np.flatnonzero(band >= _CAPTION_PURE)[-1]) + 1
    text_rows = int(np.count_nonzero(band[:depth] < _CAPTION_PURE))
    if text_rows < _CAPTION_TEXT_ROWS or not _CAPTION_MIN * height <= depth <= _CAPTION_MAX * height:
        return 0
    return depth
