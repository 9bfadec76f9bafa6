"""PDQ in numpy, from a luminance array, for several views of one decoded image.

The same algorithm as Meta's reference implementation (and ``pdqhash``): luminance, two passes of the
Jarosz box filter along each axis, decimation to 64 x 64, a 16 x 16 DCT (without the DC row and column),
one bit per coefficient above the median, and the gradient-sum quality.  Two things make it cheaper
than ``pdqhash.compute_dihedral`` on an RGB array:

* the box filters and the decimation are linear and separable, so only the 64 output rows and columns
  are computed, each as a short weighted sum of input rows or columns (a few taps, cached per size);
* the eight dihedral variants are sign changes and transposes of one DCT (flipping the 64 x 64 buffer
  negates the odd frequencies), so there is one DCT per view, not eight.

The luminance is the caller's: JPEG's own Y channel (libjpeg decodes it alone, without the colour
conversion) or Pillow's ``L`` conversion, both ITU-R 601 like PDQ's.  A view is any 2-D slice of the
array (no copy).  Hashes agree with ``pdqhash`` on the same luminance to within float rounding; the tests
check the mean distance on the test corpus.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# Order of the eight hashes, as pdqhash.compute_dihedral returns them.
DIHEDRAL_VARIANTS = (
    "original", "rotate90", "rotate180", "rotate270", "flip-x", "flip-y", "flip-plus1", "flip-minus1",
)
_OUT = 64  # side of the decimated buffer
_PASSES = 2  # Jarosz passes per axis
_MIN_SIDE = 5  # the reference hashes smaller images as all zeros, quality 0

# DCT matrix of the reference: D[i, j] = sqrt(2/64) cos(pi / 128 * (i + 1) * (2j + 1)), i < 16.
_DCT = (math.sqrt(2.0 / _OUT) * np.cos(
    np.pi / (2 * _OUT) * np.outer(np.arange(1, 17), 2 * np.arange(_OUT) + 1))).astype(np.float32)
# Flipping the 64 x 64 buffer along an axis multiplies frequency k = i + 1 of that axis by (-1)^k.
_SIGN = np.where(np.arange(1, 17) % 2 == 1, -1.0, 1.0).astype(np.float32)
# The eight variants of DIHEDRAL_VARIANTS as (the DCT (0) or its transpose (1)) times sign changes, as in
# dihedral_hashes: for the batched hashes of padded_dihedral_hashes.
_VARIANT_SOURCE = np.array([0, 1, 0, 1, 0, 0, 1, 1])
_ONES = np.ones(16, dtype=np.float32)
_VARIANT_SIGNS = np.stack([np.outer(r, c) for r, c in (
    (_ONES, _ONES), (_SIGN, _ONES), (_SIGN, _SIGN), (_ONES, _SIGN), (_SIGN, _ONES), (_ONES, _SIGN), (_ONES, _ONES),
    (_SIGN, _SIGN),
)])


def _box_right(u: np.ndarray, left: int, right: int) -> np.ndarray:
    """``u @ B`` for the reference's box filter ``B`` over ``u.shape[1]`` samples: output ``o`` of ``B v``
    averages ``v[o - left : o + right + 1]`` (clipped), so column ``p`` of ``u @ B`` sums ``u[:, o] / size(o)``
    over ``o`` in ``[p - right, p + left]``."""
    n = u.shape[1]
    o = np.arange(n)
    size = np.minimum(n - 1, o + right) - np.maximum(0, o - left) + 1
    cs = np.zeros((u.shape[0], n + 1))
    np.cumsum(u / size, axis=1, out=cs[:, 1:])
    return cs[:, np.minimum(n, o + left + 1)] - cs[:, np.maximum(0, o - right)]


@functools.lru_cache(maxsize=512)
def _axis_taps(n: int, pad_lo: int = 0, pad_hi: int = 0, scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(indices (64, K), weights (64, K)) such that output sample ``o`` of an axis of ``n`` samples, after
    the Jarosz passes and the decimation, is ``sum(weights[o] * x[indices[o]])``.

    ``scale`` > 1: each sample is the mean of ``scale`` pixels of the full-resolution image (a JPEG
    decoded at 1/2, 1/4 or 1/8 scale, or an image reduced by block averaging); the filter is the one
    the reference applies to the full-resolution axis, summed over each block, so the result is close
    to the full decode's hash.  ``pad_lo`` / ``pad_hi``: the axis is first extended by that many samples
    at each end, repeating the edge sample (no copy: the indices point back into the real samples)."""
    blocks = n + pad_lo + pad_hi
    size = blocks * scale
    window = (size + 2 * _OUT - 1) // (2 * _OUT)
    half = (window + 2) // 2
    left, right = window - half, half - 1  # the reference's box window: [o - left, o + right], clipped
    rows = np.zeros((_OUT, size))
    rows[np.arange(_OUT), ((np.arange(_OUT) + 0.5) * size / _OUT).astype(np.int64)] = 1.0
    for _ in range(_PASSES):
        rows = _box_right(rows, left, right)
    if scale > 1:
        rows = rows.reshape(_OUT, blocks, scale).sum(axis=2)
    nonzero = rows != 0
    first = np.argmax(nonzero, axis=1)
    last = blocks - 1 - np.argmax(nonzero[:, ::-1], axis=1)
    k = int((last - first).max()) + 1
    start = np.clip(first, 0, blocks - k)
    virtual = start[:, None] + np.arange(k)
    weights = np.take_along_axis(rows, virtual, axis=1).astype(np.float32)
    return np.clip(virtual - pad_lo, 0, n - 1), weights


