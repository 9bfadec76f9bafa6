"""PDQ from a luminance array, for several views of one decoded image, in compiled loops (numba).

The same algorithm as Meta's reference implementation (and ``pdqhash``): luminance, two passes of the
Jarosz box filter along each axis, decimation to 64 x 64, a 16 x 16 DCT (without the DC row and column),
one bit per coefficient above the median, and the gradient-sum quality.  Three things make it cheaper
than ``pdqhash.compute_dihedral`` on an RGB array:

* the box filters and the decimation are linear and separable, so only the 64 output rows and columns
  are computed, each as a short weighted sum of input rows or columns (a few taps, worked out in closed
  form for each view: no table to cache per image size);
* the eight dihedral variants are sign changes and transposes of one DCT (flipping the 64 x 64 buffer
  negates the odd frequencies), so there is one DCT per view, not eight, and four medians (a transpose
  does not change the coefficients' median);
* every view of an image (the image itself, its uncrop views: the same pixels with other margins) is
  hashed in one call of one compiled loop, without the temporary arrays and per-call overhead of numpy,
  which cost more than the arithmetic on a 330 px thumbnail (docs/evasion.md has the figures).

The luminance is the caller's: JPEG's own Y channel (libjpeg decodes it alone, without the colour
conversion) or Pillow's ``L`` conversion, both ITU-R 601 like PDQ's.  A view is a rectangle of the array,
optionally extended by margins that repeat its edge pixels and may fade towards its mean.  Hashes agree
with ``pdqhash`` on the same luminance to within float rounding; the tests check the mean distance on the
test corpus.  Kernels are compiled once and cached on disk (see :mod:`service`); :func:`warm_up` loads
them before the first upload.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Order of the eight hashes, as pdqhash.compute_dihedral returns them.
DIHEDRAL_VARIANTS = (
    "original", "rotate90", "rotate180", "rotate270", "flip-x", "flip-y", "flip-plus1", "flip-minus1",
)
_OUT = 64  # side of the decimated buffer
_MIN_SIDE = 5  # the reference hashes smaller images as all zeros, quality 0
_FULL = (0, 0, 0, 0)

# DCT matrix of the reference: D[i, j] = sqrt(2/64) cos(pi / 128 * (i + 1) * (2j + 1)), i < 16.
_DCT = (math.sqrt(2.0 / _OUT) * np.cos(
    np.pi / (2 * _OUT) * np.outer(np.arange(1, 17), 2 * np.arange(_OUT) + 1))).astype(np.float32)
# Flipping the 64 x 64 buffer along an axis multiplies frequency k = i + 1 of that axis by (-1)^k.
_SIGN = np.where(np.arange(1, 17) % 2 == 1, -1.0, 1.0).astype(np.float32)
_DCT_SUMS = _DCT.astype(np.float64).sum(axis=1).astype(np.float32)  # D 1, as _faded_dct gives it without margins
_ALL = tuple(range(len(DIHEDRAL_VARIANTS)))


@njit(cache=True, nogil=True)
def _taps(n: int, pad_lo: int, pad_hi: int, scale: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """(first sample (64,), weights (64, K)) such that output sample ``o`` of an axis of ``n`` samples, after
    the reference's two box-filter passes and the decimation, is ``sum(weights[o, t] * x[first[o] + t])``.

    The axis is first extended by ``pad_lo`` / ``pad_hi`` samples repeating its edge samples: indices are
    of that extended axis, ``clip(i - pad_lo, 0, n - 1)`` in the real one.  ``scale`` > 1: each sample is
    the mean of ``scale`` pixels of the full-resolution image (a JPEG decoded at 1/2, 1/4 or 1/8 scale, or
    an image reduced by block averaging); the filter is the one the reference applies to the
    full-resolution axis, summed over each block, so the result is close to the full decode's hash.

    Closed form: with the reference's clipped box window ``W(q) = [q - left, q + right]`` and ``|W(q)|`` its
    clipped size, output ``o`` (centred on pixel ``c``) weighs pixel ``p`` by
    ``sum(1 / |W(q)| for q in W(c) and p in W(q)) / |W(c)|``, a difference of prefix sums."""
    blocks = n + pad_lo + pad_hi
    size = blocks * scale
    window = (size + 2 * _OUT - 1) // (2 * _OUT)
    half = (window + 2) // 2
    left, right = window - half, half - 1
    span = 2 * (left + right) + 1  # pixels one output reaches
    k = min(blocks, (span + scale - 1) // scale + (1 if scale > 1 else 0))
    cum = np.zeros(size + 1)
    for q in range(size):
        cum[q + 1] = cum[q] + 1.0 / (min(size - 1, q + right) - max(0, q - left) + 1)
    first = np.empty(_OUT, np.int64)
    weights = np.zeros((_OUT, k))
    for o in range(_OUT):
        c = int((o + 0.5) * size / _OUT)
        inv_c = 1.0 / (min(size - 1, c + right) - max(0, c - left) + 1)
        start = min(max((c - 2 * left) // scale, 0), blocks - k)
        first[o] = start
        for t in range(k * scale):
            p = start * scale + t
            lo = max(max(0, p - right), c - left)
            hi = min(min(size - 1, p + left), c + right)
            if hi >= lo:
                weights[o, t // scale] += (cum[hi + 1] - cum[lo]) * inv_c
    return first, weights.astype(np.float32)


@njit(cache=True, nogil=True)
def _rows(luma: np.ndarray, top: int, bottom: int, left: int, right: int, pad_top: int, pad_bottom: int,
          scale: int) -> np.ndarray:  # pragma: no cover - compiled
    """The first half of the reference's filter and decimation, along the rows: for ``luma[top:bottom,
    left:right]`` extended by ``pad_top`` / ``pad_bottom`` rows repeating its edges, the 64 output rows (a
    weighted sum of a few whole rows each), transposed (w x 64) for :func:`_columns`.  Views that differ
    only in their left and right margins share it: it is most of a view's cost."""
    h, w = bottom - top, right - left
    first, weights = _taps(h, pad_top, pad_bottom, scale)
    tmp = np.zeros((_OUT, w), np.float32)
    for o in range(_OUT):
        out = tmp[o]
        for t in range(weights.shape[1]):
            wt = weights[o, t]
            if wt != 0:
                row = luma[top + min(max(first[o] + t - pad_top, 0), h - 1), left:right]
                for x in range(w):  # contiguous, no reduction: vectorised
                    out[x] += wt * row[x]
    return np.ascontiguousarray(tmp.T)


