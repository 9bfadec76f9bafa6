"""Decode untrusted image bytes once and turn them into matcher signals (PDQ, optional JPEG).

:func:`prepare` is a top-level pure function so that it can run in a decode worker process:
it takes bytes and a frozen config section and returns a :class:`PreparedMedia` (no pixels kept), or
raises :class:`Unscannable` with a short reason slug.

PDQ hashes are stored as 32 bytes in the standard PDQ hex order (the order of Meta's reference
implementation and python-threatexchange): bit ``i`` of ``pdqhash``'s 256-element vector is bit
``7 - i % 8`` of byte ``i // 8``, i.e. ``np.packbits(vector)``; ``bytes.hex()`` then gives the usual
64-character hex string.
"""

from __future__ import annotations

import io
import math
import threading
import warnings

import numpy as np
import pdqhash
from PIL import Image, ImageFile, ImageMode, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from service.config.matching import ThumbnailSection
from service.errors import Unscannable
from service.media import pdq
from service.media import views as views_module
from service.media.pdq import DIHEDRAL_VARIANTS, hash_views, kernel_array
from service.media.views import ORIGINAL, View, derived_views
from service.models import PdqSignal, PreparedMedia

__all__ = ["DIHEDRAL_VARIANTS", "decoded_bytes", "pdq_bytes", "pdq_signal", "prepare", "warm_up"]

# Formats Pillow reports for files that are JPEGs with extra data (MPO: phones' multi-picture JPEGs).
_FORMAT_ALIASES = {"MPO": "JPEG"}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_MAX_JPEG_SIDE = 65_000  # libjpeg's limit is 65,500
_MIN_JPEG_QUALITY = 50
_ROWS_BYTES = 16 * 1024 * 1024  # float working memory per band of rows in _wide_to_l
VIEW_QUALITY_MIN = 50  # derived views of lower PDQ quality are dropped (mostly flat what is left)
# A JPEG is decoded for PDQ at 1/2, 1/4 or 1/8 scale as long as its longest side stays at least this: PDQ
# low-pass filters to 64 x 64 anyway, and with the filter taps of the full-resolution image (see
# service.media.pdq) the hashes stay within a bit or two of the full decode's (tests/test_pdq_views.py).
PDQ_DECODE_MIN_SIDE = 320

# ``warnings.catch_warnings`` swaps process-global state: serialise the few lines that use it so that
# concurrent calls (cpu_pool: thread) cannot restore each other's filters in the wrong order.
_open_lock = threading.Lock()


def pdq_bytes(vector: np.ndarray | list[int]) -> bytes:
    """pdqhash's bit vector (256 ints, 0/1) as 32 bytes in standard PDQ hex order."""
    return np.packbits(np.asarray(vector, dtype=np.uint8)).tobytes()


def pdq_signal(rgb: Image.Image) -> PdqSignal:
    """The reference: PDQ of all eight dihedral variants of an RGB image by ``pdqhash`` (tests and the
    benchmark compare :func:`prepare`'s hashes with it)."""
    vectors, quality = pdqhash.compute_dihedral(np.asarray(rgb))
    packed = np.packbits(np.asarray(vectors, dtype=np.uint8), axis=1)
    return PdqSignal(hashes=tuple(row.tobytes() for row in packed), quality=int(quality))


