"""Small transactions that arrive together run together: one thread hop and one transaction for many.

The pipeline asks the store two questions per upload (was this event handled? record its outcome). Run
one by one, each costs a hop to the store thread and back and, for a write, a commit; at hundreds of
uploads a second that is most of what the store costs. :class:`Grouper` sends the calls that arrive
while ``limit`` groups are already running as the next group (group commit): at low rates every call
still runs alone and at once, under load they share a thread hop and a transaction.

What a caller sees does not change: its own result, or its own exception. A group runs in one
transaction; if one of its calls raises, that transaction is rolled back and every call of the group
runs again alone, in its own transaction (so only the faulty call fails, and none is half-applied).
A failure to begin or commit the group's transaction (the database is locked, unreachable, full) is
the same for every call: each receives it, without the calls being tried again one by one.

Calls given to a grouper must therefore be functions of the connection only, safe to run a second
time after a rollback (the store's statement builders are).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from service.store.base import StoreError

Call = Callable[[Connection], Any]
# One call's result: (True, value) or (False, the exception it raised).
Outcome = tuple[bool, Any]
# Runs a group of calls in the store's thread (see Database.run_group): one outcome per call, in order.
RunGroup = Callable[[list[Call]], "asyncio.Future[list[Outcome]]"]


class Grouper:
    """Runs calls through ``run_group``, at most ``limit`` groups at a time, at most ``max_size`` per group.

    A group starts at the end of the event loop's turn in which its first call arrived, or ``linger``
    seconds later (a write worth grouping: its caller does not wait for it, see the pipeline's ``_end``)."""

    def __init__(self, run_group: RunGroup, *, limit: int = 1, max_size: int = 128, linger: float = 0.0) -> None:
        self._run_group = run_group
        self._linger = linger  # how long the first call of a group waits for others (0: to the loop turn's end)
        self._limit = limit
        self._max_size = max_size
        self._waiting: list[tuple[Call, asyncio.Future[Any]]] = []
        self._running = 0
        self._kick: asyncio.Handle | None = None

    @property
    def running(self) -> int:
        """Groups sent to the store thread and not finished."""
        return self._running

    async def run(self, fn: Call) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((fn, future))
        if self._running < self._limit and self._kick is None:
            # After ``linger`` (or at the end of this turn of the event loop): the calls made meanwhile join.
            loop = asyncio.get_running_loop()
            self._kick = loop.call_later(self._linger, self._kicked) if self._linger else loop.call_soon(self._kicked)
        return await future

    def _kicked(self) -> None:
        self._kick = None
        if self._running < self._limit:
            self._start()

    def _start(self) -> None:
        # Callers that stopped waiting (cancelled: a deadline) are left out; nobody would see their result.
        live = [(fn, fut) for fn, fut in self._waiting if not fut.done()]
        batch, self._waiting = live[: self._max_size], live[self._max_size:]
        if not batch:
            return
        try:
            group = self._run_group([fn for fn, _ in batch])
        except Exception as exc:  # the store is closed: every caller hears why
            for _, fut in batch:
                fut.set_exception(exc)
            return
        self._running += 1
        group.add_done_callback(lambda done: self._finished(batch, done))

    def _finished(self, batch: list[tuple[Call, asyncio.Future[Any]]], done: asyncio.Future[list[Outcome]]) -> None:
        self._running -= 1
        outcomes: list[Outcome]
        if done.cancelled():
            outcomes = [(False, StoreError("store call cancelled (the store is closing)"))] * len(batch)
        elif (exc := done.exception()) is not None:
            outcomes = [(False, exc)] * len(batch)
        else:
            outcomes = done.result()
        for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        while self._waiting and self._running < self._limit:
            before = self._running
            self._start()
            if self._running == before:  # nothing live was waiting, or the store refused the group
                break
