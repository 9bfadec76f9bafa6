"""Client-side limits for a paid remote API: a rate limiter, a monthly request budget, a circuit breaker.

* :class:`RateLimiter` is shared by every concurrent call in the process.  It grants at most ``burst``
  requests in any window of ``burst / rate`` seconds (with ``burst`` 1: at least ``1 / rate`` apart, so
  no 1 s window ever holds more than ``rate``).  A caller reports the moment it actually sends
  (:meth:`Permit.sent`) and the window counts from then, so a caller delayed between its grant and its
  send (a busy event loop) cannot bunch requests up on the wire; and it spaces slots for ``1 - margin``
  (98 %) of the rate, so that up to ``margin`` x 1 s (20 ms) of jitter between our clock and the server's
  within any second still keeps the server's count at or below the rate.  Live callers are always served
  before background callers (the rescanner), and a ``Retry-After`` pauses everyone.
* :class:`MonthlyBudget` counts requests per UTC calendar month in the store, so restarts do not reset
  it.  It reserves leases of a few requests ahead (one store write per lease, not per request) and gives
  back what is unspent on close; a crash loses at most one lease, counted as used: the budget can be
  under-used after a crash, never exceeded.
* :class:`CircuitBreaker` opens after ``failures`` consecutive transient failures: calls then fail at once
  without a request, until ``open_seconds`` later one trial request is let through (half-open).  Its
  success closes the circuit; its failure opens it again for twice as long, up to ``max_open_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from service.errors import ServiceError
from service.store.base import BudgetStore

log = logging.getLogger(__name__)

Clock = Callable[[], float]


# --------------------------------------------------------------------------- rate limiter


class Permit:
    """One granted slot.  ``waited``: seconds spent waiting for it."""

    __slots__ = ("_clock", "_entry", "waited")

    def __init__(self, entry: list[float], waited: float, clock: Clock) -> None:
        self._entry = entry
        self._clock = clock
        self.waited = waited

    def sent(self) -> None:
        """The request leaves now: the slot's window starts here rather than at the grant."""
        self._entry[0] = max(self._entry[0], self._clock())