def _downsample(luma: np.ndarray, pad: tuple[int, int, int, int] = (0, 0, 0, 0), scale: int = 1) -> np.ndarray:
    """The reference's 64 x 64 buffer of a 2-D luminance array (any dtype, any strides), optionally of
    the array extended by margins ``pad`` = (top, bottom, left, right) that repeat its edge pixels.
    ``scale``: see :func:`_axis_taps`."""
    h, w = luma.shape
    ri, rw = _axis_taps(h, pad[0], pad[1], scale)
    ci, cw = _axis_taps(w, pad[2], pad[3], scale)
    # Along the rows first: 64 x K x w, weighted sum -> 64 x w.  Then along the columns.
    rows = luma[ri]  # one gather: 64 x K x w
    tmp = np.einsum("ok,okw->ow", rw, rows if rows.dtype == np.float32 else rows.astype(np.float32))
    return np.einsum("ok,hok->ho", cw, tmp[:, ci])


def _quality(buf: np.ndarray) -> int:
    """The reference's gradient-sum quality of a 64 x 64 buffer (0..100)."""
    dv = np.trunc((buf[:-1, :] - buf[1:, :]) * 100 / 255)
    dh = np.trunc((buf[:, :-1] - buf[:, 1:]) * 100 / 255)
    total = int(np.abs(dv).sum(dtype=np.float64)) + int(np.abs(dh).sum(dtype=np.float64))
    return min(100, total // 90)


@functools.lru_cache(maxsize=256)
def _margin_samples(n: int, pad_lo: int, pad_hi: int) -> tuple[int, int]:
    """How many of the 64 samples of an axis of ``n`` samples extended by ``pad_lo`` / ``pad_hi`` are
    centred in the margins."""
    centres = (np.arange(_OUT) + 0.5) * (n + pad_lo + pad_hi) / _OUT
    return int(np.count_nonzero(centres < pad_lo)), int(np.count_nonzero(centres >= pad_lo + n))


@functools.lru_cache(maxsize=256)
def _faded_dct(lo: int, hi: int, fade: float) -> tuple[np.ndarray, np.ndarray]:
    """The DCT along an axis whose ``lo`` first and ``hi`` last samples (of 64) are margins, faded: a margin
    sample ``d`` samples from the edge becomes ``m + (edge - m) * fade ** d``, ``m`` the mean of the
    buffer outside the margins (the best guess of the missing picture: its edge nearby, its mean further
    out, as values of natural images decorrelate with distance).  Linear, so folded into the DCT:
    ``(D F, D F 1)`` with ``F`` the fading without the mean (16 x 64, 16); the DCT of the faded buffer is
    ``(D F_r) buf (D F_c)^T - m (D F_r 1)(D F_c 1)^T`` (the DCT rows sum to zero, so ``m`` itself drops out)."""
    fading = np.zeros((_OUT, _OUT))
    for o in range(_OUT):
        src = min(max(o, lo), _OUT - 1 - hi)
        fading[o, src] = fade ** abs(o - src)
    dct = _DCT.astype(np.float64) @ fading
    return dct.astype(np.float32), dct.sum(axis=1).astype(np.float32)


@functools.lru_cache(maxsize=128)
def _stacked_taps(n: int, pads: tuple[tuple[int, int], ...], scale: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_axis_taps` of several margins of one axis, stacked ((V, 64, K) each, zero weights padding
    the shorter ones)."""
    taps = [_axis_taps(n, lo, hi, scale) for lo, hi in pads]
    k = max(i.shape[1] for i, _ in taps)
    idx = np.zeros((len(taps), _OUT, k), dtype=np.int64)
    wts = np.zeros((len(taps), _OUT, k), dtype=np.float32)
    for v, (i, w) in enumerate(taps):
        idx[v, :, : i.shape[1]] = i
        wts[v, :, : w.shape[1]] = w
    return idx, wts


def padded_dihedral_hashes(
    luma: np.ndarray, pads: tuple[tuple[int, int, int, int], ...], fades: tuple[float, ...], scale: int = 1
) -> list[tuple[tuple[bytes, ...], int]]:
    """:func:`dihedral_hashes` of ``luma`` extended by each of several margins ``pads`` (with its ``fades``),
    computed together: one gather and one weighted sum per axis for all of them, one batched DCT."""
    if luma.ndim != 2:
        raise ValueError(f"PDQ needs a 2-D array, got shape {luma.shape}")
    if not pads:
        return []
    if min(luma.shape) * scale < _MIN_SIDE:
        return [((bytes(32),) * len(DIHEDRAL_VARIANTS), 0)] * len(pads)
    h, w = luma.shape
    ri, rw = _stacked_taps(h, tuple((p[0], p[1]) for p in pads), scale)
    ci, cw = _stacked_taps(w, tuple((p[2], p[3]) for p in pads), scale)
    v = len(pads)
    # Gathers of whole rows (contiguous) are fast: along the rows of the luminance first, then along the
    # rows of the transposed intermediate, every view at once (its rows offset by V * w).
    rows = luma[ri.reshape(v * _OUT, -1)]  # (V * 64, K, w)
    tmp = np.matmul(rw.reshape(v * _OUT, 1, -1), rows if rows.dtype == np.float32 else rows.astype(np.float32))
    tmp_t = np.ascontiguousarray(tmp.reshape(v, _OUT, w).transpose(0, 2, 1)).reshape(v * w, _OUT)
    cols = tmp_t[(ci + (np.arange(v) * w)[:, None, None]).reshape(v * _OUT, -1)]  # (V * 64, K, 64)
    bufs = np.matmul(cw.reshape(v * _OUT, 1, -1), cols).reshape(v, _OUT, _OUT).transpose(0, 2, 1)
    b = _DCT @ bufs @ _DCT.T  # (V, 16, 16); the quality below is the view's before any fading
    for k, (pad, fade) in enumerate(zip(pads, fades, strict=True)):
        if fade < 1.0:
            (top, bottom), (left, right) = _margin_samples(h, pad[0], pad[1]), _margin_samples(w, pad[2], pad[3])
            (dr, ur), (dc, uc) = _faded_dct(top, bottom, fade), _faded_dct(left, right, fade)
            mean = bufs[k, top:_OUT - bottom, left:_OUT - right].mean(dtype=np.float32)
            b[k] = dr @ bufs[k] @ dc.T - mean * np.outer(ur, uc)
    # Quality and hashes of every buffer at once, as in dihedral_hashes.
    dv = np.trunc((bufs[:, :-1, :] - bufs[:, 1:, :]) * 100 / 255)
    dh = np.trunc((bufs[:, :, :-1] - bufs[:, :, 1:]) * 100 / 255)
    totals = np.abs(dv).sum(axis=(1, 2), dtype=np.float64).astype(np.int64) + \
        np.abs(dh).sum(axis=(1, 2), dtype=np.float64).astype(np.int64)
    coeffs = (np.stack((b, b.transpose(0, 2, 1)), axis=1)[:, _VARIANT_SOURCE] * _VARIANT_SIGNS).reshape(v, 8, 256)
    median = np.partition(coeffs, 127, axis=2)[:, :, 127:128]
    packed = np.packbits((coeffs > median)[:, :, ::-1], axis=2)
    return [(tuple(row.tobytes() for row in packed[k]), min(100, int(totals[k]) // 90)) for k in range(v)]


def dihedral_hashes(
    luma: np.ndarray, pad: tuple[int, int, int, int] = (0, 0, 0, 0), scale: int = 1
) -> tuple[tuple[bytes, ...], int]:
    """The eight dihedral PDQ hashes of ``luma`` (32 bytes each, standard hex order) and its quality;
    with ``pad``, of ``luma`` extended by margins (top, bottom, left, right) repeating its edges; with
    ``scale``, of the full-resolution image whose ``scale`` x ``scale`` block means ``luma`` holds."""
    if luma.ndim != 2:
        raise ValueError(f"PDQ needs a 2-D array, got shape {luma.shape}")
    if min(luma.shape) * scale < _MIN_SIDE:  # the reference's answer for images too small to hash
        return (bytes(32),) * len(DIHEDRAL_VARIANTS), 0
    buf = _downsample(luma, pad, scale)
    quality = _quality(buf)
    b = _DCT @ buf @ _DCT.T  # (16, 16), row = vertical frequency
    s_rows, s_cols = _SIGN[:, None], _SIGN[None, :]
    t = b.T
    coeffs = np.stack((
        b,                   # original
        t * s_rows,          # rotate90 (counter-clockwise): flip the transpose upside down
        b * s_rows * s_cols,  # rotate180
        t * s_cols,          # rotate270
        b * s_rows,          # flip-x: mirror top-bottom (pdqhash's name: the flip is about the x axis)
        b * s_cols,          # flip-y: mirror left-right
        t,                   # flip-plus1: transpose
        t * s_rows * s_cols,  # flip-minus1: anti-transpose
    )).reshape(8, 256)
    median = np.partition(coeffs, 127, axis=1)[:, 127:128]  # the lower median, like the reference's Torben
    # Bit k = 16 i + j of the reference is set when coefficient (i, j) is above the median; the standard
    # hex order writes bit 255 first.
    bits = (coeffs > median)[:, ::-1]
    packed = np.packbits(bits, axis=1)
    return tuple(row.tobytes() for row in packed), quality