def pdq_signals(
    luma: np.ndarray, cfg: ThumbnailSection, scale: int = 1
) -> tuple[PdqSignal, tuple[PdqSignal, ...]]:
    """PDQ (eight dihedral variants) of a 2-D luminance array and of its derived views (the variants each
    view keeps); views whose quality is under :data:`VIEW_QUALITY_MIN` are left out.  ``scale``: each value
    of ``luma`` is the mean of ``scale`` x ``scale`` pixels of the image."""
    luma = kernel_array(luma)
    h, w = luma.shape
    # Views of the same pixels that differ only in their margins (the image itself and its uncrop views)
    # are hashed in one call.
    groups: dict[tuple[int, int, int, int], list[View]] = {(0, h, 0, w): [View(ORIGINAL, 0, h, 0, w)]}
    for view in derived_views(luma, cfg.views):
        groups.setdefault((view.top, view.bottom, view.left, view.right), []).append(view)
    signals: list[PdqSignal] = []
    for box, members in groups.items():
        results = hash_views(luma, box, tuple(v.pad for v in members), tuple(v.fade for v in members), scale,
                             tuple(v.variants for v in members))
        signals += [PdqSignal(hashes=hashes, quality=quality, view=v.name, variants=v.variants)
                    for v, (hashes, quality) in zip(members, results, strict=True)]
    views = tuple(s for s in signals[1:] if s.quality >= VIEW_QUALITY_MIN)
    return signals[0], views


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels :func:`prepare` runs, before the first upload."""
    pdq.warm_up()
    views_module.warm_up()


def prepare(
    data: bytes,
    sha1: str,
    cfg: ThumbnailSection,
    *,
    md5: str | None = None,
    source: str = "thumbnail",
) -> PreparedMedia:
    """Decode ``data`` (first frame), apply EXIF orientation, flatten alpha onto white, compute PDQ of the
    image and of its derived views (``cfg.views``) and, when ``cfg.make_jpeg``, a JPEG for remote matchers.

    PDQ is computed from luminance only: a JPEG that no remote matcher needs in colour is decoded to its
    Y channel alone, at a reduced scale (:data:`PDQ_DECODE_MIN_SIDE`).

    Raises :class:`Unscannable` with reason ``decompression-bomb``, ``too-large-decoded`` (the decoded
    pixels would exceed ``cfg.max_decoded_bytes``), ``decoder-memory``, ``format-not-allowed`` or
    ``undecodable``.
    """
    img = _open(data, cfg)
    sw, sh = img.size  # as stored
    if not isinstance(img, JpegImageFile):  # before anything reads pixels (a PNG's EXIF lookup decodes it)
        _check_decoded_size(img, cfg)
    width, height = sw, sh
    if _orientation(img) in (5, 6, 7, 8):
        width, height = height, width

    if isinstance(img, JpegImageFile):  # MPO files are JpegImageFiles too
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: never below what we need.  Without a JPEG to make,
        # only the Y channel is decoded (PDQ's luminance, without colour conversion).
        need_scale = min(1.0, PDQ_DECODE_MIN_SIDE / max(width, height))
        if cfg.make_jpeg:
            need_scale = max(min(1.0, cfg.pdq_max_side / max(width, height)),
                             min(1.0, cfg.jpeg_min_side / min(width, height)))
        img.draft("RGB" if cfg.make_jpeg else "L",
                  (max(1, math.ceil(sw * need_scale)), max(1, math.ceil(sh * need_scale))))
        _check_decoded_size(img, cfg)  # at the size libjpeg will decode to

    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Unscannable("decompression-bomb", str(exc)) from exc
    except MemoryError as exc:
        raise Unscannable("decoder-memory", "out of memory while decoding") from exc
    except Exception as exc:  # any decoder failure on untrusted bytes means "undecodable"
        raise Unscannable("undecodable", f"{type(exc).__name__}: {exc}") from exc

    scale = max(1, round(sw / img.size[0]))  # libjpeg's reduction: 1, 2, 4 or 8
    jpeg = None
    try:
        upright = _upright(img)
        if cfg.make_jpeg:
            rgb = _to_rgb(upright)
            jpeg = _make_jpeg(rgb, _resize_to_fit(rgb, cfg.pdq_max_side), cfg)
            luma = rgb.convert("L")
        else:
            luma = _to_luma(upright)
        # Block means, so that the hash is still the full image's (see service.media.pdq).
        factor = math.ceil(max(luma.size) / cfg.pdq_max_side)
        if factor > 1:
            luma = luma.reduce(factor)
            scale *= factor
    except MemoryError as exc:
        raise Unscannable("decoder-memory", "out of memory while converting") from exc
    except Exception as exc:  # conversion of exotic modes
        raise Unscannable("undecodable", f"{type(exc).__name__}: {exc}") from exc

    signal, views = pdq_signals(np.asarray(luma, dtype=np.float32), cfg, scale)
    return PreparedMedia(
        sha1=sha1, md5=md5, pdq=signal, jpeg=jpeg, width=width, height=height, source=source, pdq_views=views
    )


# --------------------------------------------------------------------------- decoding steps

def _open(data: bytes, cfg: ThumbnailSection) -> ImageFile.ImageFile:
    """Open (header only) with the bomb limit in force; check the format before any pixel is decoded."""
    with _open_lock, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels
        try:
            # Only the allowed formats' parsers ever see the bytes (JPEG's also opens MPO files).
            img = Image.open(io.BytesIO(data), formats=cfg.formats)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Unscannable("decompression-bomb", str(exc)) from exc
        except UnidentifiedImageError as exc:
            raise Unscannable(
                "format-not-allowed",
                f"not an image in an allowed format ({', '.join(cfg.formats)}); starts with {data[:8]!r}",
            ) from exc
        except Exception as exc:  # broken headers
            raise Unscannable("undecodable", f"{type(exc).__name__}: {exc}") from exc
    fmt = _FORMAT_ALIASES.get(img.format or "", img.format or "")
    if fmt not in cfg.formats:
        img.close()
        raise Unscannable("format-not-allowed", f"format {img.format} is not in {', '.join(cfg.formats)}")
    w, h = img.size
    if w < 1 or h < 1:
        img.close()
        raise Unscannable("undecodable", f"empty image {w}x{h}")
    if w * h > cfg.max_pixels:  # also covers a warnings filter changed by someone else
        img.close()
        raise Unscannable("decompression-bomb", f"{w}x{h} pixels exceeds the limit of {cfg.max_pixels}")
    return img


def decoded_bytes(mode: str, width: int, height: int) -> int:
    """Memory for the decoded pixels: width x height x bytes per pixel, every band at its bit depth
    (I;16: 2, I and F: 4, RGB: 3, RGBA and CMYK: 4, LA: 2, P and L: 1; mode 1 is stored a byte a pixel)."""
    try:
        spec = ImageMode.getmode(mode)
        per_pixel = np.dtype(spec.typestr).itemsize * len(spec.bands)
    except (KeyError, TypeError):  # a mode Pillow does not describe: assume the widest common one
        per_pixel = 8
    return width * height * per_pixel


def _check_decoded_size(img: Image.Image, cfg: ThumbnailSection) -> None:
    w, h = img.size
    size = decoded_bytes(img.mode, w, h)
    if size > cfg.max_decoded_bytes:
        img.close()
        raise Unscannable("too-large-decoded", f"{w}x{h} {img.mode} decodes to {size} bytes, over the budget of "
                                               f"{cfg.max_decoded_bytes}")


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:  # broken EXIF must not make an image unscannable
        return 1


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as stored."""
    if _orientation(img) == 1:
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (what a viewer on a white page shows)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("RGB", "L") and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode.startswith("I;16") or mode in ("I", "F"):
        img = _wide_to_l(img)
    if img.mode in _ALPHA_MODES:
        # Pasted through its own alpha onto opaque white: the same blend as compositing, with one full-size
        # copy (the white page) instead of four, so a large transparent image stays inside the memory budget.
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        page = Image.new("RGB", rgba.size, (255, 255, 255))
        page.paste(rgba, mask=rgba.getchannel("A"))
        return page
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_luma(img: Image.Image) -> Image.Image:
    """Mode ``L`` (ITU-R 601 luminance, PDQ's), with any transparency composited onto white first."""
    if img.mode == "L" and "transparency" not in img.info:
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return _wide_to_l(img)
    return _to_rgb(img).convert("L")


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8 bits, stretched over the value range actually used.

    Converted in bands of rows: a float copy of the whole image would need 8 bytes a pixel (about 1 GB at
    120 megapixels, several times that during the arithmetic)."""
    lo_v, hi_v = img.getextrema()
    lo, hi = float(lo_v), float(hi_v)  # type: ignore[arg-type]
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:  # flat, or a float image with NaN/infinity
        return Image.new("L", img.size, 0)
    w, h = img.size
    out = np.empty((h, w), dtype=np.uint8)
    scale = 255.0 / (hi - lo)
    step = max(1, _ROWS_BYTES // (w * 8))
    for top in range(0, h, step):
        rows = np.asarray(img.crop((0, top, w, min(h, top + step))), dtype=np.float64)
        rows = np.nan_to_num(rows, nan=lo, posinf=hi, neginf=lo, copy=False)  # NaN in a float image: black
        out[top:top + rows.shape[0]] = ((rows - lo) * scale).astype(np.uint8)
    return Image.fromarray(out, "L")


def _scaled(img: Image.Image, scale: float, *, at_least: int = 1) -> Image.Image:
    """``img`` scaled by ``scale``; with ``at_least``, neither side ends up shorter than that."""
    w, h = img.size
    size = (max(at_least, round(w * scale)), max(at_least, round(h * scale)))
    if size == img.size:
        return img
    if scale < 1:
        return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return img.resize(size, Image.Resampling.BICUBIC)


def _resize_to_fit(img: Image.Image, max_side: int) -> Image.Image:
    longest = max(img.size)
    return img if longest <= max_side else _scaled(img, max_side / longest)


def _make_jpeg(rgb: Image.Image, pdq_img: Image.Image, cfg: ThumbnailSection) -> bytes | None:
    """A JPEG of at least ``jpeg_min_side`` on both sides and under ``jpeg_max_bytes``, or None when no
    such JPEG exists (extreme aspect ratios)."""
    base = pdq_img
    if min(base.size) < cfg.jpeg_min_side:
        scale = cfg.jpeg_min_side / min(rgb.size)
        if max(rgb.size) * scale > _MAX_JPEG_SIDE:
            return None
        base = _scaled(rgb, scale, at_least=cfg.jpeg_min_side)
    quality = cfg.jpeg_quality
    while True:
        out = io.BytesIO()
        base.save(out, "JPEG", quality=quality)
        if out.tell() < cfg.jpeg_max_bytes:
            return out.getvalue()
        if quality > _MIN_JPEG_QUALITY:
            quality = max(_MIN_JPEG_QUALITY, quality - 15)
            continue
        shrink = max(0.5, math.sqrt(cfg.jpeg_max_bytes / out.tell()) * 0.95)
        if min(base.size) * shrink < cfg.jpeg_min_side:
            return None
        base = _scaled(base, shrink, at_least=cfg.jpeg_min_side)