class RateLimiter:
    """At most ``burst`` grants per ``burst / rate`` seconds; live callers first; FIFO within a priority."""

    def __init__(self, rate: float, burst: int = 1, *, margin: float = 0.02, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1 or not 0 <= margin < 1:
            raise ValueError("rate must be > 0, burst >= 1 and 0 <= margin < 1")
        self.rate = rate
        self.burst = burst
        self._window = burst / (rate * (1 - margin))
        self._clock = clock
        self._grants: deque[list[float]] = deque(maxlen=burst)  # [time] of the last ``burst`` slots
        self._paused_until = 0.0
        self._heap: list[tuple[int, int]] = []
        self._seq = itertools.count()
        self._cond = asyncio.Condition()

    @property
    def waiting(self) -> int:
        return len(self._heap)

    def _ready_at(self) -> float:
        at = self._paused_until
        if len(self._grants) == self.burst:
            at = max(at, self._grants[0][0] + self._window)
        return at

    async def acquire(self, *, background: bool = False) -> Permit:
        """Wait for a slot.  Cancelling a waiter gives its place up."""
        start = self._clock()
        me = (1 if background else 0, next(self._seq))
        async with self._cond:
            heapq.heappush(self._heap, me)
            self._cond.notify_all()  # a new live waiter may overtake a background head
            try:
                while True:
                    if self._heap[0] == me:
                        now = self._clock()
                        delay = self._ready_at() - now
                        if delay <= 0:
                            heapq.heappop(self._heap)
                            entry = [now]
                            self._grants.append(entry)
                            self._cond.notify_all()
                            return Permit(entry, now - start, self._clock)
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(delay):
                                await self._cond.wait()
                    else:
                        await self._cond.wait()
            except BaseException:
                if me in self._heap:
                    self._heap.remove(me)
                    heapq.heapify(self._heap)
                    self._cond.notify_all()
                raise

    async def pause(self, seconds: float) -> None:
        """Nobody gets a slot for ``seconds`` (a server's ``Retry-After``)."""
        async with self._cond:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self._cond.notify_all()


# --------------------------------------------------------------------------- monthly budget


class BudgetExhausted(ServiceError):
    """This month's request budget is used up; nothing more is sent until the month ends."""

    retriable = True
    reason = "photodna-budget"


def month_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m")


def seconds_left_in_month(ts: float) -> float:
    now = datetime.fromtimestamp(ts, tz=UTC)
    nxt = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return max(0.0, nxt.timestamp() - ts)


class MonthlyBudget:
    """Requests per UTC month, persisted through a :class:`BudgetStore`; see the module docstring."""

    def __init__(
        self,
        store: BudgetStore,
        name: str,
        limit: int,
        *,
        lease: int = 10,
        clock: Clock = time.time,
        on_change: Callable[[int], None] = lambda used: None,
    ) -> None:
        self._store = store
        self.name = name
        self.limit = limit
        self._lease_size = max(1, lease)
        self._clock = clock
        self._on_change = on_change
        self._lock = asyncio.Lock()
        self._period: str | None = None
        self._left = 0  # reserved in the store, not yet spent
        self._reserved_total = 0  # the store's count after our last reservation
        self._exhausted_period: str | None = None
        self._started = clock()
        self._live: deque[float] = deque()  # times of live takes within the last hour (rate estimate)

    @property
    def exhausted(self) -> bool:
        return self._exhausted_period == month_of(self._clock())

    @property
    def used(self) -> int:
        """Requests counted this month as far as this process knows (reserved minus unspent)."""
        if self._period != month_of(self._clock()):
            return 0
        return self._reserved_total - self._left

    async def load(self) -> int:
        """Read this month's count from the store (at start, for the gauge and spare-budget maths)."""
        period = month_of(self._clock())
        async with self._lock:
            if self._period != period:
                await self._switch(period)
                self._reserved_total = await self._store.budget_used(self.name, period)
        self._on_change(self.used)
        return self.used

    async def take(self, *, background: bool = False) -> None:
        """Count one request, or raise :class:`BudgetExhausted`."""
        now = self._clock()
        period = month_of(now)
        async with self._lock:
            if self._period != period:
                await self._switch(period)
            if self._left <= 0:
                want = self._lease_size
                granted, self._reserved_total = await self._store.reserve_budget(self.name, period, want,
                                                                                 self.limit)
                if granted <= 0:
                    if self._exhausted_period != period:
                        log.error("monthly PhotoDNA budget exhausted", extra={"limit": self.limit, "month": period})
                    self._exhausted_period = period
                    self._on_change(self.used)
                    raise BudgetExhausted(f"the monthly budget of {self.limit} requests for {period} is used up")
                self._left += granted
            self._left -= 1
        if not background:
            self._live.append(now)
            while self._live and self._live[0] < now - 3600:
                self._live.popleft()
        self._on_change(self.used)

    async def _switch(self, period: str) -> None:
        if self._period is not None and self._left > 0:
            await self._store.release_budget(self.name, self._period, self._left)
        self._period = period
        self._left = 0
        self._reserved_total = 0
        self._exhausted_period = None

    def live_rate(self) -> float:
        """Live requests per second over the last hour (at least a minute is assumed, to damp the start)."""
        now = self._clock()
        span = max(60.0, min(3600.0, now - self._started))
        return sum(1 for t in self._live if t >= now - span) / span

    def spare(self, reserve: float = 0.0, headroom: float = 1.5) -> int:
        """Requests background work may still use this month: what is left after ``reserve`` (a share of
        the limit) and after the live traffic projected to the end of the month at ``headroom`` times its
        current rate."""
        now = self._clock()
        projected = self.live_rate() * seconds_left_in_month(now) * headroom
        left = self.limit * (1.0 - reserve) - self.used - projected
        return max(0, int(left))

    async def close(self) -> None:
        async with self._lock:
            if self._period is not None and self._left > 0:
                with contextlib.suppress(ServiceError):
                    await self._store.release_budget(self.name, self._period, self._left)
                self._reserved_total -= self._left
                self._left = 0


# --------------------------------------------------------------------------- circuit breaker

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
_STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half-open", OPEN: "open"}


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        open_seconds: float,
        max_open_seconds: float,
        *,
        clock: Clock = time.monotonic,
        on_change: Callable[[int], None] = lambda state: None,
    ) -> None:
        self._threshold = failures
        self._base_open = open_seconds
        self._max_open = max_open_seconds
        self._clock = clock
        self._on_change = on_change
        self.state = CLOSED
        self._consecutive = 0
        self._open_for = open_seconds
        self._open_until = 0.0
        self._trial_out = False

    @property
    def state_name(self) -> str:
        return _STATE_NAMES[self.state]

    def _set(self, state: int) -> None:
        if state != self.state:
            log.warning("circuit breaker %s -> %s", _STATE_NAMES[self.state], _STATE_NAMES[state])
            self.state = state
            self._on_change(state)

    def allow(self) -> bool:
        """May a request be sent now?  In half-open state only one trial is out at a time."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() < self._open_until:
                return False
            self._set(HALF_OPEN)
        if self._trial_out:
            return False
        self._trial_out = True
        return True

    def success(self) -> None:
        self._consecutive = 0
        self._trial_out = False
        self._open_for = self._base_open
        self._set(CLOSED)

    def failure(self) -> None:
        if self.state == HALF_OPEN:
            self._trial_out = False
            self._open_for = min(self._max_open, self._open_for * 2)
            self._open(self._open_for)
            return
        self._consecutive += 1
        if self.state == CLOSED and self._consecutive >= self._threshold:
            self._open(self._open_for)

    def release(self) -> None:
        """A trial ended without a verdict (cancelled, or an answer that says nothing about health)."""
        self._trial_out = False

    def _open(self, seconds: float) -> None:
        self._open_until = self._clock() + seconds
        self._set(OPEN)

    def retry_in(self) -> float:
        return max(0.0, self._open_until - self._clock()) if self.state == OPEN else 0.0
