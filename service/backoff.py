"""Retry pacing shared by every client: exponential backoff with jitter, and ``Retry-After``.

Each caller keeps its own constants (first delay, cap, jitter range) and its own rules for when a
server's ``Retry-After`` overrides the backoff; only the arithmetic and the header parsing live here.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

_MAX_EXPONENT = 1000  # 2.0 ** 1000 is still a finite float; the cap is reached long before


def exponential_backoff(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    jitter: tuple[float, float] = (1.0, 1.0),
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the next try, ``attempt`` (>= 0) retries in.

    ``initial`` doubled ``attempt`` times, at most ``maximum``, times a factor drawn uniformly from
    ``jitter`` = (low, high) so that callers failing together do not retry together; ``(1.0, 1.0)``
    (the default) draws nothing.  ``rng`` defaults to the :mod:`random` module's generator.
    """
    base = min(maximum, initial * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))
    low, high = jitter
    if low == high:
        return base * low
    uniform = rng.uniform if rng is not None else random.uniform
    return base * uniform(low, high)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "inf" and "nan" parse as floats; a server may not make us wait forever.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
