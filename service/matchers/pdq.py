"""Perceptual matching: the item's eight dihedral PDQ hashes, and its derived views' (borders trimmed,
caption removed, ...), against every bank's PDQ hashes."""

from __future__ import annotations

import asyncio

from service.matchers.banks import BankSet
from service.models import Match, PreparedMedia

# Below this many bank hashes a lookup takes well under a millisecond (about 10 µs per 1,000 hashes
# for all eight variants, see bench/bench_hashing.py): run it inline rather than pay for a thread hop.
INLINE_MAX_HASHES = 50_000


class PdqMatcher:
    name = "pdq"

    def __init__(self, banks: BankSet, *, inline_max_hashes: int = INLINE_MAX_HASHES) -> None:
        self._banks = banks
        self._inline_max = inline_max_hashes

    async def match(self, media: PreparedMedia) -> list[Match]:
        if media.pdq is None:
            return []
        signals = media.pdq_signals
        if self._banks.pdq_count * len(signals) <= self._inline_max:
            return self._banks.match_pdq_signals(signals)
        return await asyncio.to_thread(self._banks.match_pdq_signals, signals)

    async def aclose(self) -> None:
        return None
