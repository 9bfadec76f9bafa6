"""The shared test helper :func:`tests.helpers.until`."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.helpers import until


async def test_until_awaits_an_event_or_an_awaitable_without_polling() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_soon(event.set)
    assert await until(event, 5) is True

    async def answer() -> str:
        return "forty-two"

    assert await until(answer(), 5) == "forty-two"


async def test_until_asks_a_condition_until_it_holds_and_returns_its_value() -> None:
    asked: list[int] = []

    def third() -> int | None:
        asked.append(1)
        return len(asked) if len(asked) >= 3 else None

    assert await until(third, 5, interval=0.001) == 3

    async def async_third() -> bool:
        asked.append(1)
        return len(asked) >= 6

    assert await until(async_third, 5, interval=0.001) is True
    blocking = threading.Event()
    threading.Timer(0.01, blocking.set).start()
    assert await until(blocking.is_set, 5, interval=0.001, in_thread=True) is True


async def test_until_fails_the_test_naming_what_did_not_happen() -> None:
    with pytest.raises(AssertionError, match=r"the mail did not hold within 0\.05 s"):
        await until(lambda: False, 0.05, interval=0.01, what="the mail")


async def test_what_the_condition_raises_propagates_at_once() -> None:
    def crashed() -> bool:
        raise AssertionError("worker exited with 1")

    with pytest.raises(AssertionError, match="worker exited with 1"):
        await until(crashed, 5)

    async def own_timeout() -> None:
        raise TimeoutError("the condition's own")

    with pytest.raises(TimeoutError, match="the condition's own"):
        await until(own_timeout(), 5)
