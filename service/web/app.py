"""The service's HTTP endpoints: /metrics, /healthz, /readyz."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.metrics import Metrics

# A readiness check returns None when fine, else the reason it is not ready.
ReadyCheck = Callable[[], Awaitable[str | None]]
LiveCheck = Callable[[], str | None]

METRICS_KEY = web.AppKey("metrics", Metrics)
READY_KEY = web.AppKey("ready_checks", dict)
LIVE_KEY = web.AppKey("live_checks", dict)
DETAILS_KEY: web.AppKey[Callable[[], dict[str, object]]] = web.AppKey("ready_details")


async def _evaluate(app: web.Application) -> dict[str, str]:
    """Run the readiness checks; the result also feeds ``mediamoderation_ready{check}``."""
    reasons: dict[str, str] = {}
    ready = app[METRICS_KEY].ready
    for name, check in app[READY_KEY].items():
        try:
            reason = await check()
        except Exception as exc:  # a failing check is a reason, not a crash
            reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            reasons[name] = reason
        ready.labels(name).set(0 if reason is not None else 1)
    return reasons


async def metrics_handler(request: web.Request) -> web.Response:
    await _evaluate(request.app)  # every scrape sees the same readiness /readyz reports
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    # Answering at all proves the event loop runs; the checks say whether the pipeline still does.
    problems = {name: r for name, check in request.app[LIVE_KEY].items() if (r := check()) is not None}
    status = 200 if not problems else 503
    return web.json_response({"alive": not problems, "problems": problems, "time": time.time()}, status=status)


async def readyz(request: web.Request) -> web.Response:
    reasons = await _evaluate(request.app)
    status = 200 if not reasons else 503
    body: dict[str, object] = {"ready": not reasons, "reasons": reasons}
    details = request.app.get(DETAILS_KEY)
    if details is not None:
        try:
            body["details"] = details()  # e.g. the Kafka source's per-partition lag
        except Exception as exc:
            body["details"] = {"error": f"{type(exc).__name__}: {exc}"}
    return web.json_response(body, status=status)


def create_app(
    metrics: Metrics,
    ready_checks: dict[str, ReadyCheck],
    live_checks: dict[str, LiveCheck] | None = None,
    details: Callable[[], dict[str, object]] | None = None,
) -> web.Application:
    app = web.Application()
    app[METRICS_KEY] = metrics
    if details is not None:
        app[DETAILS_KEY] = details
    app[READY_KEY] = ready_checks
    app[LIVE_KEY] = live_checks or {}
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
