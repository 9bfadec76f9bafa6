"""In-memory fakes that follow the store and action contracts (service.store.base, service.actions.base)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from service.errors import NotifyError, PermanentNotifyError
from service.store.base import NewAction, OutboxItem


async def _wait_for(cond: asyncio.Condition, predicate: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        async with cond:
            await cond.wait_for(predicate)


class FakeClock:
    """A clock that moves only when told to: ``clock()`` returns now, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryOutbox:
    """The :class:`service.store.base.Outbox` protocol in memory, with the SQLite store's semantics.

    Every mark adds one to ``attempts``; ``due_actions`` returns pending items of a kind whose
    ``next_attempt_at <= now``, oldest due first.  ``calls`` records every mutation for assertions and
    ``wait_for`` awaits a condition on the items instead of sleeping.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or (lambda: 0.0)
        self.items: dict[int, OutboxItem] = {}
        self.calls: list[tuple[str, int, object]] = []
        self.due_calls = 0
        self._next_id = 1
        self._changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[MemoryOutbox], bool], within: float = 5.0) -> None:
        """Wait until ``predicate(self)`` holds (checked after every change); TimeoutError otherwise."""
        await _wait_for(self._changed, lambda: predicate(self), within)

    def by_key(self, key: str) -> OutboxItem:
        return next(i for i in self.items.values() if i.key == key)

    def states(self) -> dict[str, str]:
        return {i.key: i.state for i in self.items.values()}

    # -- the Outbox protocol

    async def add_actions(self, actions: Sequence[NewAction]) -> list[OutboxItem]:
        known = {i.key for i in self.items.values()}
        created: list[OutboxItem] = []
        now = self._clock()
        for a in actions:
            if a.key in known:
                continue
            item = OutboxItem(id=self._next_id, key=a.key, kind=a.kind, payload=dict(a.payload),
                              next_attempt_at=now, created_at=now)
            self._next_id += 1
            self.items[item.id] = item
            known.add(a.key)
            created.append(item)
        await self._notify()
        return created

    async def due_actions(self, kind: str, now: float, limit: int) -> list[OutboxItem]:
        due = [i for i in self.items.values()
               if i.state == "pending" and i.kind == kind and i.next_attempt_at <= now]
        due.sort(key=lambda i: (i.next_attempt_at, i.id))
        self.due_calls += 1
        await self._notify()
        for _ in range(3):  # a real store answers from another thread: let concurrent work interleave
            await asyncio.sleep(0)
        return due[:limit]

    async def get_action(self, item_id: int) -> OutboxItem | None:
        return self.items.get(item_id)

    async def _update(self, op: str, item_id: int, detail: object, **changes: object) -> None:
        item = self.items[item_id]
        self.items[item_id] = dataclasses.replace(item, attempts=item.attempts + 1, **changes)  # type: ignore[arg-type]
        self.calls.append((op, item_id, detail))
        await self._notify()

    async def mark_done(self, item_id: int, result: str) -> None:
        await self._update("done", item_id, result, state="done", result=result, last_error=None)

    async def mark_retry(self, item_id: int, error: str, next_attempt_at: float) -> None:
        await self._update("retry", item_id, next_attempt_at, last_error=error,
                           next_attempt_at=next_attempt_at)

    async def mark_failed(self, item_id: int, error: str) -> None:
        await self._update("failed", item_id, error, state="failed", last_error=error)

    async def pending_count(self) -> int:
        return sum(1 for i in self.items.values() if i.state == "pending")


@dataclass
class ScriptedAction:
    """An Action whose outcomes are scripted per attempt: an exception to raise or a result to return.

    After the script runs out it returns ``"ok"``.  ``gate`` (when set) makes perform wait until it is
    released, to hold items in flight.  Records every call and the peak concurrency, overall and per item.
    """

    name: str = "notify"
    script: list[BaseException | str] = field(default_factory=list)
    gate: asyncio.Event | None = None
    calls: list[int] = field(default_factory=list)
    active: dict[int, int] = field(default_factory=dict)
    peak: int = 0
    peak_per_item: int = 0
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def in_flight(self) -> int:
        return sum(self.active.values())

    async def wait_for(self, predicate: Callable[[ScriptedAction], bool], within: float = 5.0) -> None:
        """Wait until ``predicate(self)`` holds (checked whenever a perform starts or ends)."""
        await _wait_for(self.changed, lambda: predicate(self), within)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def perform(self, item: OutboxItem) -> str:
        self.calls.append(item.id)
        self.active[item.id] = self.active.get(item.id, 0) + 1
        self.peak = max(self.peak, self.in_flight)
        self.peak_per_item = max(self.peak_per_item, self.active[item.id])
        self.entered.set()
        await self._notify()
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            outcome = self.script.pop(0) if self.script else "ok"
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        finally:
            self.active[item.id] -= 1
            await self._notify()


def flaky(failures: int, *, retriable: bool = True) -> list[BaseException | str]:
    """A script: ``failures`` NotifyErrors, then success."""
    error = NotifyError if retriable else PermanentNotifyError
    return [error(f"attempt {i + 1} failed") for i in range(failures)]
