"""OutboxDispatcher with an in-memory outbox and fake actions: retries, exactly once, kick, concurrency."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from service.actions.base import OutboxDispatcher, backoff_delay
from service.config import RetrySection
from service.errors import PermanentNotifyError
from service.metrics import Metrics
from service.store.base import NewAction
from tests.fakes import FakeClock, MemoryOutbox, ScriptedAction, flaky


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"mediamoderation_{name}", labels) or 0.0


DEFAULT_RETRY = RetrySection(1.0, 10.0)


def make(outbox: MemoryOutbox, action: ScriptedAction, retry: RetrySection = DEFAULT_RETRY,
         clock: Callable[[], float] | None = None, **kw: object) -> tuple[OutboxDispatcher, Metrics]:
    metrics = Metrics()
    d = OutboxDispatcher(outbox, {action.name: action}, retry, metrics, clock or outbox._clock,
                         rng=random.Random(3), **kw)  # type: ignore[arg-type]
    return d, metrics


@asynccontextmanager
async def running(d: OutboxDispatcher) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)  # run() must end on its own once stop is set


def test_backoff_delay_doubles_to_the_cap_with_jitter() -> None:
    retry = RetrySection(initial_delay=1.0, max_delay=10.0)
    rng = random.Random(1)
    for attempts, base in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (6, 10), (200, 10)]:
        for _ in range(50):
            assert 0.8 * base <= backoff_delay(attempts, retry, rng) <= base
    delays = {backoff_delay(1, retry, rng) for _ in range(20)}
    assert len(delays) > 10  # jittered, not identical


async def test_retries_with_backoff_until_success_exactly_once() -> None:
    clock = FakeClock()
    outbox = MemoryOutbox(clock)
    action = ScriptedAction(script=flaky(3))
    d, metrics = make(outbox, action, RetrySection(initial_delay=1.0, max_delay=3.0), clock)
    [item] = await outbox.add_actions([NewAction("notify:k1", "notify", {"x": 1})])

    expected_bases = [1.0, 2.0, 3.0]  # doubling, capped at max_delay
    for attempt, base in enumerate(expected_bases, start=1):
        assert await d.drain(5) == 1
        current = outbox.items[item.id]
        assert (current.state, current.attempts) == ("pending", attempt)
        wait = current.next_attempt_at - clock()
        assert 0.8 * base <= wait <= base
        assert await d.drain(5) == 0  # not due yet: nothing performed
        clock.advance(wait)
    assert await d.drain(5) == 1
    done = outbox.items[item.id]
    assert (done.state, done.result, done.attempts) == ("done", "ok", 4)
    assert action.calls == [item.id] * 4
    assert [c[0] for c in outbox.calls] == ["retry", "retry", "retry", "done"]
    clock.advance(3600)
    assert await d.drain(5) == 0  # done means done
    assert len(action.calls) == 4
    assert sample(metrics, "outbox_actions_total", kind="notify", result="retry") == 3
    assert sample(metrics, "outbox_actions_total", kind="notify", result="done") == 1
    assert sample(metrics, "outbox_pending") == 0


async def test_run_loop_retries_on_its_own() -> None:
    """With a 1-hour poll interval the loop still wakes for the retries it scheduled (tiny delays)."""
    outbox = MemoryOutbox(asyncio.get_running_loop().time)
    action = ScriptedAction(script=flaky(3))
    d, _ = make(outbox, action, RetrySection(initial_delay=0.01, max_delay=0.04),
                asyncio.get_running_loop().time, poll_interval=3600)
    await outbox.add_actions([NewAction("notify:k1", "notify")])
    async with running(d):
        await outbox.wait_for(lambda o: o.by_key("notify:k1").state == "done")
    assert len(action.calls) == 4
    assert [c[0] for c in outbox.calls] == ["retry", "retry", "retry", "done"]


async def test_permanent_failure_marks_failed() -> None:
    clock = FakeClock()
    outbox = MemoryOutbox(clock)
    action = ScriptedAction(script=[PermanentNotifyError("550 no such user")])
    d, metrics = make(outbox, action, clock=clock)
    [item] = await outbox.add_actions([NewAction("notify:k1", "notify")])
    assert await d.drain(5) == 1
    failed = outbox.items[item.id]
    assert failed.state == "failed" and failed.attempts == 1
    assert "550 no such user" in (failed.last_error or "")
    clock.advance(10_000)
    assert await d.drain(5) == 0 and len(action.calls) == 1
    assert sample(metrics, "outbox_actions_total", kind="notify", result="failed") == 1
    assert sample(metrics, "outbox_pending") == 0


async def test_unexpected_exception_is_retried_and_max_attempts_gives_up() -> None:
    clock = FakeClock()
    outbox = MemoryOutbox(clock)
    action = ScriptedAction(script=[RuntimeError("bug"), RuntimeError("bug"), RuntimeError("bug")])
    d, _ = make(outbox, action, RetrySection(1.0, 1.0), clock, max_attempts=2)
    [item] = await outbox.add_actions([NewAction("notify:k1", "notify")])
    await d.drain(5)
    assert outbox.items[item.id].state == "pending"
    clock.advance(1)
    await d.drain(5)
    assert outbox.items[item.id].state == "failed" and outbox.items[item.id].attempts == 2


async def test_kick_wakes_the_loop() -> None:
    outbox = MemoryOutbox()
    action = ScriptedAction()
    d, _ = make(outbox, action, poll_interval=3600)
    async with running(d):
        await outbox.wait_for(lambda o: o.due_calls >= 1)  # first round done on an empty outbox
        await outbox.add_actions([NewAction("notify:new", "notify")])
        d.kick()
        await outbox.wait_for(lambda o: o.by_key("notify:new").state == "done", within=2)
    assert len(action.calls) == 1


async def test_items_in_flight_are_never_performed_twice() -> None:
    outbox = MemoryOutbox()
    gate = asyncio.Event()
    action = ScriptedAction(gate=gate)
    d, _ = make(outbox, action, concurrency=4, poll_interval=3600)
    await outbox.add_actions([NewAction(f"notify:{i}", "notify") for i in range(2)])
    async with running(d):
        await action.wait_for(lambda a: a.in_flight == 2)
        for _ in range(5):  # more rounds while both are in flight and still pending in the store
            before = outbox.due_calls
            d.kick()
            await outbox.wait_for(lambda o, b=before: o.due_calls > b)
        assert len(action.calls) == 2 and action.peak_per_item == 1
        gate.set()
        await outbox.wait_for(lambda o: all(i.state == "done" for i in o.items.values()))
    assert sorted(action.calls) == [1, 2]


async def test_concurrency_bound_and_exactly_once_under_churn() -> None:
    outbox = MemoryOutbox()
    action = ScriptedAction()
    d, metrics = make(outbox, action, concurrency=3, poll_interval=3600)
    async with running(d):
        for batch in range(10):
            await outbox.add_actions([NewAction(f"notify:{batch}:{i}", "notify") for i in range(7)])
            d.kick()
            d.kick()
        await outbox.wait_for(lambda o: all(i.state == "done" for i in o.items.values()), within=10)
    assert sorted(action.calls) == sorted(outbox.items)  # every item exactly once
    assert action.peak <= 3 and action.peak_per_item == 1
    assert [c[0] for c in outbox.calls].count("done") == 70
    assert sample(metrics, "outbox_pending") == 0


async def test_stop_waits_for_items_in_flight() -> None:
    outbox = MemoryOutbox()
    gate = asyncio.Event()
    action = ScriptedAction(gate=gate)
    d, _ = make(outbox, action)
    await outbox.add_actions([NewAction("notify:1", "notify")])
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    await action.entered.wait()
    stop.set()
    done, _ = await asyncio.wait([task], timeout=0.05)
    assert not done  # still performing: run() does not abandon it
    gate.set()
    await asyncio.wait_for(task, 5)
    assert outbox.by_key("notify:1").state == "done"


async def test_drain_timeout_leaves_item_pending() -> None:
    outbox = MemoryOutbox()
    action = ScriptedAction(gate=asyncio.Event())  # never released
    d, _ = make(outbox, action)
    await outbox.add_actions([NewAction("notify:1", "notify")])
    assert await d.drain(0.05) == 1
    item = outbox.by_key("notify:1")
    assert (item.state, item.attempts) == ("pending", 0)
    assert d.in_flight == 0 and outbox.calls == []


async def test_only_due_items_of_known_kinds() -> None:
    clock = FakeClock()
    outbox = MemoryOutbox(clock)
    action = ScriptedAction()
    d, metrics = make(outbox, action, clock=clock)
    await outbox.add_actions([NewAction("notify:1", "notify"), NewAction("takedown:1", "takedown")])
    assert await d.drain(5) == 1
    assert outbox.states() == {"notify:1": "done", "takedown:1": "pending"}
    assert sample(metrics, "outbox_pending") == 1


@pytest.mark.parametrize("concurrency", [0, -1])
def test_bad_concurrency(concurrency: int) -> None:
    with pytest.raises(ValueError):
        OutboxDispatcher(MemoryOutbox(), {}, RetrySection(), Metrics(), concurrency=concurrency)
