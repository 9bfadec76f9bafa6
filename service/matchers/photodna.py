"""The ``photodna`` remote matcher: the thumbnail stage's JPEG to PhotoDNA, every MatchFlag to a match.

The client (every answer, the key, limits) is :mod:`service.matchers.photodna_client`, the contract
:mod:`service.matchers.photodna_api`, the key probe :mod:`service.matchers.photodna_probe`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from service.config import PhotoDnaSection
from service.errors import Unscannable
from service.matchers.photodna_api import (
    MAX_BYTES,
    MIN_SIDE,
    BadAnswer,
    MatchFlag,
    PhotoDnaError,
    PhotoDnaResult,
    PhotoDnaUnauthorized,
    parse_answer,
    refit_jpeg,
)
from service.matchers.photodna_client import PhotoDnaClient
from service.matchers.photodna_probe import AuthProbe
from service.metrics import Metrics
from service.models import Match, PreparedMedia
from service.net import Proxies
from service.ratelimit import MonthlyBudget, RateLimiter
from service.store.base import BudgetStore

log = logging.getLogger(__name__)


def category_for(flag: MatchFlag, cfg: PhotoDnaSection) -> str:
    for rule in cfg.categories:
        if rule.source is not None and rule.source.lower() != flag.source.lower():
            continue
        if rule.violations and not set(rule.violations) & set(flag.violations):
            continue
        return rule.category
    return cfg.default_category


def to_matches(result: PhotoDnaResult, cfg: PhotoDnaSection) -> list[Match]:
    """One :class:`Match` per MatchFlag, carrying everything PhotoDNA said about it."""
    if not result.is_match:
        return []
    flags = result.flags or (MatchFlag(source="", violations=(), distance=None, match_id=None),)
    out = []
    for f in flags:
        out.append(Match(
            matcher="photodna",
            bank=f"photodna:{f.source}" if f.source else "photodna",
            category=category_for(f, cfg),
            hash_id=f.match_id or result.tracking_id or "",
            hash_value="",
            distance=f.distance,
            source=f.source or "PhotoDNA",  # the email's Details column shows violations and TrackingId
            details={
                "source": f.source, "violations": list(f.violations), "match_distance": f.distance,
                "match_id": f.match_id, "advanced_info": dict(f.advanced_info), "tracking_id": result.tracking_id,
                "content_id": result.content_id, "status_code": result.code,
                "status_description": result.description,
            },
        ))
    return out


class PhotoDnaMatcher:
    """The remote matcher: the thumbnail stage's JPEG to PhotoDNA, its flags to matches.

    The key probe (:class:`AuthProbe`) is a ``run(stop)`` task: the service runs ``matcher.probe.run`` under
    its supervisor (after ``client.start()``); used on its own, :meth:`start` opens the client and starts
    the probe in a task this matcher owns, and :meth:`aclose` stops and awaits it, then closes the client."""

    name = "photodna"

    def __init__(self, client: PhotoDnaClient) -> None:
        self.client = client
        self.probe = AuthProbe(client)
        self._probe_stop = asyncio.Event()
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.start()
        if self._probe_task is None:
            self._probe_stop.clear()
            self._probe_task = asyncio.create_task(self.probe.run(self._probe_stop), name="photodna-probe")

    async def match(self, media: PreparedMedia, *, background: bool = False) -> list[Match]:
        if media.jpeg is None:
            raise Unscannable("photodna-no-jpeg", f"no JPEG of at least {MIN_SIDE} x {MIN_SIDE} px under "
                                                  f"{MAX_BYTES} bytes can be made from {media.width}x{media.height}")
        result = await self.client.check(media.jpeg, "image/jpeg", background=background)
        return to_matches(result, self.client.cfg)

    def ready_reason(self) -> str | None:
        return self.client.ready_reason()

    def can_send(self) -> bool:
        return self.client.can_send()

    @property
    def authorized(self) -> bool:
        return self.client.authorized

    async def aclose(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            self._probe_stop.set()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # aclose() itself was cancelled
            except Exception:  # run() handles each probe's failure; anything else is a bug to show
                log.exception("the PhotoDNA key probe task failed")
        await self.client.aclose()


def build_matcher(
    cfg: PhotoDnaSection, *, user_agent: str, store: BudgetStore, metrics: Metrics,
    on_recover: Callable[[], None] = lambda: None, proxies: Proxies | None = None,
) -> PhotoDnaMatcher:
    """The matcher with its own rate limiter, circuit breaker and the store-backed monthly budget."""
    budget = MonthlyBudget(store, "photodna", cfg.monthly_budget, lease=max(1, min(100, int(cfg.rate))),
                           on_change=metrics.photodna_budget_used.set)
    client = PhotoDnaClient(cfg, user_agent=user_agent, metrics=metrics, limiter=RateLimiter(cfg.rate, cfg.burst),
                            budget=budget, on_recover=on_recover, proxies=proxies)
    return PhotoDnaMatcher(client)


__all__ = [
    "BadAnswer", "MatchFlag", "PhotoDnaClient", "PhotoDnaError", "PhotoDnaMatcher", "PhotoDnaResult",
    "PhotoDnaUnauthorized", "build_matcher", "category_for", "parse_answer", "refit_jpeg", "to_matches",
]
