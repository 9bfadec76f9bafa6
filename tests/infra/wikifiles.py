"""Thousands of generated files on a real test wiki, in seconds.

Uploading through the API (or ``importImages.php``) costs ~30 ms per file on this machine, which
makes a backfill test of a few thousand files take minutes before it starts.  ``add_files`` instead
uploads one real template file through the API, then writes further files the way MediaWiki stores
them: the bytes under the hashed upload path, a row in ``image`` (size, dimensions, base-36 SHA-1,
upload time) and the file description page in ``page``, copied from the template's rows.  MediaWiki
serves them like any upload: ``list=allimages``, ``prop=imageinfo`` and the media URLs all work.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image

from service.events import sha1_to_base36
from tests.infra.mediawiki import MediaWikiServer


@dataclass(frozen=True)
class GeneratedFile:
    title: str  # "File:Name.jpg"
    sha1: str  # hex
    uploaded: datetime
    data: bytes


def generated_jpeg(seed: int, size: tuple[int, int] = (200, 160)) -> bytes:
    """A small, smooth, unique JPEG (a coarse random field scaled up)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8), "RGB")
    out = io.BytesIO()
    small.resize(size, Image.Resampling.BILINEAR).save(out, "JPEG", quality=85)
    return out.getvalue()


def add_files(wiki: MediaWikiServer, count: int, *, prefix: str, start: datetime, seed: int = 0,
              step: timedelta = timedelta(seconds=1)) -> list[GeneratedFile]:
    """Add ``count`` files named ``<prefix> NNNNN.jpg`` uploaded at ``start``, ``start + step``, ..."""
    template_name = f"{prefix} template.jpg"
    wiki.upload(template_name, generated_jpeg(seed + 10_000_000))
    db = sqlite3.connect(wiki.root / "db" / "wiki.sqlite", timeout=30)
    db.row_factory = sqlite3.Row
    try:
        key = template_name.replace(" ", "_")
        image = dict(db.execute("SELECT * FROM image WHERE img_name = ?", (key,)).fetchone())
        page = dict(db.execute("SELECT * FROM page WHERE page_namespace = 6 AND page_title = ?", (key,)).fetchone())
        files: list[GeneratedFile] = []
        image_rows, page_rows = [], []
        for i in range(count):
            data = generated_jpeg(seed + i)
            name = f"{prefix} {i:05d}.jpg".replace(" ", "_")
            digest = hashlib.md5(name.encode()).hexdigest()
            path = wiki.upload_dir / digest[0] / digest[:2] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            when = start + step * i
            stamp = when.strftime("%Y%m%d%H%M%S")
            sha1 = hashlib.sha1(data).hexdigest()
            image_rows.append({**image, "img_name": name, "img_size": len(data), "img_width": 200, "img_height": 160,
                               "img_timestamp": stamp, "img_sha1": sha1_to_base36(sha1)})
            page_rows.append({**{k: v for k, v in page.items() if k != "page_id"}, "page_title": name,
                              "page_touched": stamp, "page_links_updated": stamp, "page_random": (i % 997) / 997})
            files.append(GeneratedFile(f"File:{name.replace('_', ' ')}", sha1, when, data))
        with db:
            _insert_many(db, "image", image_rows)
            _insert_many(db, "page", page_rows)
        return files
    finally:
        db.close()


def _insert_many(db: sqlite3.Connection, table: str, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    db.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                   [tuple(r[c] for c in cols) for r in rows])


def utc(year: int, month: int = 1, day: int = 1) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)
