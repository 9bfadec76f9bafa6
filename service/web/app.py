"""The service's HTTP endpoints: /metrics, /healthz, /readyz, /healthz/pipeline.

* ``/healthz`` (liveness): the event loop answers and no pipeline part has died for good; 503 makes
  Kubernetes restart the pod.
* ``/readyz`` (readiness): this process can serve its HTTP role (the review UI and the metrics): the HTTP
  server answers and the store does.  It stays 200 while the upload stream is down or PhotoDNA refuses the
  key, so a Wikimedia outage never takes the review UI out of its Kubernetes Service.
* ``/healthz/pipeline``: is the pipeline scanning?  Source connected, banks loaded, PhotoDNA authorised;
  200 or 503 with a short reason per failing check (and the source's details, such as Kafka lag).

Every check, of both kinds, also sets ``mediamoderation_ready{check}`` (on each scrape too), which the
alerts watch.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.metrics import Metrics

# A check returns None when fine, else the reason (one short line for people).
ReadyCheck = Callable[[], Awaitable[str | None]]
LiveCheck = Callable[[], str | None]

METRICS_KEY = web.AppKey("metrics", Metrics)
READY_KEY: web.AppKey[dict[str, ReadyCheck]] = web.AppKey("ready_checks")
PIPELINE_KEY: web.AppKey[dict[str, ReadyCheck]] = web.AppKey("pipeline_checks")
LIVE_KEY: web.AppKey[dict[str, LiveCheck]] = web.AppKey("live_checks")
DETAILS_KEY: web.AppKey[Callable[[], dict[str, object]]] = web.AppKey("ready_details")

_REASON_CHARS = 300


async def _evaluate(app: web.Application, checks: dict[str, ReadyCheck]) -> dict[str, str]:
    """Run ``checks``; the results also feed ``mediamoderation_ready{check}``."""
    reasons: dict[str, str] = {}
    ready = app[METRICS_KEY].ready
    for name, check in checks.items():
        try:
            reason = await check()
        except Exception as exc:  # a failing check is a reason, not a crash
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if reason is not None:
            line = " ".join(reason.split())
            reasons[name] = line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"
        ready.labels(name).set(0 if reason is not None else 1)
    return reasons


async def metrics_handler(request: web.Request) -> web.Response:
    # Every scrape sees the same checks /readyz and /healthz/pipeline report.
    app = request.app
    ready, pipeline = app[READY_KEY], app[PIPELINE_KEY]
    checks = {**ready, **pipeline}
    await _evaluate(app, checks)
    body = generate_latest(app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    # Answering at all proves the event loop runs; the checks say whether the pipeline still does.
    problems = {name: r for name, check in request.app[LIVE_KEY].items() if (r := check()) is not None}
    status = 200 if not problems else 503
    return web.json_response({"alive": not problems, "problems": problems, "time": time.time()}, status=status)


async def readyz(request: web.Request) -> web.Response:
    reasons = await _evaluate(request.app, request.app[READY_KEY])
    return web.json_response({"ready": not reasons, "reasons": reasons}, status=200 if not reasons else 503)


async def pipeline_health(request: web.Request) -> web.Response:
    reasons = await _evaluate(request.app, request.app[PIPELINE_KEY])
    body: dict[str, object] = {"healthy": not reasons, "reasons": reasons}
    details = request.app.get(DETAILS_KEY)
    if details is not None:
        try:
            shown = details()  # e.g. the Kafka source's per-partition lag
        except Exception as exc:
            shown = {"error": f"{type(exc).__name__}: {exc}"}
        if shown:
            body["details"] = shown
    return web.json_response(body, status=200 if not reasons else 503)


def create_app(
    metrics: Metrics,
    ready_checks: dict[str, ReadyCheck],
    live_checks: dict[str, LiveCheck] | None = None,
    details: Callable[[], dict[str, object]] | None = None,
    pipeline_checks: dict[str, ReadyCheck] | None = None,
) -> web.Application:
    """``ready_checks``: what serving HTTP needs (/readyz); ``pipeline_checks``: what scanning needs."""
    app = web.Application()
    app[METRICS_KEY] = metrics
    if details is not None:
        app[DETAILS_KEY] = details
    app[READY_KEY] = ready_checks
    app[PIPELINE_KEY] = pipeline_checks or {}
    app[LIVE_KEY] = live_checks or {}
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/healthz/pipeline", pipeline_health)
    app.router.add_get("/readyz", readyz)
    return app
