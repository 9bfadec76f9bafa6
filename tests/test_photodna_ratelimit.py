"""The shared rate limiter, the store-backed monthly budget and the circuit breaker (service.ratelimit)."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime

import pytest

from service.ratelimit import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BudgetExhausted,
    CircuitBreaker,
    MonthlyBudget,
    RateLimiter,
    month_of,
    seconds_left_in_month,
)
from service.store import Stores
from tests.fakes import FakeClock

# --------------------------------------------------------------------------- rate limiter


async def test_grants_are_spaced_by_the_rate_across_concurrent_callers() -> None:
    limiter = RateLimiter(rate=100, burst=1)
    grants: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        grants.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(30)))
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert min(gaps) >= 0.01 - 1e-6
    assert grants[-1] - grants[0] >= 29 * 0.01 - 1e-6


async def test_the_window_counts_from_the_actual_send() -> None:
    limiter = RateLimiter(rate=20)  # 50 ms apart
    permit = await limiter.acquire()
    t0 = time.monotonic()
    await asyncio.sleep(0.03)  # the caller was held up between its grant and its send
    permit.sent()
    await limiter.acquire()
    assert time.monotonic() - t0 >= 0.08 - 1e-3


async def test_burst_allows_that_many_per_window_and_no_more() -> None:
    limiter = RateLimiter(rate=50, burst=5)  # 5 per 100 ms
    t0 = time.monotonic()
    for _ in range(5):
        await limiter.acquire()
    assert time.monotonic() - t0 < 0.05  # the burst goes at once
    await limiter.acquire()
    assert time.monotonic() - t0 >= 0.1 - 1e-3  # the 6th waits for the window


async def test_live_callers_overtake_background_callers() -> None:
    limiter = RateLimiter(rate=50)
    await limiter.acquire()  # the next slot is 20 ms away: everyone below queues
    order: list[str] = []

    async def one(name: str, background: bool) -> None:
        await limiter.acquire(background=background)
        order.append(name)

    bg = [asyncio.create_task(one(f"b{i}", True)) for i in range(3)]
    await asyncio.sleep(0)  # the background callers are queued first
    live = [asyncio.create_task(one(f"l{i}", False)) for i in range(3)]
    await asyncio.gather(*bg, *live)
    assert order == ["l0", "l1", "l2", "b0", "b1", "b2"]


async def test_pause_holds_everyone_and_cancelled_waiters_give_their_place_up() -> None:
    limiter = RateLimiter(rate=1000)
    await limiter.pause(0.2)
    t0 = time.monotonic()
    doomed = asyncio.create_task(limiter.acquire())
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    doomed.cancel()
    permit = await waiter
    assert time.monotonic() - t0 >= 0.2 - 1e-3 and permit.waited >= 0.19
    assert limiter.waiting == 0
    with pytest.raises(asyncio.CancelledError):
        await doomed


# --------------------------------------------------------------------------- budget


async def test_budget_is_never_exceeded_and_survives_a_restart(stores: Stores) -> None:
    clock = FakeClock(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
    used: list[int] = []
    budget = MonthlyBudget(stores.budget, "photodna", 7, lease=3, clock=clock, on_change=used.append)
    for _ in range(4):
        await budget.take()
    await budget.close()  # gives back the unspent part of the lease
    assert await stores.budget.budget_used("photodna", "2026-11") == 4

    again = MonthlyBudget(stores.budget, "photodna", 7, lease=3, clock=clock)
    assert await again.load() == 4
    for _ in range(3):
        await again.take()
    with pytest.raises(BudgetExhausted):
        await again.take()
    assert again.exhausted and again.used == 7
    assert await stores.budget.budget_used("photodna", "2026-11") == 7
    assert used[-1] == 4

    clock.advance(15 * 86400)  # December: a new budget
    await again.take()
    assert not again.exhausted
    assert await stores.budget.budget_used("photodna", "2026-12") >= 1


async def test_concurrent_takes_never_overshoot(stores: Stores) -> None:
    budget = MonthlyBudget(stores.budget, "photodna", 10, lease=4)
    results = await asyncio.gather(*(budget.take() for _ in range(25)), return_exceptions=True)
    assert sum(r is None for r in results) == 10
    assert all(isinstance(r, BudgetExhausted) for r in results if r is not None)
    assert await stores.budget.budget_used("photodna", month_of(time.time())) == 10


async def test_spare_budget_leaves_room_for_projected_live_traffic(stores: Stores) -> None:
    start = datetime(2026, 11, 30, tzinfo=UTC).timestamp()  # one day before the month ends
    clock = FakeClock(start)
    budget = MonthlyBudget(stores.budget, "photodna", 1_000_000, lease=10, clock=clock)
    assert budget.spare(reserve=0.1) == 900_000  # nothing live seen yet
    for _ in range(60):  # one live request a second for a minute
        await budget.take()
        clock.advance(1)
    await budget.take(background=True)  # background takes do not count as live traffic
    projected = (60 / 60) * seconds_left_in_month(clock()) * 1.5
    assert budget.spare(reserve=0.1) == int(900_000 - 61 - projected)
    assert 0 < budget.spare(reserve=0.1) < 900_000 - 129_000


# --------------------------------------------------------------------------- circuit breaker


def test_circuit_opens_after_consecutive_failures_and_tries_one_request_later() -> None:
    clock = FakeClock(0)
    states: list[int] = []
    cb = CircuitBreaker(3, 10.0, 25.0, clock=clock, on_change=states.append)
    cb.failure()
    cb.failure()
    cb.success()  # a success resets the count
    for _ in range(2):
        cb.failure()
        assert cb.allow()
    cb.failure()
    assert cb.state == OPEN and not cb.allow()
    clock.advance(10)
    assert cb.allow() and cb.state == HALF_OPEN  # one trial ...
    assert not cb.allow()  # ... at a time
    cb.failure()  # the trial failed: open twice as long
    assert cb.state == OPEN
    clock.advance(19)
    assert not cb.allow()
    clock.advance(1)
    assert cb.allow()
    cb.failure()
    clock.advance(25)  # capped at max_open_seconds
    assert cb.allow()
    cb.success()
    assert cb.state == CLOSED and cb.allow()
    assert states == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]