@njit(cache=True, nogil=True)
def _columns(rows_t: np.ndarray, pad_left: int, pad_right: int, scale: int) -> np.ndarray:  # pragma: no cover
    """The second half, along the columns of :func:`_rows`'s result extended by ``pad_left`` / ``pad_right``
    columns: the 64 x 64 buffer."""
    w = rows_t.shape[0]
    first, weights = _taps(w, pad_left, pad_right, scale)
    buf = np.empty((_OUT, _OUT), np.float32)
    acc = np.empty(_OUT, np.float32)
    for p in range(_OUT):
        acc[:] = 0
        for t in range(weights.shape[1]):
            wt = weights[p, t]
            if wt != 0:
                src = min(max(first[p] + t - pad_left, 0), w - 1)
                for o in range(_OUT):  # contiguous, no reduction: vectorised
                    acc[o] += wt * rows_t[src, o]
        for o in range(_OUT):
            buf[o, p] = acc[o]
    return buf


@njit(cache=True, nogil=True)
def _margin_samples(n: int, pad_lo: int, pad_hi: int) -> tuple[int, int]:  # pragma: no cover - compiled
    """How many of the 64 samples of an axis of ``n`` samples extended by ``pad_lo`` / ``pad_hi`` are
    centred in the margins."""
    lo = hi = 0
    for o in range(_OUT):
        centre = (o + 0.5) * (n + pad_lo + pad_hi) / _OUT
        if centre < pad_lo:
            lo += 1
        elif centre >= pad_lo + n:
            hi += 1
    return lo, hi


