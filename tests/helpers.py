"""Helpers tests share: :func:`until`, the one way a test waits for something to happen."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

Condition = asyncio.Event | Awaitable[Any] | Callable[[], Any]


async def until(
    condition: Condition,
    timeout: float = 30.0,
    *,
    what: str | None = None,
    interval: float = 0.05,
    in_thread: bool = False,
) -> Any:
    """Wait until ``condition`` holds, at most ``timeout`` seconds; return its (truthy) value.

    ``condition`` is an :class:`asyncio.Event` or an awaitable (awaited: nothing to poll), or a callable
    returning a value or an awaitable, asked every ``interval`` seconds: for state only observable by
    asking (a store, a broker, another process's ``/metrics``).  ``in_thread`` runs a blocking callable
    in a thread.  Whatever the condition raises propagates at once (a crashed process fails the wait);
    the timeout fails the test with an :class:`AssertionError` naming ``what``.
    """
    timer = asyncio.timeout(timeout)
    try:
        async with timer:
            if isinstance(condition, asyncio.Event):
                await condition.wait()
                return True
            if inspect.isawaitable(condition):
                return await condition
            while True:
                value = await asyncio.to_thread(condition) if in_thread else condition()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        if not timer.expired():
            raise  # the condition itself timed out: its own error, not ours
        raise AssertionError(f"{what or 'the condition'} did not hold within {timeout} s") from None
