"""The event-loop-driven process executor keeps ProcessPoolExecutor's contract: results and exceptions
reach their callers, calls wait their turn in order, a dead worker breaks the whole executor."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool

import pytest

from service.media.pipe_pool import PipeExecutor
from tests.helpers import until


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def unpicklable() -> object:
    return threading.Lock()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
async def executor() -> AsyncIterator[PipeExecutor]:
    ex = PipeExecutor(2, context=multiprocessing.get_context("forkserver"))
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


async def test_results_and_exceptions_reach_their_callers(executor: PipeExecutor) -> None:
    futures = [asyncio.wrap_future(executor.submit(square, i)) for i in range(20)]  # more calls than workers
    assert await asyncio.wait_for(asyncio.gather(*futures), 60) == [i * i for i in range(20)]
    with pytest.raises(ValueError, match="bad file"):
        await asyncio.wait_for(asyncio.wrap_future(executor.submit(fail, "bad file")), 60)
    with pytest.raises(RuntimeError, match="cannot be pickled"):
        await asyncio.wait_for(asyncio.wrap_future(executor.submit(unpicklable)), 60)
    assert await asyncio.wait_for(asyncio.wrap_future(executor.submit(square, 3)), 60) == 9  # workers alive


async def test_a_cancelled_waiting_call_never_runs(executor: PipeExecutor) -> None:
    running = [executor.submit(square, i) for i in range(2)]  # one per worker
    waiting = executor.submit(square, 5)
    assert waiting.cancel()
    after = executor.submit(square, 6)
    assert await asyncio.wait_for(asyncio.wrap_future(after), 60) == 36
    assert await asyncio.wait_for(asyncio.gather(*map(asyncio.wrap_future, running)), 60) == [0, 1]
    assert waiting.cancelled()


async def test_a_dead_worker_breaks_every_call_and_later_submits() -> None:
    ex = PipeExecutor(2, context=multiprocessing.get_context("forkserver"))
    try:
        await asyncio.wait_for(asyncio.wrap_future(ex.submit(square, 1)), 60)
        killed = asyncio.wrap_future(ex.submit(die))
        with pytest.raises(BrokenProcessPool):
            await asyncio.wait_for(killed, 60)
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 2)
        await until(lambda: all(not w.process.is_alive() for w in ex._workers), 30, interval=0.02)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


async def test_shutdown_stops_idle_workers_without_calling_it_a_death() -> None:
    ex = PipeExecutor(2, context=multiprocessing.get_context("forkserver"))
    assert await asyncio.wait_for(asyncio.wrap_future(ex.submit(square, 4)), 60) == 16
    processes = [w.process for w in ex._workers]
    ex.shutdown(wait=True)
    assert all(p.exitcode == 0 for p in processes)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
