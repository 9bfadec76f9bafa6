"""The HTTP start-up every role shares: ``/metrics``, ``/healthz``, ``/readyz`` and ``/healthz/pipeline`` (and
the review UI where it is mounted), served on ``http.host``:``http.port`` through
:func:`service.web.listen.listen`, plus the checks that every role runs the same way (its source, its store).
``/readyz`` gets the checks serving HTTP needs (the store); the pipeline's (the source, banks, PhotoDNA) go to
``/healthz/pipeline``, so an upstream outage never takes the review UI out of its Kubernetes Service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from aiohttp import web

from service.config import HttpSection
from service.metrics import Metrics
from service.sources.base import Source
from service.web.app import LiveCheck, ReadyCheck, create_app
from service.web.listen import listen

log = logging.getLogger(__name__)

Mount = Callable[[web.Application], None]


class Pingable(Protocol):
    def ping(self) -> Awaitable[None]: ...


class HttpServer:
    """One role's HTTP server; :meth:`start` does nothing when ``http.enabled`` is off."""

    def __init__(self, cfg: HttpSection, metrics: Metrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def start(
        self,
        ready: Mapping[str, ReadyCheck],
        live: Mapping[str, LiveCheck] | None = None,
        *,
        details: Callable[[], dict[str, object]] | None = None,
        mount: Sequence[Mount] = (),
        pipeline: Mapping[str, ReadyCheck] | None = None,
    ) -> None:
        """Serve; a port that cannot be bound raises :class:`~service.config.ConfigError` naming ``http.port``."""
        if not self.cfg.enabled:
            return
        app = create_app(self.metrics, dict(ready), dict(live or {}), details=details,
                         pipeline_checks=dict(pipeline or {}))
        for add in mount:
            add(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()  # cleaned up by close() even when listening fails
        self.port = await listen(self._runner, self.cfg)
        log.info("http server listening", extra={"host": self.cfg.host, "port": self.port})

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def source_ready(source: Source, *, last_event_at: Callable[[], float | None] = lambda: None,
                 idle: float = 0.0) -> ReadyCheck:
    """Ready while the source is connected and (with ``idle`` > 0) delivered an event within ``idle`` seconds."""

    async def check() -> str | None:
        status = source.status()
        if not status.connected:
            err = status.last_error
            return f"source {source.name} not connected" + (f": {err}" if err else "")
        last = last_event_at()
        if idle and last is not None and time.time() - last > idle:
            return f"no event from the source for {time.time() - last:.0f} s"
        return None

    return check


def store_ready(store: Pingable, timeout: float = 5.0) -> ReadyCheck:
    """Ready while the store answers a ping within ``timeout`` seconds."""

    async def check() -> str | None:
        await asyncio.wait_for(store.ping(), timeout=timeout)
        return None

    return check


def source_details(source: Source) -> Callable[[], dict[str, object]]:
    """The source's own details (the Kafka source: per-partition lag) under ``source`` on ``/healthz/pipeline``."""

    def details() -> dict[str, object]:
        extra = source.status().details
        return {"source": dict(extra)} if extra is not None else {}

    return details
