"""The hashes of every scanned file, kept for retroactive matching: built when a scan ends, written in batches.

:func:`scanned_file` turns what a scan produced (SHA-1, the original's MD5 when it was fetched, the PDQ hash
of the image as shown with its quality, and its seven rotated and mirrored variants' PDQ hashes) into a
:class:`~service.store.base.FileHashes` row; never media.
:class:`FileHashWriter` collects rows from the pipeline and the rescanner without waiting (``add`` only
appends) and writes them in one transaction per batch from its own task, so live scanning never waits on
these writes.  A crash loses at most the rows of the last ``flush_interval`` (those files are matched
again only when they are scanned again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from service.errors import ServiceError
from service.metrics import Metrics
from service.models import PreparedMedia, UploadEvent
from service.store.base import FileHashes, FileHashStore, ScanRecord

log = logging.getLogger(__name__)

VARIANTS = 8  # dihedral PDQ hashes of an image: the first is the image as shown; the other seven are kept
MAX_BUFFERED = 100_000  # while the store is down; beyond this the oldest rows are dropped (counted)


def scanned_file(event: UploadEvent, sha1: str, media: PreparedMedia | None, cached: ScanRecord | None = None,
                 *, now: float | None = None) -> FileHashes:
    """The row to keep for one scanned upload: hashes from the decoded media, else from the scan cache."""
    variants = None
    if media is not None:
        pdq = media.pdq.hex if media.pdq is not None else None
        quality = media.pdq.quality if media.pdq is not None else None
        md5 = media.md5
        if media.pdq is not None and len(media.pdq.hashes) == VARIANTS:
            variants = b"".join(media.pdq.hashes[1:])
    elif cached is not None:  # the scan cache keeps the image as shown only
        pdq, quality, md5 = cached.pdq, cached.pdq_quality, cached.md5
    else:
        pdq = quality = md5 = None
    return FileHashes(event=event, sha1=sha1, md5=md5, pdq=pdq, pdq_quality=quality, pdq_variants=variants,
                      scanned_at=time.time() if now is None else now)


class FileHashWriter:
    """Buffers file hash rows and writes them in batches (every ``interval`` seconds, or at ``batch`` rows)."""

    def __init__(self, store: FileHashStore, metrics: Metrics, *, interval: float = 1.0, batch: int = 500) -> None:
        self._store = store
        self._metrics = metrics
        self._interval = interval
        self._batch = batch
        self._buf: list[FileHashes] = []
        self._wake: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        return len(self._buf)

    def add(self, row: FileHashes) -> None:
        """Queue one row (never blocks, never raises); called from the event loop."""
        self._buf.append(row)
        if len(self._buf) > MAX_BUFFERED:
            del self._buf[: len(self._buf) - MAX_BUFFERED]
            self._metrics.file_hashes_stored.labels("dropped").inc()
        if len(self._buf) >= self._batch and self._wake is not None:
            self._wake.set()

    async def flush(self) -> int:
        """Write what is buffered in one transaction; on a store error the rows stay for the next try."""
        rows, self._buf = self._buf, []
        if not rows:
            return 0
        try:
            await self._store.put_file_hashes(rows)
        except ServiceError as exc:
            self._buf[:0] = rows
            self._metrics.file_hashes_stored.labels("error").inc(len(rows))
            log.error("could not store file hashes; retrying", extra={"rows": len(rows), "error": str(exc)})
            return 0
        self._metrics.file_hashes_stored.labels("ok").inc(len(rows))
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Write batches until ``stop`` is set, then write what is left."""
        self._wake = asyncio.Event()
        try:
            while not stop.is_set():
                waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED),
                                               self._interval)
                finally:
                    for w in waiters:
                        w.cancel()
                self._wake.clear()
                await self.flush()
        finally:
            await asyncio.shield(self.flush())
