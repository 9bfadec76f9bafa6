"""Deterministic, photo-like test images and hostile files.  Never real material.

``photo(seed)`` draws a structured scene (smooth lighting, overlapping shapes, mid-frequency texture and
a little sensor noise) so that PDQ behaves as it does on real photos: quality well above 50, distinct
seeds far apart (typically > 90 bits), and resized / recompressed / mirrored / rotated copies of one
image within distance 31 of it through the dihedral compare.  The scene is drawn in relative
coordinates, so ``photo(seed, size)`` at two sizes shows the same picture.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

DEFAULT_SIZE = (640, 480)


def photo(seed: int, size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """An RGB image of a random scene fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    w, h = size
    u = (np.arange(w, dtype=np.float32) / max(w - 1, 1))[None, :]
    v = (np.arange(h, dtype=np.float32) / max(h - 1, 1))[:, None]

    # Lighting: a tilted gradient plus a few low-frequency waves, per channel.  A plane wave
    # cos(a(u) + b(v)) is computed as cos a cos b - sin a sin b: outer products, no per-pixel cos.
    base = np.empty((h, w, 3), np.float32)
    for c in range(3):
        gx, gy = rng.uniform(-80, 80, 2)
        field = rng.uniform(60, 190) + gx * (u - 0.5) + gy * (v - 0.5)
        for _ in range(3):
            fx, fy = rng.uniform(0.5, 3.5, 2)
            phase = rng.uniform(0, 2 * np.pi)
            a, b = 2 * np.pi * fx * u + phase, 2 * np.pi * fy * v
            field = field + rng.uniform(10, 35) * (np.cos(b) * np.cos(a) - np.sin(b) * np.sin(a))
        base[..., c] = field
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")

    # Objects: overlapping ellipses, rectangles and polygons in random colours.
    draw = ImageDraw.Draw(img)
    scale = min(w, h)
    for _ in range(int(rng.integers(14, 24))):
        kind = int(rng.integers(0, 3))
        cx, cy = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        rx, ry = rng.uniform(0.04, 0.3, 2) * scale
        colour = tuple(int(x) for x in rng.integers(0, 256, 3))
        if kind == 0:
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
        elif kind == 1:
            draw.rectangle((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
        else:
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            pts = [(float(cx + rx * np.cos(a)), float(cy + ry * np.sin(a))) for a in angles]
            draw.polygon(pts, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=scale / 240))

    # Texture: smooth random bumps (upsampled coarse noise) and fine sensor noise.
    arr = np.asarray(img, dtype=np.float32)
    coarse = rng.standard_normal((24, 32), dtype=np.float32)
    bumps = np.asarray(
        Image.fromarray(coarse, "F").resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32
    )
    arr = arr + 14 * bumps[..., None] + 3 * rng.standard_normal((h, w, 3), dtype=np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, quality: int = 90, **kwargs: object) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality, **kwargs)
    return out.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def variants(img: Image.Image) -> dict[str, bytes]:
    """Copies of ``img`` that a perceptual matcher must still recognise, as JPEG bytes."""
    w, h = img.size
    return {
        "resized": jpeg_bytes(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS), quality=85),
        "recompressed": jpeg_bytes(img, quality=60),
        "mirrored": jpeg_bytes(ImageOps.mirror(img)),
        "rotated": jpeg_bytes(img.transpose(Image.Transpose.ROTATE_90)),
    }


# --------------------------------------------------------------------------- hostile and odd files


def truncated_jpeg(seed: int = 11) -> bytes:
    """A real JPEG cut off in the middle of its scan data."""
    data = jpeg_bytes(photo(seed))
    return data[: len(data) * 6 // 10]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def decompression_bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid, small (tens of kB) 1-bit PNG that claims ``width`` x ``height`` pixels of zeros."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    block = row * max(1, 1_000_000 // len(row))
    rows_per_block = len(block) // len(row)
    parts = []
    left = height
    while left > 0:
        n = min(left, rows_per_block)
        parts.append(comp.compress(block if n == rows_per_block else row * n))
        left -= n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def text_as_jpeg() -> bytes:
    """Text a client might upload under a .jpg name: not an image at all."""
    return b"This is not a JPEG file, only text with a misleading name.\n" * 40


def animated_gif(seeds: tuple[int, ...] = (21, 22, 23), size: tuple[int, int] = (320, 240)) -> bytes:
    """An animated GIF, one distinct photo per frame; the first frame shows ``photo(seeds[0])``."""
    quantize = Image.Quantize.FASTOCTREE
    frames = [photo(s, size).quantize(256, quantize, dither=Image.Dither.NONE) for s in seeds]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def _hole(size: tuple[int, int]) -> np.ndarray:
    """Mask of an off-centre ellipse (a full-height band would be invisible to PDQ, which skips the DC
    row and column of its DCT)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx - 0.35 * w) / (0.25 * w)) ** 2 + ((yy - 0.4 * h) / (0.3 * h)) ** 2 <= 1


def rgba_png(seed: int = 31, size: tuple[int, int] = (400, 300)) -> bytes:
    """A photo with a fully transparent elliptical hole, black (not white) colour under the alpha.

    Flattened correctly (onto white) it looks like :func:`rgba_expected`; dropping the alpha would show
    the black instead.
    """
    arr = np.array(photo(seed, size).convert("RGBA"))
    arr[_hole(size)] = 0
    return png_bytes(Image.fromarray(arr, "RGBA"))


def rgba_expected(seed: int = 31, size: tuple[int, int] = (400, 300)) -> Image.Image:
    """What :func:`rgba_png` should look like once flattened onto white."""
    arr = np.array(photo(seed, size))
    arr[_hole(size)] = 255
    return Image.fromarray(arr, "RGB")


def exif_rotated_jpeg(seed: int = 41, size: tuple[int, int] = (480, 360)) -> bytes:
    """``photo(seed, size)`` stored sideways with EXIF Orientation 6, as cameras held upright do.

    The pixels are rotated 90° counter-clockwise; orientation 6 tells viewers to rotate them 90°
    clockwise, so a viewer shows the upright ``photo(seed, size)`` (``size`` wide).
    """
    stored = photo(seed, size).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(stored, exif=exif.tobytes())


def tiny_image(seed: int = 51, size: tuple[int, int] = (50, 40)) -> bytes:
    """A PNG smaller than the 160 px minimum of remote matchers."""
    return png_bytes(photo(seed, size))


def panorama(seed: int = 61, size: tuple[int, int] = (4000, 300)) -> bytes:
    """A very wide JPEG."""
    return jpeg_bytes(photo(seed, size))


# --------------------------------------------------------------------------- PDQ helpers for assertions


def hamming(a: bytes, b: bytes) -> int:
    """Bits that differ between two equal-length hashes."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def dihedral_distance(hashes: tuple[bytes, ...] | list[bytes], reference: bytes) -> int:
    """Smallest distance between ``reference`` and any of an item's (eight) variant hashes."""
    return min(hamming(h, reference) for h in hashes)
