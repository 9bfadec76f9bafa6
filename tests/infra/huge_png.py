"""A 10950 x 10950 16-bit greyscale PNG (just under the 120-megapixel limit) written without holding its
pixels: rows are streamed through zlib, so it costs about 240 MB of CPU work and ~1 MB of disk, once
(cached under the system temp directory)."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

SIDE = 10950


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def write_grey16(path: Path, width: int = SIDE, height: int = SIDE) -> None:
    """A vertical ramp (each row one 16-bit value) plus a lighter band: not uniform, so a decoder has to
    stretch a real value range."""
    comp = zlib.compressobj(6)
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))]
    idat = bytearray()
    for y in range(height):
        value = (y * 65535) // max(height - 1, 1)
        row = struct.pack(">H", value) * width
        if height // 3 <= y < height // 2:
            row = row[: width] + struct.pack(">H", 65535 - value) * (width // 2)
        idat += comp.compress(b"\x00" + row)
        if len(idat) > 1 << 20:
            parts.append(_chunk(b"IDAT", bytes(idat)))
            idat.clear()
    idat += comp.flush()
    parts += [_chunk(b"IDAT", bytes(idat)), _chunk(b"IEND", b"")]
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(b"".join(parts))
    tmp.replace(path)


def grey16_png(width: int = SIDE, height: int = SIDE) -> bytes:
    """The PNG's bytes, generated on first use and cached in the temp directory."""
    path = Path(tempfile.gettempdir()) / f"mediamoderation-grey16-{width}x{height}.png"
    if not path.exists():
        write_grey16(path, width, height)
    return path.read_bytes()
