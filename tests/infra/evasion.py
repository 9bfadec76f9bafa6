"""Edits made to dodge hash lists (borders, caption strips, crops), applied to freely licensed sample photos.

The photos are the natural images shipped inside the scikit-image wheel (``skimage/data``): NASA and SpaceX
images released into the public domain (astronaut, hubble_deep_field, rocket), CC0 photos (camera,
chelsea, coffee, retina, cell, brick, grass, gravel, clock_motion) and images with no known copyright
restrictions (coins, ihc).  They are read as files; scikit-image itself is not imported.

``benign_set`` cuts them into tiles of varied size and position: a bank half from the left part of each
photo, a query half from the right part (no shared pixels), so that no query is a copy of a bank image.
"""

from __future__ import annotations

import functools
import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pdqhash
from PIL import Image, ImageDraw, ImageFont

from tests.infra.images import jpeg_bytes

PHOTOS = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "hubble_deep_field.jpg",
    "ihc.png", "retina.jpg", "rocket.jpg", "cell.png", "clock_motion.png", "brick.png", "grass.png",
    "gravel.png",
)
# The photos evasions are measured on (clock_motion is too flat, PDQ quality < 50 at 330 px, and the textures
# are used for the benign set only).
KNOWN = PHOTOS[:10]
BORDER_KINDS = ("black", "white", "colour", "gradient", "noise")
_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
_CAPTION = "SHARE IF YOU AGREE lol"


def data_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    return path if (path / PHOTOS[0]).is_file() else None


@functools.lru_cache(maxsize=32)
def sample_photo(name: str) -> Image.Image:
    path = data_dir()
    if path is None:
        raise FileNotFoundError("scikit-image's sample photos are not installed (pip install scikit-image)")
    with Image.open(path / name) as img:
        return img.convert("RGB")


def known_photo(name: str) -> Image.Image:
    """A sample photo at most 640 px a side: the known image a bank holds (and edits start from)."""
    img = sample_photo(name)
    scale = 640 / max(img.size)
    return img if scale >= 1 else img.resize((round(img.width * scale), round(img.height * scale)),
                                             Image.Resampling.LANCZOS)


def thumbnail(img: Image.Image, width: int = 330) -> Image.Image:
    """What the wiki serves: ``width`` px wide, Lanczos, as a decoded image."""
    return img.resize((width, max(1, round(width * img.height / img.width))), Image.Resampling.LANCZOS)


def as_upload(img: Image.Image, *, quality: int = 80, width: int = 330) -> bytes:
    """The edited image as recompressed JPEG, then as the wiki's JPEG thumbnail of it."""
    with Image.open(io.BytesIO(jpeg_bytes(img, quality=quality))) as recompressed:
        return jpeg_bytes(thumbnail(recompressed.convert("RGB"), width), quality=85)


# --------------------------------------------------------------------------- edits

def add_border(img: Image.Image, share: float, kind: str, seed: int = 0) -> Image.Image:
    """``img`` on a canvas larger by ``share`` of each side at every edge."""
    w, h = img.size
    bw, bh = max(1, round(w * share)), max(1, round(h * share))
    size = (w + 2 * bw, h + 2 * bh)
    rng = np.random.default_rng(seed)
    if kind == "black":
        canvas = Image.new("RGB", size, (0, 0, 0))
    elif kind == "white":
        canvas = Image.new("RGB", size, (255, 255, 255))
    elif kind == "colour":
        canvas = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    elif kind == "gradient":
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, size[0], dtype=np.float32)[None, :, None]
        row = a * (1 - t) + b * t
        canvas = Image.fromarray(np.broadcast_to(row, (size[1], size[0], 3)).astype(np.uint8), "RGB")
    elif kind == "noise":
        base = rng.integers(40, 216, 3)
        noise = rng.normal(0, 6, (size[1], size[0], 3))
        canvas = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    else:
        raise ValueError(kind)
    canvas.paste(img, (bw, bh))
    return canvas


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in _FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def add_caption(img: Image.Image, share: float, where: str = "top", *, dark: bool = False) -> Image.Image:
    """``img`` with a strip of ``share`` of its height added at the top or bottom, holding a line of text."""
    w, h = img.size
    strip = max(8, round(h * share))
    bg, fg = ((0, 0, 0), (255, 255, 255)) if dark else ((255, 255, 255), (0, 0, 0))
    canvas = Image.new("RGB", (w, h + strip), bg)
    canvas.paste(img, (0, strip if where == "top" else 0))
    top = 0 if where == "top" else h
    draw = ImageDraw.Draw(canvas)
    font = _font(max(6, int(strip * 0.55)))
    text_w = draw.textlength(_CAPTION, font=font)
    draw.text(((w - text_w) / 2, top + strip * 0.2), _CAPTION, fill=fg, font=font)
    return canvas


