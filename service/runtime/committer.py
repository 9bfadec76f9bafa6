"""The checkpoint committer: moves a source's checkpoint past finished events, and only past them.

Every role that reads a source runs one: the pipeline (``--role all`` and ``worker``) and the ingest
role (``--role ingest``, where an event is finished once the broker acknowledged it).  Each event read
is :meth:`Committer.track`\\ ed; when it is finished (any order) :meth:`Committer.done` acknowledges it to
the source (Kafka commits per partition) and wakes :meth:`Committer.run`, which writes the watermark
(:mod:`service.watermark`) coalescing bursts into one write.  A failed write is logged and retried on
the next wake (also after the committer task died and its supervisor restarted it); writes never
overlap, so the checkpoint never moves back; each write is shielded from cancellation, and
:meth:`Committer.commit` once more at shutdown persists whatever finished last.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from service.errors import ServiceError
from service.metrics import Metrics
from service.watermark import Watermark

log = logging.getLogger(__name__)


class Checkpointed(Protocol):
    """The part of a :class:`~service.sources.base.Source` the committer needs."""

    def ack(self, position: Any) -> None: ...

    async def commit(self, position: Any) -> None: ...


class Committer:
    def __init__(self, source: Checkpointed, metrics: Metrics, *, coalesce: float = 0.2) -> None:
        self.source = source
        self.metrics = metrics
        self.coalesce = coalesce  # seconds between writes: a burst of completions becomes one write
        self.watermark = Watermark()
        self._changed = asyncio.Event()
        self._unwritten: Any = None  # a position whose write did not succeed, written again on the next wake
        self._retry = False
        self._writing = asyncio.Lock()  # one write at a time, in order

    def track(self, position: Any) -> int:
        """An event was read at ``position``; returns its sequence number for :meth:`done`."""
        return self.watermark.track(position)

    def done(self, seq: int) -> None:
        """The event ``seq`` is finished (in any order): acknowledge it and let the checkpoint move."""
        self.source.ack(self.watermark.done(seq))
        self._changed.set()

    @property
    def pending(self) -> int:
        """Events read but not yet below the checkpoint."""
        return self.watermark.pending

    async def run(self) -> None:
        """Write the checkpoint whenever it moved, until cancelled."""
        if self._retry:  # restarted after a write that did not succeed: write it now
            self._changed.set()
        while True:
            await self._changed.wait()
            self._changed.clear()
            await asyncio.shield(self.commit())
            await asyncio.sleep(self.coalesce)  # coalesce bursts of completions into one write

    async def commit(self) -> None:
        """Write the checkpoint now if it moved; a failed write is retried on the next wake."""
        async with self._writing:
            position = self.watermark.take_changed()
            self.metrics.checkpoint_lag.set(self.watermark.pending)
            if position is None:
                if not self._retry:
                    return
                position = self._unwritten
            self._unwritten, self._retry = position, True  # until the write succeeds
            try:
                await self.source.commit(position)
            except ServiceError as exc:
                log.error("checkpoint write failed; will retry", extra={"error": str(exc)})
                self._changed.set()
                return
            self._unwritten, self._retry = None, False
