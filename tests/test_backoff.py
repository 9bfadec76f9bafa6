from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from service.backoff import exponential_backoff, parse_retry_after
from service.fetch import parse_retry_after as fetch_parse_retry_after


def test_doubles_from_initial_up_to_the_cap_without_jitter() -> None:
    delays = [exponential_backoff(n, initial=0.5, maximum=30.0) for n in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert exponential_backoff(-3, initial=0.5, maximum=30.0) == 0.5
    assert exponential_backoff(10**6, initial=0.5, maximum=30.0) == 30.0  # no overflow


@pytest.mark.parametrize("jitter", [(0.5, 1.5), (0.5, 1.0), (0.8, 1.0)])
def test_jitter_stays_in_its_range_and_spreads(jitter: tuple[float, float]) -> None:
    rng = random.Random(5)
    low, high = jitter
    for attempt in range(8):
        base = min(10.0, 0.25 * 2**attempt)
        delays = [exponential_backoff(attempt, initial=0.25, maximum=10.0, jitter=jitter, rng=rng)
                  for _ in range(50)]
        assert all(low * base <= d <= high * base for d in delays)
        assert len(set(delays)) > 40


def test_no_jitter_draws_no_random_number() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    exponential_backoff(3, initial=1.0, maximum=60.0, rng=rng)
    assert rng.getstate() == state


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after(" 12 ") == 12.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("") is None
    assert parse_retry_after("later") is None
    when = datetime.now(UTC) + timedelta(seconds=90)
    assert 80 <= (parse_retry_after(format_datetime(when, usegmt=True)) or 0) <= 90
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert fetch_parse_retry_after is parse_retry_after  # the old import path still works


def test_retry_after_refuses_infinite_and_nan() -> None:
    assert parse_retry_after("inf") is None and parse_retry_after("nan") is None
    assert parse_retry_after("-5") == 0.0
