"""``mediamoderation scan FILE...``: hash local files and match them against the configured banks.

Useful to check a bank file, to see what the service would decide for a file, and to produce the
hashes of a file for a bank.  One JSON-able dict per file; a missing file or a bad image gives an
outcome, never an exception.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

from service.config import Config, ThumbnailSection
from service.errors import Unscannable
from service.matchers.banks import BankSet
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.models import CLEAN, MATCH, Match, error, unscannable


def scan_paths(paths: list[str], cfg: Config, *, banks: BankSet | None = None) -> Iterator[dict[str, Any]]:
    """Yield one result per path, in order.  Loading the banks may raise :class:`BankError`."""
    banks = banks or BankSet(cfg.banks, Metrics())
    thumb_cfg = dataclasses.replace(cfg.thumbnail, make_jpeg=False)
    for path in paths:
        yield _scan_one(path, cfg, thumb_cfg, banks)


def _scan_one(path: str, cfg: Config, thumb_cfg: ThumbnailSection, banks: BankSet) -> dict[str, Any]:
    result: dict[str, Any] = {
        "file": path, "size": None, "sha1": None, "md5": None, "pdq": None, "pdq_quality": None,
        "width": None, "height": None, "matches": [], "outcome": "", "detail": None,
    }
    limit = cfg.fetch.max_bytes
    sha1, md5, size = hashlib.sha1(), hashlib.md5(), 0
    head = bytearray()  # the bytes to decode, kept only up to the size limit
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha1.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                if size <= limit:
                    head += chunk
    except FileNotFoundError:
        return result | {"outcome": error("not-found"), "detail": "no such file"}
    except OSError as exc:
        return result | {"outcome": error("unreadable"), "detail": exc.strerror or str(exc)}

    result.update(size=size, sha1=sha1.hexdigest(), md5=md5.hexdigest())
    matches: list[Match] = banks.match_sha1(result["sha1"]) + banks.match_md5(result["md5"])
    try:
        if size > limit:
            raise Unscannable("too-large", f"{size} bytes, more than fetch.max_bytes ({limit})")
        media = prepare(bytes(head), result["sha1"], thumb_cfg, md5=result["md5"], source="original")
    except Unscannable as exc:
        result.update(outcome=unscannable(exc.reason), detail=exc.detail or None)
    else:
        result.update(width=media.width, height=media.height, outcome=CLEAN)
        if media.pdq is not None:
            result.update(pdq=media.pdq.hex, pdq_quality=media.pdq.quality)
            matches += banks.match_pdq_signals(media.pdq_signals)
    result["matches"] = [m.to_dict() for m in matches]
    if matches:
        result["outcome"] = MATCH  # an exact match counts even when the image cannot be decoded
    return result
