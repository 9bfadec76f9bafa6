"""The commit watermark: a position is safe to persist only when every event up to it is finished.

Events get increasing sequence numbers as the source reads them.  ``done(seq)`` may arrive in any
order; ``safe_position`` is the position of the highest ``seq`` such that all events ``<= seq``
are done.  This is faust's rule ("a message cannot be committed before all streams have processed
it") and what keeps a crash from skipping an upload.
"""

from __future__ import annotations

import heapq
from typing import Any


class Watermark:
    def __init__(self) -> None:
        self._next_seq = 0
        self._low = 0  # every seq < _low is done
        self._positions: dict[int, Any] = {}
        self._done: list[int] = []  # heap of finished seqs >= _low
        self._safe: Any = None
        self._changed = False

    def track(self, position: Any) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._positions[seq] = position
        return seq

    def done(self, seq: int) -> Any:
        """Mark ``seq`` finished; returns its position (for sources that acknowledge single events)."""
        if seq < self._low or seq not in self._positions:
            raise ValueError(f"sequence {seq} is not pending")
        position = self._positions[seq]
        heapq.heappush(self._done, seq)
        while self._done and self._done[0] == self._low:
            heapq.heappop(self._done)
            self._safe = self._positions.pop(self._low)
            self._low += 1
            self._changed = True
        return position

    @property
    def pending(self) -> int:
        """Events read but not yet below the watermark."""
        return self._next_seq - self._low

    @property
    def safe_position(self) -> Any:
        return self._safe

    def take_changed(self) -> Any | None:
        """The safe position if it moved since the last call, else None."""
        if not self._changed:
            return None
        self._changed = False
        return self._safe
