"""The negative bank: content a reviewer dismissed (or an admin added) as a false positive never alerts again.

A match is dropped when the upload's SHA-1 is allowlisted for the match's bank, or when the upload's PDQ
is within ``review.allowlist_pdq_distance`` of the PDQ of an allowlisted content for that bank (a
re-encoded or resized copy of a dismissed image).  ``*`` as the bank means every bank.  The allowlisted
PDQs sit in a small in-process :class:`~service.matchers.pdq_index.PdqIndex`, reloaded whenever the
store's allowlist changed (one cheap query per matched upload, so every replica sees a Dismiss at once).
"""

from __future__ import annotations

import asyncio
import logging
import re

import numpy as np

from service.matchers.pdq_index import PdqIndex
from service.store.base import AllowlistStore

log = logging.getLogger(__name__)

PDQ_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_DISTANCE = 31


def pdq_row(pdq: str) -> np.ndarray | None:
    """One PDQ (64 hex digits) as a (1, 4) uint64 row in the banks' word layout; None when malformed."""
    text = pdq.strip().lower()
    if not PDQ_HEX_RE.match(text):
        return None
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint64).reshape(1, 4)


class NegativeBank:
    def __init__(self, store: AllowlistStore, max_distance: int = DEFAULT_DISTANCE) -> None:
        self.store = store
        self.max_distance = max_distance
        self._version: tuple[int, float] | None = None
        self._index = PdqIndex()
        self._banks: list[str] = []
        self._lock = asyncio.Lock()

    async def suppressed_banks(self, sha1: str, pdq: str | None = None) -> frozenset[str]:
        """The banks whose matches of this content are false positives (``*``: all); ``pdq``: the content's PDQ
        (hex), looked up in the scan cache when not given."""
        banks = set(await self.store.allowlisted_banks(sha1)) if sha1 else set()
        if pdq is None and sha1:
            pdq = await self.store.content_pdq(sha1)
        row = pdq_row(pdq) if pdq else None
        if row is not None:
            await self._refresh()
            index, names = self._index, self._banks
            banks.update(names[i] for i, _distance, _row in index.query(row, self.max_distance))
        return frozenset(banks)

    async def _refresh(self) -> None:
        async with self._lock:
            version = await self.store.allowlist_version()
            if version == self._version:
                return
            rows = await self.store.allowlist_pdqs()
            entries = [(e.bank, r) for e in rows if (r := pdq_row(e.pdq or "")) is not None]
            index = PdqIndex()
            if entries:
                index.add(np.arange(len(entries), dtype=np.int64), np.concatenate([r for _, r in entries]))
            self._index, self._banks, self._version = index, [b for b, _ in entries], version
            log.debug("negative bank: %d allowlisted PDQ(s) loaded", len(entries))
