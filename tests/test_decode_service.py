"""The whole service with its default process pool: a decode worker SIGKILLed mid-upload fails only that
upload and a match after it is still emailed; a pool that cannot be restarted makes /healthz fail."""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.config import ThumbnailSection
from service.media import pool as pool_module
from service.media.thumbnail import prepare
from tests.infra import images
from tests.infra.mediawiki import MediaWikiServer
from tests.infra.smtp import SmtpServer
from tests.infra.sse_server import EventStreamsServer
from tests.test_decode_pipeline import kill_or_prepare
from tests.test_decode_pool import MARKERS
from tests.test_e2e import make_config, metric, start, upload_and_publish

pytestmark = pytest.mark.wiki
PROCESS_POOL = {"cpu_pool": "process", "cpu_workers": 2, "event_deadline": 90}


@pytest.fixture
def kill_marks() -> Callable[[bytes], None]:
    """Marks uploads (by SHA-1) whose decode worker kills itself; removed after the test."""
    MARKERS.mkdir(exist_ok=True)
    made: list[Path] = []

    def mark(data: bytes) -> None:
        path = MARKERS / f"kill-{hashlib.sha1(data).hexdigest()}"
        path.touch()
        made.append(path)

    yield mark
    for path in made:
        path.unlink(missing_ok=True)


async def test_killed_decode_worker_fails_one_upload_and_a_later_match_is_emailed(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch, kill_marks: Callable[[bytes], None],
) -> None:
    monkeypatch.setattr("service.app.prepare", kill_or_prepare)  # the real prepare, plus the kill switch
    known = images.photo(9501)
    media = prepare(images.jpeg_bytes(known), "0" * 40, ThumbnailSection())
    assert media.pdq is not None
    bank = tmp_path / "bank.csv"
    bank.write_text(f"hash,category,source,id\n{media.pdq.hex},,test,k-9501\n")
    run_id = uuid.uuid4().hex[:8]
    killer = images.jpeg_bytes(images.photo(9502))
    kill_marks(killer)
    uploads = [
        (f"Pool {run_id} before.jpg", images.jpeg_bytes(images.photo(9503)), "clean"),
        (f"Pool {run_id} killer.jpg", killer, "unscannable:decoder-crashed"),
        (f"Pool {run_id} known.jpg", images.variants(known)["recompressed"], "match"),
        (f"Pool {run_id} after.jpg", images.jpeg_bytes(images.photo(9504)), "clean"),
    ]
    events = [await upload_and_publish(mediawiki, sse_server, name, data) for name, data, _ in uploads]
    run = await start(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank, pipeline=PROCESS_POOL))
    try:
        await run.finished(len(uploads), timeout=240)
        got = [await run.service.stores.ledger.event_outcome(e["meta"]["id"]) for e in events]
        assert got == [want for _, _, want in uploads]
        mails = await smtp_server.wait_for_async(1, 60)
        assert len(mails) == 1 and f"Pool {run_id} known" in str(mails[0].message)
        async with aiohttp.ClientSession() as http:
            async with http.get(run.base + "/healthz") as r:
                assert r.status == 200
            async with http.get(run.base + "/metrics") as r:
                text = await r.text()
        assert metric(text, "mediamoderation_decode_pool_restarts_total", result="ok") == 1
        assert metric(text, "mediamoderation_decode_worker_crashes_total", pool="main") == 1
        assert metric(text, "mediamoderation_outcomes_total", outcome="unscannable:decoder-crashed") == 1
    finally:
        await run.stop()


async def test_healthz_fails_when_the_decode_pool_cannot_be_restarted(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch, kill_marks: Callable[[bytes], None],
) -> None:
    starts: list[int] = []

    def start_once(memory_limit: int | None, n: int) -> Executor:
        starts.append(n)
        if len(starts) > 1:  # every restart fails, as when the pod can no longer fork
            raise OSError(11, "Resource temporarily unavailable")
        return pool_module.process_executor(n, memory_limit)

    def unrestartable(workers: int, *, memory_limit: int | None, **kwargs: Any) -> pool_module.ProcessPool:
        return pool_module.ProcessPool(workers, memory_limit=memory_limit, max_rebuild_failures=2,
                                       start=functools.partial(start_once, memory_limit), **kwargs)

    monkeypatch.setattr("service.app.prepare", kill_or_prepare)
    monkeypatch.setattr("service.app.ProcessPool", unrestartable)
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    run = await start(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank, pipeline=PROCESS_POOL))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(run.base + "/healthz") as r:
                assert r.status == 200
            killer = images.jpeg_bytes(images.photo(9601))
            kill_marks(killer)
            event = await upload_and_publish(mediawiki, sse_server, f"Pool down {uuid.uuid4().hex[:8]}.jpg", killer)
            await run.finished(1, timeout=240)
            assert await run.service.stores.ledger.event_outcome(event["meta"]["id"]) == "error:decoder"
            async with http.get(run.base + "/healthz") as r:
                body = await r.json()
                assert r.status == 503
            assert "decode pool could not be restarted" in body["problems"]["pipeline"]
            async with http.get(run.base + "/metrics") as r:
                text = await r.text()
            assert metric(text, "mediamoderation_decode_pool_restarts_total", result="failed") == 2
    finally:
        await run.stop()


async def test_decode_workers_are_started_with_the_service_not_on_the_first_upload(
    tmp_path: Path, mediawiki: MediaWikiServer, sse_server: EventStreamsServer, smtp_server: SmtpServer,
) -> None:
    """The forkserver loads the decoders and compiled kernels, and the workers start, before the service says it
    has started: the first upload does not wait for them (nor, on a first start, for numba's compiler)."""
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    run = await start(make_config(tmp_path, mediawiki, sse_server, smtp_server, bank, pipeline=PROCESS_POOL))
    try:
        pool = run.service._cpu
        assert isinstance(pool, pool_module.ProcessPool)
        workers = pool._executor._workers  # type: ignore[attr-defined]  # PipeExecutor's
        assert len(workers) == PROCESS_POOL["cpu_workers"]
        assert all(w.process.is_alive() for w in workers)
    finally:
        await run.stop()
