"""Preview images for reviewers: fetched live from the wiki, transformed in memory, never written to disk.

``blur`` (the default) is greyscale and heavily blurred *on the server*, so the clear picture never
reaches the browser unless a reviewer asks for it; ``clear`` is sharp greyscale; ``colour`` sharp colour.
"""

from __future__ import annotations

import io

from PIL import Image, ImageFilter, ImageOps

from service.errors import Unscannable

MODES = ("blur", "clear", "colour")
MAX_SIDE = 480

PLACEHOLDER_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="330" height="220" viewBox="0 0 330 220">'
    '<rect width="330" height="220" fill="#d9d9d9"/>'
    '<text x="165" y="115" font-family="sans-serif" font-size="16" text-anchor="middle" fill="#333">'
    "{text}</text></svg>"
)


def placeholder(text: str) -> bytes:
    """A neutral image that carries only a fixed message (never user data)."""
    return PLACEHOLDER_SVG.format(text=text).encode()


def render(data: bytes, mode: str, *, blur_radius: float, max_pixels: int) -> bytes:
    """Decode, orient, shrink to at most MAX_SIDE and apply the mode; returns JPEG bytes."""
    if mode not in MODES:
        raise ValueError(f"unknown preview mode {mode!r}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise Unscannable("decompression-bomb", f"{img.width}x{img.height}")
            img.draft("RGB", (MAX_SIDE, MAX_SIDE))
            frame = ImageOps.exif_transpose(img)
            frame = frame.convert("RGBA") if frame.mode in ("P", "LA", "PA") else frame
            if frame.mode == "RGBA":
                flat = Image.new("RGB", frame.size, (255, 255, 255))
                flat.paste(frame, mask=frame.getchannel("A"))
                frame = flat
            frame = frame.convert("RGB")
            frame.thumbnail((MAX_SIDE, MAX_SIDE))
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise Unscannable("undecodable", str(exc)) from exc
    if mode != "colour":
        frame = frame.convert("L")
    if mode == "blur":
        # Shrink first: blurring a 1/8-size image is cheap and removes detail for good.
        small = frame.resize((max(1, frame.width // 8), max(1, frame.height // 8)), Image.Resampling.BILINEAR)
        small = small.filter(ImageFilter.GaussianBlur(max(1.0, blur_radius / 8)))
        frame = small.resize(frame.size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(blur_radius / 2))
    out = io.BytesIO()
    frame.save(out, "JPEG", quality=80)
    return out.getvalue()
