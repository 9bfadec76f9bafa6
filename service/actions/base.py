"""Actions and the outbox dispatcher that performs them.

An :class:`Action` performs one effect (an email, a takedown) for one outbox item.  The pipeline
writes outbox items in the same transaction as the match; the :class:`OutboxDispatcher` performs
them, at least once and never twice at the same time:

* an item is marked done only after ``perform`` returned (a crash in between means it is performed
  again after a restart; email Message-IDs derive from the item key so duplicates are recognisable);
* a retriable failure schedules the next attempt with exponential backoff and jitter
  (``retry.initial_delay`` doubling up to ``retry.max_delay``); a permanent one marks the item failed,
  where it waits for a human;
* marks and due-queries are serialised, so an item being performed or just finished is never picked up
  again by a concurrent scheduling round.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from service.backoff import exponential_backoff
from service.config import RetrySection
from service.errors import ServiceError
from service.metrics import Metrics
from service.store.base import Outbox, OutboxItem

log = logging.getLogger(__name__)

_MAX_ERROR_TEXT = 500


class Action(Protocol):
    """Performs one effect for one outbox item.  ``name`` is the outbox ``kind`` it handles."""

    name: str

    async def perform(self, item: OutboxItem) -> str:
        """Do it and return a short result such as ``"sent"``.

        Raise a :class:`ServiceError` (e.g. ``NotifyError(retriable=...)``) on failure; its
        ``retriable`` decides between another attempt later and giving up.
        """
        ...


def backoff_delay(failed_attempts: int, retry: RetrySection, rng: random.Random) -> float:
    """Wait before the next attempt after ``failed_attempts`` (>= 1) failures.

    ``initial_delay`` doubling per failure, capped at ``max_delay``, minus up to 20 % jitter so that
    items failing together do not retry together.
    """
    return exponential_backoff(failed_attempts - 1, initial=retry.initial_delay, maximum=retry.max_delay,
                               jitter=(0.8, 1.0), rng=rng)


class OutboxDispatcher:
    """Performs due outbox items with bounded concurrency; see the module docstring for guarantees."""

    def __init__(
        self,
        outbox: Outbox,
        actions: Mapping[str, Action],
        retry: RetrySection,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        *,
        concurrency: int = 4,
        poll_interval: float = 5.0,
        max_attempts: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self._outbox = outbox
        self._actions = dict(actions)
        self._retry = retry
        self._metrics = metrics
        self._clock = clock
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._max_attempts = max_attempts
        self._rng = rng or random.Random()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()  # serialises due-queries with marks (see _schedule/_perform)
        self._wake = asyncio.Event()
        self._retry_times: list[float] = []  # heap of next_attempt_at values this dispatcher set
        self._last_round = 0.0

    # -- control

    def kick(self) -> None:
        """Look for due items now (call right after writing new outbox items)."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def run(self, stop: asyncio.Event) -> None:
        """Perform due items until ``stop`` is set; then wait for the items being performed."""
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    self._last_round = self._clock()
                    await self._schedule(self._last_round)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("outbox: looking for due items failed; trying again in %.1f s",
                                  self._poll_interval)
                await self._update_pending()
                await self._wait(stop, self._wait_time())
        except asyncio.CancelledError:
            await self._cancel_inflight()
            raise
        await self._wait_inflight()
        await self._update_pending()

    async def drain(self, timeout: float) -> int:
        """Perform everything due now (at the time of the call); returns how many items were attempted.

        Items that fail retriably are scheduled for later and not attempted again here.  Whatever is
        still being performed when ``timeout`` expires is cancelled and stays pending.
        """
        now = self._clock()
        attempted = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    attempted += await self._schedule(now)
                    if not self._inflight:
                        break
                    await asyncio.wait(set(self._inflight.values()), return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            log.warning("outbox: drain timed out after %.1f s with %d item(s) in flight; they stay pending",
                        timeout, len(self._inflight))
            await self._cancel_inflight()
        await self._update_pending()
        return attempted

    # -- scheduling

    async def _schedule(self, now: float) -> int:
        started = 0
        async with self._lock:
            for kind, action in self._actions.items():
                free = self._concurrency - len(self._inflight)
                if free <= 0:
                    break
                # In-flight items are still pending, so ask for enough to see past them.
                items = await self._outbox.due_actions(kind, now, free + len(self._inflight))
                for item in items:
                    if free <= 0:
                        break
                    if item.id in self._inflight:
                        continue
                    task = asyncio.create_task(self._perform(action, item), name=f"outbox-{kind}-{item.id}")
                    self._inflight[item.id] = task
                    task.add_done_callback(self._task_done)
                    free -= 1
                    started += 1
        return started

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # _perform catches all; belt and braces
            log.error("outbox: task %s crashed", task.get_name(), exc_info=task.exception())
        self._wake.set()  # a slot is free

    async def _perform(self, action: Action, item: OutboxItem) -> None:
        kind = item.kind
        try:
            try:
                result = await action.perform(item)
            except asyncio.CancelledError:
                raise
            except ServiceError as exc:
                await self._failed(item, exc, retriable=exc.retriable)
                return
            except Exception as exc:  # a bug in an action: keep the item, retry later
                log.exception("outbox: %s item %d (%s) raised unexpectedly", kind, item.id, item.key)
                await self._failed(item, exc, retriable=True)
                return
            async with self._lock:
                try:
                    await self._outbox.mark_done(item.id, result)
                except Exception:
                    log.exception("outbox: %s item %d (%s) was performed (%s) but could not be marked done; "
                                  "it may be performed again", kind, item.id, item.key, result)
                self._inflight.pop(item.id, None)
            self._metrics.outbox_actions.labels(kind, "done").inc()
            await self._update_pending()
            log.info("outbox: %s item %d (%s): %s", kind, item.id, item.key, result)
        finally:
            self._inflight.pop(item.id, None)  # cancelled or failed: the item stays in the store's hands

    async def _failed(self, item: OutboxItem, exc: BaseException, *, retriable: bool) -> None:
        error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_TEXT]
        attempts = item.attempts + 1
        give_up = not retriable or (self._max_attempts is not None and attempts >= self._max_attempts)
        async with self._lock:
            try:
                if give_up:
                    await self._outbox.mark_failed(item.id, error)
                else:
                    at = self._clock() + backoff_delay(attempts, self._retry, self._rng)
                    await self._outbox.mark_retry(item.id, error, at)
                    heapq.heappush(self._retry_times, at)
            except Exception:
                log.exception("outbox: could not record the failure of %s item %d (%s)", item.kind, item.id,
                              item.key)
            self._inflight.pop(item.id, None)
        await self._update_pending()
        if give_up:
            self._metrics.outbox_actions.labels(item.kind, "failed").inc()
            log.error("outbox: %s item %d (%s) failed permanently after %d attempt(s): %s; needs a human",
                      item.kind, item.id, item.key, attempts, error)
        else:
            self._metrics.outbox_actions.labels(item.kind, "retry").inc()
            log.warning("outbox: %s item %d (%s) attempt %d failed: %s; will retry", item.kind, item.id,
                        item.key, attempts, error)

    # -- waiting

    def _wait_time(self) -> float:
        """Until the next poll, or sooner when a retry this dispatcher scheduled falls due."""
        while self._retry_times and self._retry_times[0] <= self._last_round:
            heapq.heappop(self._retry_times)  # was due at the last round: already picked up
        wait = self._poll_interval
        if self._retry_times:
            wait = min(wait, max(self._retry_times[0] - self._clock(), 0.0))
        return wait

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _wait_inflight(self) -> None:
        while self._inflight:
            await asyncio.wait(set(self._inflight.values()))

    async def _cancel_inflight(self) -> None:
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _update_pending(self) -> None:
        try:
            self._metrics.outbox_pending.set(await self._outbox.pending_count())
        except Exception:
            log.exception("outbox: could not count pending items")