def crop(img: Image.Image, share: float) -> Image.Image:
    """``img`` without ``share`` of each side at every edge."""
    w, h = img.size
    dx, dy = round(w * share), round(h * share)
    return img.crop((dx, dy, w - dx, h - dy))


ONE_SIDED = ("top", "bottom", "left", "right", "top-left", "top-right", "bottom-left", "bottom-right")


def crop_side(img: Image.Image, share: float, where: str) -> Image.Image:
    """``img`` without ``share`` of its width (height) on the left or right (top or bottom) only, or on both
    sides of one corner (``where`` in :data:`ONE_SIDED`)."""
    if where not in ONE_SIDED:
        raise ValueError(where)
    w, h = img.size
    dx, dy = round(w * share), round(h * share)
    return img.crop((dx if "left" in where else 0, dy if "top" in where else 0,
                     w - dx if "right" in where else w, h - dy if "bottom" in where else h))


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    **{f"border {k} {p}%": (lambda img, k=k, p=p: add_border(img, p / 100, k)) for k in BORDER_KINDS
       for p in (2, 4, 6, 10)},
    **{f"caption {w} {p}%": (lambda img, w=w, p=p: add_caption(img, p / 100, w, dark=(p == 12)))
       for w in ("top", "bottom") for p in (8, 12, 20)},
    **{f"crop {p}%": (lambda img, p=p: crop(img, p / 100)) for p in (2, 3, 4, 6, 8, 10)},
}


# --------------------------------------------------------------------------- benign images

def benign_set(count: int, *, half: str, seed: int = 0) -> list[Image.Image]:
    """``count`` tiles (96 to 256 px, varied aspect) of the sample photos: ``half`` "bank" takes them from
    the left 45 % of each photo, "query" from the right 45 %."""
    rng = np.random.default_rng(seed + (0 if half == "bank" else 1))
    photos = [sample_photo(n) for n in PHOTOS]
    out = []
    while len(out) < count:
        img = photos[len(out) % len(photos)]
        w, h = img.size
        region = (0, int(w * 0.45)) if half == "bank" else (w - int(w * 0.45), w)
        tw = int(rng.integers(48, min(256, region[1] - region[0]) + 1))
        th = int(rng.integers(48, min(256, h) + 1))
        x = int(rng.integers(region[0], region[1] - tw + 1))
        y = int(rng.integers(0, h - th + 1))
        tile = img.crop((x, y, x + tw, y + th))
        if rng.random() < 0.5:  # some at a larger scale, as a thumbnail of a bigger crop would be
            tile = tile.resize((tw * 2, th * 2), Image.Resampling.BICUBIC)
        out.append(tile)
    return out


# --------------------------------------------------------------------------- measuring

def reference_hash(img: Image.Image) -> bytes:
    """The image's PDQ as a hash list holds it: pdqhash on the full-size RGB image."""
    vector, _ = pdqhash.compute(np.asarray(img.convert("RGB")))
    return np.packbits(np.asarray(vector, dtype=np.uint8)).tobytes()


def write_bank(path: Path, hashes: list[bytes], prefix: str) -> Path:
    """A bank CSV of PDQ hashes, ids ``{prefix}-{index}``."""
    with open(path, "w") as f:
        f.write("hash,category,source,id\n")
        for i, h in enumerate(hashes):
            f.write(f"{h.hex()},test,test,{prefix}-{i}\n")
    return path
