"""Test videos, audio and documents generated in code (PyAV, Pillow): never real media.

:func:`video` encodes a timeline of generated images (each shown for some seconds) with PyAV; the
other helpers make the bad inputs the decode path must survive and the files wikis receive besides
images (audio, PDF).
"""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Sequence

import av
import numpy as np
from PIL import Image

from tests.infra import images

# (container format, codec, pixel format) per file extension
CODECS = {
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "vp8.webm": ("webm", "libvpx", "yuv420p"),
    "mp4": ("mp4", "mpeg4", "yuv420p"),
}


def video(timeline: Sequence[tuple[Image.Image, float]], *, ext: str = "webm", fps: int = 10,
          size: tuple[int, int] = (320, 240), codec: str | None = None, bit_rate: int = 400_000) -> bytes:
    """A video showing each ``(image, seconds)`` of ``timeline`` in turn, ``size`` pixels at ``fps``."""
    fmt, default_codec, pix = CODECS[ext]
    out = io.BytesIO()
    with av.open(out, mode="w", format=fmt) as container:
        stream = container.add_stream(codec or default_codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = pix
        stream.bit_rate = bit_rate
        if (codec or default_codec) in ("libvpx-vp9", "libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for img, seconds in timeline:
            frame = av.VideoFrame.from_ndarray(np.asarray(img.convert("RGB").resize(size)), format="rgb24")
            for _ in range(max(1, round(seconds * fps))):
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def moving(seed: int, seconds: float, size: tuple[int, int] = (320, 240)) -> list[tuple[Image.Image, float]]:
    """A clean timeline: one generated photo per second."""
    return [(images.photo(seed + i, size), 1.0) for i in range(math.ceil(seconds))]


def with_known(known: Image.Image, *, before: int = 4, shown: float = 3.0, after: int = 4,
               seed: int = 8100) -> list[tuple[Image.Image, float]]:
    """``known`` shown for ``shown`` seconds between ``before`` and ``after`` seconds of other photos."""
    return [*moving(seed, before), (known, shown), *moving(seed + 500, after)]


def corrupt(data: bytes, seed: int = 5) -> bytes:
    """``data`` with its header kept and everything after it replaced with noise."""
    rng = np.random.default_rng(seed)
    return data[:64] + rng.integers(0, 256, len(data) - 64, dtype=np.uint8).tobytes()


def wav(seconds: float = 1.0, freq: float = 440.0, rate: int = 8000) -> bytes:
    """A sine tone as 16-bit mono WAV."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * freq * t) * 12000).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def pdf(pages: Sequence[Image.Image]) -> bytes:
    """A PDF with one page per image (Pillow's PDF writer)."""
    out = io.BytesIO()
    first, *rest = [p.convert("RGB") for p in pages]
    first.save(out, "PDF", save_all=True, append_images=rest, resolution=72.0)
    return out.getvalue()


def apng(frames: Sequence[Image.Image], duration_ms: int = 1000, size: tuple[int, int] = (320, 240)) -> bytes:
    """An animated PNG (APNG) showing each of ``frames`` for ``duration_ms``."""
    out = io.BytesIO()
    first, *rest = [f.convert("RGB").resize(size) for f in frames]
    first.save(out, format="PNG", save_all=True, append_images=rest, duration=duration_ms, loop=0)
    return out.getvalue()


def animated_gif(frames: Sequence[Image.Image], duration_ms: int = 1000, size: tuple[int, int] = (320, 240)) -> bytes:
    """An animated GIF showing each of ``frames`` for ``duration_ms``."""
    out = io.BytesIO()
    first, *rest = [f.convert("RGB").resize(size) for f in frames]
    first.save(out, "GIF", save_all=True, append_images=rest, duration=duration_ms, loop=0)
    return out.getvalue()


def tiff(pages: Sequence[Image.Image], compression: str = "tiff_deflate") -> bytes:
    """A multi-page TIFF with one page per image (Pillow's TIFF writer)."""
    out = io.BytesIO()
    first, *rest = [p.convert("RGB") for p in pages]
    first.save(out, "TIFF", save_all=True, append_images=rest, compression=compression)
    return out.getvalue()


def tiff_many_pages(count: int, side: int = 8) -> bytes:
    """A hostile TIFF: ``count`` tiny grey pages (the page cap, not the byte cap, must stop it), written directly:
    one shared strip of pixels and ``count`` page headers (IFDs) chained one after the other."""
    import struct

    strip = bytes([128]) * (side * side)
    header = b"II*\0" + struct.pack("<I", 8 + len(strip))
    out = bytearray(header + strip)
    tags = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, len(strip))]
    size = 2 + 12 * len(tags) + 4
    for i in range(count):
        next_at = len(out) + size if i < count - 1 else 0
        out += struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
        out += struct.pack("<I", next_at)
    return bytes(out)


def tiff_bomb_page(first: Image.Image, side: int = 60_000) -> bytes:
    """A hostile TIFF: a normal page 1, then a page that declares ``side`` x ``side`` pixels (a decompression bomb:
    a few hundred bytes of deflated zeros would inflate to gigabytes)."""
    import struct
    import zlib

    body = tiff([first])
    assert body[:4] == b"II*\0"
    # Page 2: one strip of deflated zeros (truncated: the decoder must never be reached), 1 bit per pixel.
    strip = zlib.compress(b"\0" * 65536)
    strip_at = len(body)
    ifd_at = strip_at + len(strip) + (len(strip) % 2)
    tags = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 1), (259, 3, 1, 8), (262, 3, 1, 1),
            (273, 4, 1, strip_at), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, len(strip))]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + struct.pack("<I", 0)
    out = bytearray(body + strip + b"\0" * (len(strip) % 2) + ifd)
    # Link page 1's IFD to page 2's: page 1's "next IFD" offset is the 4 bytes after its entries.
    first_ifd = struct.unpack_from("<I", out, 4)[0]
    entries = struct.unpack_from("<H", out, first_ifd)[0]
    struct.pack_into("<I", out, first_ifd + 2 + 12 * entries, ifd_at)
    return bytes(out)


def djvu(pages: Sequence[Image.Image], workdir: str) -> bytes:
    """A bundled multi-page DjVu with one page per image (djvulibre-bin: c44 per page, then djvm)."""
    import os
    import subprocess

    parts = []
    for i, page in enumerate(pages):
        ppm, part = os.path.join(workdir, f"page{i}.ppm"), os.path.join(workdir, f"page{i}.djvu")
        page.convert("RGB").save(ppm)
        subprocess.run(["c44", ppm, part], check=True, capture_output=True)
        parts.append(part)
    bundle = os.path.join(workdir, "doc.djvu")
    subprocess.run(["djvm", "-c", bundle, *parts], check=True, capture_output=True)
    with open(bundle, "rb") as f:
        return f.read()