@njit(cache=True, nogil=True)
def _faded_dct(lo: int, hi: int, fade: float) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The DCT along an axis whose ``lo`` first and ``hi`` last samples (of 64) are margins, faded: a margin
    sample ``d`` samples from the edge becomes ``m + (edge - m) * fade ** d``, ``m`` the mean of the
    buffer outside the margins (the best guess of the missing picture: its edge nearby, its mean further
    out, as values of natural images decorrelate with distance).  Linear, so folded into the DCT:
    ``(D F, D F 1)`` with ``F`` the fading without the mean (16 x 64, 16); the DCT of the faded buffer is
    ``(D F_r) buf (D F_c)^T - m (D F_r 1)(D F_c 1)^T`` (the DCT rows sum to zero, so ``m`` itself drops out)."""
    dct = np.zeros((16, _OUT))
    for o in range(_OUT):
        src = min(max(o, lo), _OUT - 1 - hi)
        f = fade ** abs(o - src)
        for i in range(16):
            dct[i, src] += _DCT[i, o] * f
    return dct.astype(np.float32), dct.sum(axis=1).astype(np.float32)


@njit(cache=True, nogil=True)
def _mean(buf: np.ndarray, top: int, bottom: int, left: int, right: int) -> float:  # pragma: no cover - compiled
    """The mean of ``buf[top:bottom, left:right]``."""
    total = 0.0
    for i in range(top, bottom):
        for j in range(left, right):
            total += buf[i, j]
    return total / ((bottom - top) * (right - left))


@njit(cache=True, nogil=True)
def _quality(buf: np.ndarray) -> int:  # pragma: no cover - compiled
    """The reference's gradient-sum quality of a 64 x 64 buffer (0..100)."""
    total = 0
    k, d = np.float32(100.0), np.float32(255.0)
    for i in range(_OUT):
        for j in range(_OUT):
            if i + 1 < _OUT:
                total += abs(int((buf[i, j] - buf[i + 1, j]) * k / d))
            if j + 1 < _OUT:
                total += abs(int((buf[i, j] - buf[i, j + 1]) * k / d))
    return min(100, total // 90)


@njit(cache=True, nogil=True, fastmath=True)
def _dct(buf: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """``rows @ buf @ cols.T`` (16 x 16).  Dot products, which LLVM vectorises only when it may reorder the
    sums (fastmath): the coefficients then differ from numpy's in the last float bits."""
    half = np.empty((_OUT, 16), np.float32)  # buf @ cols.T
    for a in range(_OUT):
        for j in range(16):
            acc = np.float32(0.0)
            for b in range(_OUT):
                acc += buf[a, b] * cols[j, b]
            half[a, j] = acc
    out = np.empty((16, 16), np.float32)
    for i in range(16):
        for j in range(16):
            acc = np.float32(0.0)
            for a in range(_OUT):
                acc += rows[i, a] * half[a, j]
            out[i, j] = acc
    return out


@njit(cache=True, nogil=True)
def _lower_median(a: np.ndarray) -> float:  # pragma: no cover - compiled
    """The lower median (element 127 of 256 in order) of ``a``, reordered in place (Hoare's selection: about
    twice as fast here as numba's ``np.partition``, which copies)."""
    k, lo, hi = (a.shape[0] - 1) // 2, 0, a.shape[0] - 1
    while lo < hi:
        pivot = a[(lo + hi) >> 1]
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]


@njit(cache=True, nogil=True)
def _hash_bits(b: np.ndarray, keep: int, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """The dihedral hashes (DIHEDRAL_VARIANTS order) of DCT coefficients ``b`` into ``out`` (8 x 32), of the
    variants whose bit is set in ``keep`` (the others are left as they are).

    Variant coefficient (i, j): original b[i, j]; rotate90 b[j, i] s_i; rotate180 b[i, j] s_i s_j;
    rotate270 b[j, i] s_j; flip-x b[i, j] s_i; flip-y b[i, j] s_j; flip-plus1 b[j, i]; flip-minus1
    b[j, i] s_i s_j, with s the sign change of a flip (a transpose keeps the median, so four medians do).
    Bit k = 16 i + j is set when the coefficient is above the lower median, like the reference's Torben
    median; the standard hex order writes bit 255 first."""
    medians = np.zeros(4, np.float32)  # of b, b s_i s_j, b s_j, b s_i
    vals = np.empty(256, np.float32)
    for m, variants in enumerate((0b01000001, 0b10000100, 0b00100010, 0b00011000)):
        if keep & variants == 0:
            continue
        for i in range(16):
            for j in range(16):
                v = b[i, j]
                if (m == 1 or m == 3) and i % 2 == 0:
                    v = -v
                if (m == 1 or m == 2) and j % 2 == 0:
                    v = -v
                vals[16 * i + j] = v
        medians[m] = _lower_median(vals)
    for k in range(8):
        if keep >> k & 1:
            out[k] = 0
    for i in range(16):
        si = np.float32(-1.0) if i % 2 == 0 else np.float32(1.0)
        for j in range(16):
            sj = np.float32(-1.0) if j % 2 == 0 else np.float32(1.0)
            v, t = b[i, j], b[j, i]
            byte, bit = 31 - (16 * i + j) // 8, np.uint8(1 << (j % 8))
            for k, value, m in ((0, v, 0), (1, t * si, 2), (2, v * si * sj, 1), (3, t * sj, 3), (4, v * si, 3),
                                (5, v * sj, 2), (6, t, 0), (7, t * si * sj, 1)):
                if keep >> k & 1 and value > medians[m]:
                    out[k, byte] |= bit


@njit(cache=True, nogil=True)
def _axis_dct(n: int, pad_lo: int, pad_hi: int,
              fade: float) -> tuple[np.ndarray, np.ndarray, int, int]:  # pragma: no cover - compiled
    """(faded DCT, its row sums, margin samples before, after) of an axis of ``n`` samples extended by
    ``pad_lo`` / ``pad_hi`` (:func:`_faded_dct`; without margin samples, the DCT itself)."""
    lo, hi = _margin_samples(n, pad_lo, pad_hi)
    if lo == 0 and hi == 0:
        return _DCT, _DCT_SUMS, 0, 0
    dct, sums = _faded_dct(lo, hi, fade)
    return dct, sums, lo, hi


@njit(cache=True, nogil=True)
def _hash_views(luma: np.ndarray, top: int, bottom: int, left: int, right: int, pads: np.ndarray,
                fades: np.ndarray, keep: np.ndarray, scale: int, hashes: np.ndarray,
                quality: np.ndarray) -> None:  # pragma: no cover - compiled
    """Hashes (into ``hashes``, V x 8 x 32, of the variants set in ``keep[v]``) and quality (into
    ``quality``, V) of ``luma[top:bottom, left:right]`` extended by each margin ``pads[v]`` faded by
    ``fades[v]`` (1: repeated edges).

    Filtering along the rows is most of a view's cost, so it is shared: a view with the top and bottom
    margins of the one before it reuses its pass along the rows, and views extended at the top or bottom
    only (no left or right margin) are filtered along the columns first, all from one shared pass (the
    filter is separable: the order changes only float rounding, and each view always takes the same order)."""
    h, w = bottom - top, right - left
    rows_t = np.empty((0, _OUT), np.float32)
    rows_pads = (0, 0)  # the margins rows_t was filtered with
    cols_t = np.empty((0, _OUT), np.float32)
    for v in range(pads.shape[0]):
        if pads[v, 2] == 0 and pads[v, 3] == 0 and (pads[v, 0] != 0 or pads[v, 1] != 0):
            if cols_t.shape[0] == 0:
                box_t = np.ascontiguousarray(luma[top:bottom, left:right].T)
                cols_t = _rows(box_t, 0, w, 0, h, 0, 0, scale)
            buf = np.ascontiguousarray(_columns(cols_t, pads[v, 0], pads[v, 1], scale).T)
        else:
            if rows_t.shape[0] == 0 or pads[v, 0] != rows_pads[0] or pads[v, 1] != rows_pads[1]:
                rows_t = _rows(luma, top, bottom, left, right, pads[v, 0], pads[v, 1], scale)
                rows_pads = (pads[v, 0], pads[v, 1])
            buf = _columns(rows_t, pads[v, 2], pads[v, 3], scale)
        quality[v] = _quality(buf)  # the view's before any fading
        if fades[v] < 1.0:
            dr, ur, mt, mb = _axis_dct(h, pads[v, 0], pads[v, 1], fades[v])
            dc, uc, ml, mr = _axis_dct(w, pads[v, 2], pads[v, 3], fades[v])
            mean = _mean(buf, mt, _OUT - mb, ml, _OUT - mr)
            b = _dct(buf, dr, dc)
            for i in range(16):
                for j in range(16):
                    b[i, j] -= np.float32(mean) * ur[i] * uc[j]
        else:
            b = _dct(buf, _DCT, _DCT)
        _hash_bits(b, keep[v], hashes[v])


def kernel_array(luma: np.ndarray) -> np.ndarray:
    """``luma`` as the kernels are compiled for: C-contiguous, writable float32 (a copy only when it is not);
    any other array type would make numba compile anew on a live upload."""
    out = np.ascontiguousarray(luma, dtype=np.float32)
    return out if out.flags.writeable else out.copy()


def hash_views(
    luma: np.ndarray, box: tuple[int, int, int, int], pads: tuple[tuple[int, int, int, int], ...],
    fades: tuple[float, ...], scale: int = 1, variants: tuple[tuple[int, ...], ...] = (),
) -> list[tuple[tuple[bytes, ...], int]]:
    """The dihedral PDQ hashes (32 bytes each, standard hex order) and the quality of each view of
    ``luma[top:bottom, left:right]`` (``box``) extended by margins ``pads[v]`` = (top, bottom, left, right)
    repeating its edges, faded towards its mean by ``fades[v]`` per 64th of the side (1: not faded).
    ``scale``: each value of ``luma`` is the mean of ``scale`` x ``scale`` pixels of the image.  ``variants[v]``:
    the indexes in DIHEDRAL_VARIANTS of the hashes wanted for view ``v``, in that order (missing or empty:
    all eight); the others are not computed."""
    if luma.ndim != 2:
        raise ValueError(f"PDQ needs a 2-D array, got shape {luma.shape}")
    if not pads:
        return []
    wanted = [tuple(variants[v]) if v < len(variants) and variants[v] else _ALL for v in range(len(pads))]
    top, bottom, left, right = box
    if min(bottom - top, right - left) * scale < _MIN_SIDE:  # the reference's answer for images too small
        return [((bytes(32),) * len(kept), 0) for kept in wanted]
    order = sorted(range(len(pads)), key=lambda v: pads[v][:2])  # views sharing their row margins together
    out = np.empty((len(pads), len(DIHEDRAL_VARIANTS), 32), np.uint8)
    quality = np.empty(len(pads), np.int64)
    _hash_views(kernel_array(luma), top, bottom, left, right,
                np.array([pads[v] for v in order], np.int64).reshape(-1, 4),
                np.array([fades[v] for v in order], np.float64),
                np.array([sum(1 << k for k in wanted[v]) for v in order], np.int64), scale, out, quality)
    at = {v: k for k, v in enumerate(order)}
    return [(tuple(out[at[v], k].tobytes() for k in wanted[v]), int(quality[at[v]])) for v in range(len(pads))]


def padded_dihedral_hashes(
    luma: np.ndarray, pads: tuple[tuple[int, int, int, int], ...], fades: tuple[float, ...], scale: int = 1
) -> list[tuple[tuple[bytes, ...], int]]:
    """:func:`hash_views` of the whole of ``luma``."""
    return hash_views(luma, (0, luma.shape[0], 0, luma.shape[1]) if luma.ndim == 2 else _FULL, pads, fades, scale)


def dihedral_hashes(
    luma: np.ndarray, pad: tuple[int, int, int, int] = _FULL, scale: int = 1
) -> tuple[tuple[bytes, ...], int]:
    """The eight dihedral PDQ hashes of ``luma`` (32 bytes each, standard hex order) and its quality;
    with ``pad``, of ``luma`` extended by margins (top, bottom, left, right) repeating its edges; with
    ``scale``, of the full-resolution image whose ``scale`` x ``scale`` block means ``luma`` holds."""
    return padded_dihedral_hashes(luma, (pad,), (1.0,), scale)[0]


def _downsample(luma: np.ndarray, pad: tuple[int, int, int, int] = _FULL, scale: int = 1) -> np.ndarray:
    """The reference's 64 x 64 buffer of a 2-D luminance array, optionally extended by margins ``pad``."""
    rows_t = _rows(kernel_array(luma), 0, luma.shape[0], 0, luma.shape[1], pad[0], pad[1], scale)
    return _columns(rows_t, pad[2], pad[3], scale)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels, so that the first upload does not wait for them."""
    luma = np.zeros((8, 8), np.float32)
    hash_views(luma, (0, 8, 0, 8), (_FULL, (1, 1, 1, 1)), (1.0, 0.5))
    _downsample(luma)
