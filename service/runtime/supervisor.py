"""One owner for every long-lived task of a process: start, restart with backoff, or stop the service.

``Supervisor.start(name, factory, restart=policy)`` runs ``factory()`` (a coroutine function) in a task
the supervisor owns.  A task *dies* when its coroutine raises, or when it returns while the service is
not stopping (a loop that was meant to run until stop).  A death is logged with its traceback and then,
by the task's :class:`RestartPolicy`:

* restarted after an exponential backoff with jitter (:func:`service.backoff.exponential_backoff`),
  counted in ``mediamoderation_task_restarts_total{task}``, as long as the task died at most
  ``max_restarts`` times within ``window`` seconds;
* otherwise, or at once for a ``critical`` task, the service is stopped with the cause: the stop event is
  set, :attr:`Supervisor.failure` holds a :class:`TaskFailed` (``raise``-able; the process exits
  non-zero) and :meth:`Supervisor.problem` reports it to ``/healthz`` until the process ends.

:meth:`Supervisor.close` cancels and awaits the tasks one at a time in reverse start order, and reaps
each with ``.result()``: whatever a task raises while stopping is logged, never swallowed silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from service.backoff import exponential_backoff
from service.errors import ServiceError
from service.metrics import Metrics

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class RestartPolicy:
    """What the supervisor does when a task dies.

    ``max_restarts`` deaths within ``window`` seconds are restarted (after ``initial_delay`` doubling up
    to ``max_delay``, times a random factor from ``jitter``); the next one stops the service.  A
    ``critical`` task is never restarted: its first death stops the service.  A task with
    ``may_return`` may end by returning (finite work, e.g. a pipeline whose source ran out).
    """

    max_restarts: int = 5
    window: float = 600.0
    initial_delay: float = 1.0
    max_delay: float = 60.0
    jitter: tuple[float, float] = (0.5, 1.5)
    critical: bool = False
    may_return: bool = False

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window <= 0 or self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError(f"invalid restart policy: {self}")
        if not 0 <= self.jitter[0] <= self.jitter[1]:
            raise ValueError(f"invalid jitter range: {self.jitter}")


RESTART = RestartPolicy()
"""The default: restart with backoff, at most 5 times in 10 minutes."""
CRITICAL = RestartPolicy(critical=True)
"""Never restarted: the first death stops the service."""


class TaskExited(ServiceError):
    """A task that should run until the service stops returned by itself."""

    reason = "task-exited"

    def __init__(self, task: str) -> None:
        super().__init__(f"task {task} returned while the service was running")
        self.task = task


class TaskFailed(ServiceError):
    """A supervised task died and could not (or may not) be restarted: the service stops with this cause."""

    retriable = False
    reason = "task-failed"

    def __init__(self, task: str, cause: BaseException, detail: str = "") -> None:
        super().__init__(f"task {task} failed{detail}: {type(cause).__name__}: {cause}")
        self.task = task
        self.cause = cause
        self.__cause__ = cause


class Supervised:
    """The handle :meth:`Supervisor.start` returns."""

    def __init__(self, name: str, factory: TaskFactory, policy: RestartPolicy) -> None:
        self.name = name
        self.factory = factory
        self.policy = policy
        self.restarts = 0
        self.task: asyncio.Task[None] | None = None
        self.deaths: deque[float] = deque()
        self.ended = asyncio.Event()
        self.reaped = False

    @property
    def running(self) -> bool:
        return not self.ended.is_set()

    async def wait(self) -> None:
        """Until the task ended for good: it returned (``may_return``), failed, or was stopped."""
        await self.ended.wait()


class Supervisor:
    """Owns the long-lived tasks of one service; see the module docstring.

    ``stopping`` is the service's stop event: a task that returns after it is set ends normally, and the
    supervisor sets it when a task failure stops the service.  ``on_failure`` is called once with the
    first :class:`TaskFailed`.
    """

    def __init__(
        self,
        metrics: Metrics,
        stopping: asyncio.Event,
        *,
        on_failure: Callable[[TaskFailed], None] | None = None,
        stop_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._restarts = metrics.task_restarts
        self._stopping = stopping
        self._on_failure = on_failure
        self._stop_timeout = stop_timeout
        self._clock = clock
        self._rng = rng
        self._entries: list[Supervised] = []
        self._closing = False
        self.failure: TaskFailed | None = None

    # ------------------------------------------------------------------ control

    def start(self, name: str, factory: TaskFactory, *, restart: RestartPolicy = RESTART) -> Supervised:
        """Run ``factory()`` under supervision until the service stops (``factory`` is called again on a
        restart, so it must build a fresh coroutine each time)."""
        if self._closing:
            raise RuntimeError(f"cannot start task {name}: the supervisor is closing")
        if any(e.name == name for e in self._entries):
            raise ValueError(f"a task named {name} is already supervised")
        entry = Supervised(name, factory, restart)
        self._restarts.labels(name)  # exported at 0 from the start
        entry.task = asyncio.create_task(self._guard(entry), name=f"supervised-{name}")
        entry.task.add_done_callback(lambda _: entry.ended.set())
        self._entries.append(entry)
        return entry

    @property
    def names(self) -> list[str]:
        """The supervised tasks, in start order."""
        return [e.name for e in self._entries]

    def problem(self) -> str | None:
        """For ``/healthz``: why the service is stopping, or None while every task is fine."""
        return str(self.failure) if self.failure is not None else None

    async def close(self) -> None:
        """Cancel and await every task, one at a time, in reverse start order; log what they raise."""
        self._closing = True
        for entry in reversed(self._entries):
            task = entry.task
            assert task is not None
            if not task.done():
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=self._stop_timeout)
                if not done:
                    log.error("task %s did not stop within %.0f s of being cancelled; leaving it", entry.name,
                              self._stop_timeout, extra={"task": entry.name})
                    continue
            self._reap(entry)

    # ------------------------------------------------------------------ internals

    def _is_stopping(self) -> bool:
        return self._closing or self._stopping.is_set()

    def _reap(self, entry: Supervised) -> None:
        if entry.reaped:
            return
        entry.reaped = True
        assert entry.task is not None
        try:
            entry.task.result()
        except asyncio.CancelledError:
            pass
        except Exception:  # the guard catches its task's errors; this would be a bug in the guard itself
            log.exception("supervisor of task %s crashed", entry.name, extra={"task": entry.name})
        log.debug("task stopped", extra={"task": entry.name})

    async def _guard(self, entry: Supervised) -> None:
        """Run one task: restart it on death within its policy, else stop the service."""
        me = asyncio.current_task()
        assert me is not None
        while True:
            try:
                await entry.factory()
            except asyncio.CancelledError as exc:
                if me.cancelling() or self._closing:
                    raise  # stopped by its owner
                cause: BaseException = exc  # a cancellation nobody asked for: the task died of it
            except Exception as exc:
                if self._is_stopping():
                    self._died_while_stopping(entry, exc)
                    return
                cause = exc
            else:
                if me.cancelling():
                    raise asyncio.CancelledError()  # the task swallowed its cancellation
                if entry.policy.may_return or self._is_stopping():
                    log.debug("task ended", extra={"task": entry.name})
                    return
                cause = TaskExited(entry.name)
            delay = self._on_death(entry, cause)
            if delay is None:
                return
            # Wait for the backoff, or end at once when the service stops meanwhile.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._is_stopping():
                return
            log.info("task %s restarted", entry.name, extra={"task": entry.name, "restarts": entry.restarts})

    def _on_death(self, entry: Supervised, cause: BaseException) -> float | None:
        """Log and count a death; the delay before the restart, or None when the service stops instead."""
        policy = entry.policy
        exc_info = None if isinstance(cause, TaskExited) else cause
        log.error("task %s died: %s: %s", entry.name, type(cause).__name__, cause, exc_info=exc_info,
                  extra={"task": entry.name, "error": f"{type(cause).__name__}: {cause}"})
        now = self._clock()
        entry.deaths.append(now)
        while entry.deaths and entry.deaths[0] <= now - policy.window:
            entry.deaths.popleft()
        if policy.critical:
            self._fail(entry, cause, "")
            return None
        if len(entry.deaths) > policy.max_restarts:
            self._fail(entry, cause, f" {len(entry.deaths)} times within {policy.window:.0f} s")
            return None
        entry.restarts += 1
        self._restarts.labels(entry.name).inc()
        delay = exponential_backoff(len(entry.deaths) - 1, initial=policy.initial_delay, maximum=policy.max_delay,
                                    jitter=policy.jitter, rng=self._rng)
        log.warning("task %s will restart in %.2f s", entry.name, delay,
                    extra={"task": entry.name, "delay": delay, "deaths_in_window": len(entry.deaths)})
        return delay

    def _died_while_stopping(self, entry: Supervised, exc: Exception) -> None:
        log.error("task %s failed while stopping: %s: %s", entry.name, type(exc).__name__, exc, exc_info=exc,
                  extra={"task": entry.name, "error": f"{type(exc).__name__}: {exc}"})
        if entry.policy.critical:  # the service must not exit as if all went well
            self._fail(entry, exc, " while stopping")

    def _fail(self, entry: Supervised, cause: BaseException, detail: str) -> None:
        failure = TaskFailed(entry.name, cause, detail)
        log.critical("%s; stopping the service", failure, extra={"task": entry.name})
        if self.failure is not None:
            return  # already stopping for an earlier cause, which is the one reported
        self.failure = failure
        self._stopping.set()
        if self._on_failure is not None:
            self._on_failure(failure)


async def reap(task: asyncio.Task[Any], *, raised: BaseException | None = None) -> None:
    """Await a (cancelled) task its owner stops: what it raised is logged, never dropped, unless it is
    ``raised``, the error already on its way up.  Its cancellation is not passed on: the owner's cleanup goes on."""
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        if exc is not raised:
            log.error("task %s failed while stopping: %s: %s", task.get_name(), type(exc).__name__, exc, exc_info=exc,
                      extra={"task": task.get_name()})
