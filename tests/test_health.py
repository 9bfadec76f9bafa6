"""/readyz (can this process serve HTTP?), /healthz/pipeline (is it scanning?), /healthz and /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from service.metrics import Metrics
from service.web.app import ReadyCheck, create_app


def check(reason: str | None) -> ReadyCheck:
    async def run() -> str | None:
        return reason
    return run


async def broken() -> str | None:
    raise ConnectionError("store\nis down")


Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.text()


async def test_readyz_serves_the_http_role_and_the_pipeline_has_its_own_endpoint(serve: Serve) -> None:
    metrics = Metrics()
    long_reason = "source eventstreams not connected: " + "x" * 1000
    app = create_app(metrics, {"store": check(None)}, {"pipeline": lambda: None},
                     details=lambda: {"source": {"lag": 3}},
                     pipeline_checks={"source": check(long_reason), "banks": check(None)})
    base = await serve(app)
    status, body = await get(base + "/readyz")
    assert status == 200 and '"reasons": {}' in body
    async with aiohttp.ClientSession() as http, http.get(base + "/healthz/pipeline") as r:
        assert r.status == 503
        pipeline = await r.json()
    assert pipeline["healthy"] is False and set(pipeline["reasons"]) == {"source"}
    assert pipeline["reasons"]["source"].startswith("source eventstreams not connected: xxx")
    assert len(pipeline["reasons"]["source"]) <= 300  # short, whatever the check said
    assert pipeline["details"] == {"source": {"lag": 3}}
    status, _ = await get(base + "/healthz")
    assert status == 200
    status, text = await get(base + "/metrics")  # every check, both kinds, in the gauge the alerts watch
    assert 'mediamoderation_ready{check="store"} 1.0' in text
    assert 'mediamoderation_ready{check="source"} 0.0' in text
    assert 'mediamoderation_ready{check="banks"} 1.0' in text


async def test_readyz_fails_when_the_store_does_with_a_one_line_reason(serve: Serve) -> None:
    app = create_app(Metrics(), {"store": broken}, pipeline_checks={"source": check(None)})
    base = await serve(app)
    async with aiohttp.ClientSession() as http, http.get(base + "/readyz") as r:
        assert r.status == 503
        body = await r.json()
    assert body == {"ready": False, "reasons": {"store": "ConnectionError: store is down"}}
    status, _ = await get(base + "/healthz/pipeline")
    assert status == 200


def test_metrics_have_process_and_platform_collectors_build_info_and_no_created_series() -> None:
    from prometheus_client import generate_latest

    registry = CollectorRegistry()  # injected, as the service does
    Counter("other_total", "a counter someone else registered", registry=registry).inc()
    metrics = Metrics(registry)
    metrics.events_received.labels("eventstreams").inc()
    metrics.stage_latency.labels("fetch").observe(0.1)
    text = generate_latest(metrics.registry).decode()
    lines = text.splitlines()
    assert any(line.startswith("process_cpu_seconds_total ") for line in lines)
    assert any(line.startswith("process_resident_memory_bytes ") for line in lines)
    assert any(line.startswith("python_info{") for line in lines)
    assert any(line.startswith("python_gc_objects_collected_total{") for line in lines)
    assert f'mediamoderation_build_info{{version="{version("mediamoderation")}"}} 1.0' in lines
    assert 'mediamoderation_events_received_total{source="eventstreams"} 1.0' in lines
    assert not [line for line in lines if "_created" in line]
