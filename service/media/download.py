"""Originals streamed from the wiki: to a temporary file (video) or nowhere (audio), MD5 and SHA-1 on the way.

A :class:`HashingSink` is the :class:`~service.mediawiki.transport.Sink` the MediaWiki client streams a
body into; the whole file is never in memory.  :func:`discard` deletes a fetched file's temporary copy
(the decode step calls it when done; the pipeline again when an upload ends early).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import IO

from service.models import FetchedMedia

TEMP_PREFIX = "mediamod-"


class HashingSink:
    """Writes what it is given to a new temporary file (``keep=True``) or nowhere, hashing it."""

    def __init__(self, *, keep: bool, suffix: str = "") -> None:
        self._file: IO[bytes] | None = None
        self.path: str | None = None
        if keep:
            fd, self.path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix)
            self._file = os.fdopen(fd, "wb")
        self.reset()

    def reset(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha1 = hashlib.sha1(usedforsecurity=False)
        self.size = 0
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()

    def write(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.sha1.update(chunk)
        self.size += len(chunk)
        if self._file is not None:
            self._file.write(chunk)

    def close(self) -> None:
        """Finish writing (the file stays until :meth:`delete`)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def delete(self) -> None:
        self.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


def discard(fetched: FetchedMedia | None) -> None:
    """Delete ``fetched``'s temporary file, if it has one (idempotent)."""
    if fetched is not None and fetched.path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fetched.path)
