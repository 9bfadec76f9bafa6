"""The Supervisor with fake tasks that await conditions (asyncio.Event): restarts, limits, stop order."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.metrics import Metrics
from service.runtime.supervisor import CRITICAL, RestartPolicy, Supervisor, TaskExited, TaskFailed, reap

FAST = RestartPolicy(initial_delay=0.0, max_delay=0.0, max_restarts=3, window=60.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def restarts(metrics: Metrics, task: str) -> float:
    value = metrics.registry.get_sample_value("mediamoderation_task_restarts_total", {"task": task})
    return value if value is not None else -1.0


class Script:
    """A task body: each run takes the next behaviour ("raise", "return", "block", "cancel") and reports it."""

    def __init__(self, *steps: str) -> None:
        self.steps = list(steps)
        self.runs = 0
        self.ran = asyncio.Condition()
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        step = self.steps.pop(0) if self.steps else "block"
        async with self.ran:
            self.runs += 1
            self.ran.notify_all()
        if step == "raise":
            raise RuntimeError(f"boom {self.runs}")
        if step == "cancel":  # a bug that ends the task with a cancellation nobody asked for
            raise asyncio.CancelledError()
        if step == "block":
            await self.release.wait()

    async def wait_runs(self, count: int) -> None:
        async with self.ran:
            await self.ran.wait_for(lambda: self.runs >= count)


def make(metrics: Metrics, stop: asyncio.Event, **kw: object) -> tuple[Supervisor, list[TaskFailed]]:
    failures: list[TaskFailed] = []
    sup = Supervisor(metrics, stop, on_failure=failures.append, **kw)  # type: ignore[arg-type]
    return sup, failures


async def test_a_task_that_raises_once_is_logged_counted_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    body = Script("raise", "block")
    handle = sup.start("outbox", body, restart=FAST)
    await body.wait_runs(2)
    assert restarts(metrics, "outbox") == 1 and handle.restarts == 1 and handle.running
    died = [r for r in caplog.records if r.getMessage().startswith("task outbox died")]
    assert len(died) == 1 and died[0].levelno == logging.ERROR
    assert died[0].exc_info is not None and str(died[0].exc_info[1]) == "boom 1"  # the traceback is logged
    assert failures == [] and sup.failure is None and not stop.is_set() and sup.problem() is None
    await sup.close()
    assert not handle.running


async def test_a_task_that_keeps_failing_stops_the_service_with_the_cause() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    body = Script(*["raise"] * 10)
    handle = sup.start("bank-watch", body, restart=FAST)
    await handle.wait()
    assert body.runs == 4  # three restarts allowed, the fourth death stops the service
    assert restarts(metrics, "bank-watch") == 3
    assert stop.is_set()
    assert len(failures) == 1 and failures[0] is sup.failure
    assert isinstance(sup.failure.cause, RuntimeError) and sup.failure.__cause__ is sup.failure.cause
    assert str(sup.failure) == "task bank-watch failed 4 times within 60 s: RuntimeError: boom 4"
    assert sup.problem() == str(sup.failure)  # what /healthz reports until the process ends
    await sup.close()


async def test_deaths_outside_the_window_do_not_count() -> None:
    metrics, stop, clock = Metrics(), asyncio.Event(), Clock()
    sup, failures = make(metrics, stop, clock=clock)
    body = Script("raise", "raise", "raise", "raise", "block")

    async def one_death_per_11_seconds() -> None:
        clock.now += 11  # never two deaths within the 10 s window
        await body()

    handle = sup.start("maintenance", one_death_per_11_seconds,
                       restart=RestartPolicy(initial_delay=0, max_restarts=1, window=10))
    await body.wait_runs(5)
    assert handle.running and failures == [] and restarts(metrics, "maintenance") == 4
    await sup.close()


async def test_a_critical_task_stops_the_service_at_its_first_death() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    body = Script("raise")
    handle = sup.start("pipeline", body, restart=CRITICAL)
    await handle.wait()
    assert body.runs == 1 and restarts(metrics, "pipeline") == 0
    assert stop.is_set() and str(failures[0]) == "task pipeline failed: RuntimeError: boom 1"
    await sup.close()


async def test_a_task_returning_unexpectedly_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    body = Script("return", "block")
    handle = sup.start("takedown-outbox", body, restart=FAST)
    await body.wait_runs(2)
    assert handle.running and restarts(metrics, "takedown-outbox") == 1 and failures == []
    assert any(r.getMessage() == "task takedown-outbox died: TaskExited: task takedown-outbox returned while the "
               "service was running" for r in caplog.records)
    await sup.close()


async def test_a_task_that_keeps_returning_stops_the_service() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    body = Script(*["return"] * 10)
    await sup.start("rescan", body, restart=FAST).wait()
    assert body.runs == 4 and isinstance(failures[0].cause, TaskExited)
    await sup.close()


async def test_a_cancellation_nobody_asked_for_is_a_death() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    body = Script("cancel", "block")
    handle = sup.start("commit", body, restart=FAST)
    await body.wait_runs(2)
    assert handle.running and restarts(metrics, "commit") == 1 and failures == []
    await sup.close()


async def test_returning_is_normal_once_the_service_stops_or_when_allowed() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    finite = Script("return")
    finite_handle = sup.start("source", finite, restart=RestartPolicy(critical=True, may_return=True))
    await finite_handle.wait()
    loop = Script("block")
    loop_handle = sup.start("outbox", loop, restart=FAST)
    await loop.wait_runs(1)
    stop.set()  # the service stops: the loop sees it and returns
    loop.release.set()
    await loop_handle.wait()
    assert failures == [] and sup.failure is None and restarts(metrics, "outbox") == 0 and loop.runs == 1
    await sup.close()


async def test_a_restart_waiting_for_its_backoff_ends_when_the_service_stops() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    body = Script("raise")
    handle = sup.start("outbox", body, restart=RestartPolicy(initial_delay=3600, max_delay=3600))
    await body.wait_runs(1)
    assert restarts(metrics, "outbox") == 1
    stop.set()
    await handle.wait()  # not after an hour
    assert body.runs == 1 and failures == []
    await sup.close()


async def test_backoff_doubles_up_to_the_maximum(caplog: pytest.LogCaptureFixture) -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, _ = make(metrics, stop)
    body = Script("raise", "raise", "raise", "raise", "block")
    sup.start("maintenance", body, restart=RestartPolicy(initial_delay=0.001, max_delay=0.004, jitter=(1.0, 1.0)))
    await body.wait_runs(5)
    delays = [r.__dict__["delay"] for r in caplog.records
              if r.getMessage().startswith("task maintenance will restart")]
    assert delays == [0.001, 0.002, 0.004, 0.004]
    await sup.close()


async def test_shutdown_cancels_and_awaits_in_reverse_start_order() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, _ = make(metrics, stop)
    order: list[str] = []
    running = asyncio.Condition()
    count = 0

    def body(name: str) -> Script:
        async def run() -> None:
            nonlocal count
            async with running:
                count += 1
                running.notify_all()
            try:
                await asyncio.Event().wait()
            finally:
                order.append(name)
        return run  # type: ignore[return-value]

    names = ["outbox", "takedown-outbox", "bank-watch", "maintenance", "pipeline"]
    for name in names:
        sup.start(name, body(name))
    async with running:
        await running.wait_for(lambda: count == len(names))
    assert sup.names == names
    await sup.close()
    assert order == list(reversed(names))


async def test_an_error_while_stopping_is_logged_not_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    started = asyncio.Event()

    async def flaky_cleanup() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise OSError("could not flush") from None

    sup.start("publish", flaky_cleanup)
    await started.wait()
    await sup.close()
    logged = [r for r in caplog.records if r.getMessage().startswith("task publish failed while stopping")]
    assert len(logged) == 1 and isinstance(logged[0].exc_info and logged[0].exc_info[1], OSError)
    assert failures == []  # not critical: logged, the stop goes on


async def test_a_critical_task_failing_while_stopping_still_fails_the_service() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    started = asyncio.Event()

    async def pipeline() -> None:
        started.set()
        await stop.wait()
        raise RuntimeError("drain failed")

    handle = sup.start("pipeline", pipeline, restart=RestartPolicy(critical=True, may_return=True))
    await started.wait()
    stop.set()
    await handle.wait()
    assert str(sup.failure) == "task pipeline failed while stopping: RuntimeError: drain failed"
    assert failures == [sup.failure]
    await sup.close()


async def test_a_task_swallowing_its_cancellation_is_not_restarted() -> None:
    metrics, stop = Metrics(), asyncio.Event()
    sup, failures = make(metrics, stop)
    runs = 0
    started = asyncio.Event()

    async def stubborn() -> None:  # like a dispatcher that cancels its in-flight items and returns
        nonlocal runs
        runs += 1
        started.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.Event().wait()

    handle = sup.start("outbox", stubborn)
    await started.wait()
    await sup.close()
    assert not handle.running and runs == 1 and restarts(metrics, "outbox") == 0 and failures == []


async def test_names_are_unique_and_a_closed_supervisor_starts_nothing() -> None:
    sup, _ = make(Metrics(), asyncio.Event())
    body = Script("block")
    sup.start("outbox", body)
    with pytest.raises(ValueError):
        sup.start("outbox", body)
    await sup.close()
    with pytest.raises(RuntimeError):
        sup.start("late", body)
    with pytest.raises(ValueError):
        RestartPolicy(jitter=(1.5, 0.5))


async def test_reap_logs_what_a_stopped_task_raised_unless_it_is_already_on_its_way_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise OSError("close failed")

    first = asyncio.create_task(fails(), name="flusher")
    second = asyncio.create_task(fails(), name="worker")
    await asyncio.wait({first, second})
    await reap(first)
    await reap(second, raised=second.exception())
    logged = [r for r in caplog.records if "failed while stopping" in r.getMessage()]
    assert [r.getMessage() for r in logged] == ["task flusher failed while stopping: OSError: close failed"]
    assert logged[0].exc_info is not None
