"""The Source interface: something that yields raw events from a checkpoint.

A source runs until ``stop`` is set (or, for finite sources, until it is exhausted), putting
:class:`RawEvent` items into the bounded ``out`` queue; a full queue blocks it (backpressure).
``commit(position)`` is called with the watermark position whenever it advances; the source decides
how to persist it (the EventStreams source stores it in the checkpoint store).

``ack(position)`` is called, from the event loop, with the position of every event as soon as that
one event is finished, in any order.  Most sources ignore it (:class:`SourceBase` does); the Kafka
source uses it to commit each partition up to its own last contiguous finished offset, so a slow
event in one partition does not hold back the others.

``status()`` says how the source is doing for the readiness probe: connected or not, the last error,
and source-specific details (the Kafka source's per-partition lag).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.models import RawEvent


@dataclass(frozen=True, slots=True)
class SourceStatus:
    connected: bool
    last_error: str | None = None
    details: Mapping[str, Any] | None = field(default=None)  # shown under "source" on /healthz/pipeline


class Source(Protocol):
    name: str

    @property
    def connected(self) -> bool: ...

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None: ...

    async def commit(self, position: Any) -> None:
        """Persist the watermark position (every event up to it is finished)."""
        ...

    def ack(self, position: Any) -> None:
        """One event is finished (any order); sources that only commit the watermark ignore it."""
        ...

    def status(self) -> SourceStatus: ...


class SourceBase:
    """Defaults for the optional parts of :class:`Source`: ``ack`` ignored, ``status`` from ``last_error``."""

    last_error: str | None = None

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def ack(self, position: Any) -> None:
        return None

    def status(self) -> SourceStatus:
        return SourceStatus(connected=self.connected, last_error=self.last_error)


def run_in_thread(fn: Callable[[], None], *, name: str) -> asyncio.Future[None]:
    """Start ``fn`` in a daemon thread (for a blocking reader); the returned future gets its outcome.

    Whatever ``fn`` raises is handed to the future, never swallowed.  Once the event loop is closed
    nobody is waiting any more, and the outcome is dropped.
    """
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the owner, never swallowed
            failure = exc

            def fail() -> None:
                if not finished.done():
                    finished.set_exception(failure)

            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(fail)
        else:

            def succeed() -> None:
                if not finished.done():
                    finished.set_result(None)

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(succeed)

    threading.Thread(target=target, name=name, daemon=True).start()
    return finished


async def until_done_or_stopped(finished: asyncio.Future[None], stop: asyncio.Event) -> None:
    """Return as soon as ``finished`` is done or ``stop`` is set (``finished`` is left as it is)."""
    stop_wait: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    waiting: list[asyncio.Future[Any]] = [finished, stop_wait]
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()


class MemorySource(SourceBase):
    """A finite in-memory source for tests: yields the given events, then returns."""

    name = "memory"

    def __init__(self, events: Sequence[str | bytes]) -> None:
        self._events = list(events)
        self.committed: list[Any] = []

    @property
    def connected(self) -> bool:
        return True

    async def run(self, out: asyncio.Queue[RawEvent], stop: asyncio.Event) -> None:
        for i, data in enumerate(self._events):
            if stop.is_set():
                return
            await out.put(RawEvent(data=data, position=i, label=f"#{i}"))

    async def commit(self, position: Any) -> None:
        self.committed.append(position)
