"""The pipeline keeps scanning through a dying decode worker and through a 120-megapixel 16-bit PNG:
real ``prepare`` in the real process pool (memory ceiling in force), the pipeline tests' stand-ins for
the source, the wiki and the store."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from service.config import Config, ThumbnailSection, WikiSection
from service.media.pool import ProcessPool
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.models import FetchedMedia, FileInfo, PreparedMedia
from service.pipeline import Pipeline
from service.store import Stores
from tests.infra import images
from tests.infra.huge_png import grey16_png
from tests.test_decode_pool import MARKERS
from tests.test_pipeline import SHA_PDQ, FakeExact, FakePdq, ListSource, config, make_event, planner, sample

MiB = 1024 * 1024


def kill_or_prepare(data: bytes, sha1: str, cfg: ThumbnailSection, *, md5: str | None = None,
                    source: str = "thumbnail") -> PreparedMedia:
    """The real ``prepare``, except that the worker SIGKILLs itself on an upload marked for it."""
    if (MARKERS / f"kill-{sha1}").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return prepare(data, sha1, cfg, md5=md5, source=source)


class BytesFetcher:
    """The wiki stand-in: serves the given bytes for each SHA-1, as the original file."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    async def fetch(self, wiki: WikiSection, title: str, *, expected_sha1: str | None = None) -> FetchedMedia:
        assert expected_sha1 is not None
        data = self.files[expected_sha1]
        info = FileInfo(title=title, url="u", description_url="d", sha1=expected_sha1, size=len(data), width=1,
                        height=1, mime="image/png", mediatype="BITMAP")
        return FetchedMedia(info=info, data=data, data_source="original")


def pipeline_config(tmp_path: Path) -> Config:
    cfg = config(tmp_path, concurrency={"fetch": 4, "thumbnail": 4, "match": 2, "act": 2}, queue_size=8)
    # The list source ends after its last event: give the drain time for pool restarts on a busy machine.
    return dataclasses.replace(cfg, service=dataclasses.replace(cfg.service, shutdown_grace=120))


async def scan(cfg: Config, stores: Stores, files: dict[str, bytes], pool: ProcessPool,
               thumbnail: ThumbnailSection, prepare_fn: Callable[..., PreparedMedia] = prepare,
               ) -> tuple[list[str], list[str], ListSource]:
    """Run every file through the pipeline (events in the order given); the outcomes and notify keys."""
    source = ListSource([make_event(n, sha1) for n, sha1 in enumerate(files)])
    kicked: list[str] = []
    p = Pipeline(cfg, source=source, store=stores.pipeline, fetcher=BytesFetcher(files), exact=FakeExact(),
                 matchers=[FakePdq()], planners=[planner], cpu=pool, prepare=prepare_fn, metrics=pool.metrics,
                 on_actions=lambda items: kicked.extend(i.key for i in items), thumbnail_cfg=thumbnail)
    await asyncio.wait_for(p.run(), 240)
    outcomes = [await stores.ledger.event_outcome(f"event-{n}") or "" for n in range(len(files))]
    return outcomes, kicked, source


def photo_files(*seeds: int) -> dict[str, bytes]:
    out = {}
    for seed in seeds:
        data = images.jpeg_bytes(images.photo(seed))
        out[hashlib.sha1(data).hexdigest()] = data
    return out


async def test_a_killed_worker_fails_only_its_upload_and_later_matches_are_recorded(
    tmp_path: Path, stores: Stores,
) -> None:
    MARKERS.mkdir(exist_ok=True)
    killer_sha1 = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
    before = photo_files(9101, 9102, 9103)
    after = photo_files(9104, 9105)
    files = {**before, killer_sha1: images.jpeg_bytes(images.photo(9106)),
             SHA_PDQ: images.jpeg_bytes(images.photo(9107)), **after}
    marker = MARKERS / f"kill-{killer_sha1}"
    marker.touch()
    pool = ProcessPool(2, memory_limit=1024 * MiB, metrics=Metrics())
    try:
        outcomes, kicked, source = await scan(pipeline_config(tmp_path), stores, files, pool, ThumbnailSection(),
                                              kill_or_prepare)
    finally:
        pool.shutdown()
        marker.unlink()
    by_sha1 = dict(zip(files, outcomes, strict=True))
    assert by_sha1.pop(killer_sha1) == "unscannable:decoder-crashed"
    assert by_sha1.pop(SHA_PDQ) == "match"  # after the crash: still recorded, its email queued
    assert set(by_sha1.values()) == {"clean"}  # uploads in flight at the crash were retried, not failed
    assert kicked == [f"notify:testwiki:File:Test {len(before) + 1}.jpg:{SHA_PDQ}"]
    assert source.committed[-1] == len(files) - 1
    m = pool.metrics
    assert sample(m, "mediamoderation_outcomes_total", outcome="unscannable:decoder-crashed") == 1
    assert sample(m, "mediamoderation_decode_pool_restarts_total", result="ok") == 1
    assert sample(m, "mediamoderation_decode_worker_crashes_total", pool="main") == 1
    assert pool.failure is None


async def test_16bit_120_megapixel_png_is_refused_by_the_decoded_size_budget(
    tmp_path: Path, stores: Stores,
) -> None:
    big = await asyncio.to_thread(grey16_png)  # 10950 x 10950, 16-bit greyscale: 240 MB decoded
    big_sha1 = hashlib.sha1(big).hexdigest()
    files = {**photo_files(9201), big_sha1: big, SHA_PDQ: images.jpeg_bytes(images.photo(9202)),
             **photo_files(9203)}
    cfg = pipeline_config(tmp_path)
    # The defaults: a 1 GiB ceiling per worker and a 200 MB budget.
    pool = ProcessPool(2, memory_limit=cfg.pipeline.decode_memory_limit, metrics=Metrics())
    try:
        outcomes, kicked, _ = await scan(cfg, stores, files, pool, cfg.thumbnail)
    finally:
        pool.shutdown()
    assert outcomes == ["clean", "unscannable:too-large-decoded", "match", "clean"]
    assert len(kicked) == 1
    assert sample(pool.metrics, "mediamoderation_outcomes_total", outcome="unscannable:too-large-decoded") == 1
    assert sample(pool.metrics, "mediamoderation_decode_pool_restarts_total", result="ok") == 0


async def test_16bit_png_decoded_under_a_low_ceiling_fails_only_that_upload(
    tmp_path: Path, stores: Stores,
) -> None:
    big = await asyncio.to_thread(grey16_png)
    big_sha1 = hashlib.sha1(big).hexdigest()
    files = {big_sha1: big, **photo_files(9301), SHA_PDQ: images.jpeg_bytes(images.photo(9302))}
    cfg = pipeline_config(tmp_path)
    no_budget = dataclasses.replace(cfg.thumbnail, max_decoded_bytes=10**12)  # decoding is attempted
    pool = ProcessPool(2, memory_limit=384 * MiB, metrics=Metrics())  # the decode needs ~800 MB
    try:
        outcomes, kicked, _ = await scan(cfg, stores, files, pool, no_budget)
    finally:
        pool.shutdown()
    assert outcomes == ["unscannable:decoder-memory", "clean", "match"]
    assert len(kicked) == 1
    assert sample(pool.metrics, "mediamoderation_decode_worker_crashes_total", pool="main") == 0
    assert pool.failure is None


def test_decoded_size_budget_keeps_a_worker_inside_the_default_ceiling(tmp_path: Path) -> None:
    """A file just under the default budget, of the costliest common kind (RGBA: flattened onto white
    through full-size copies), still decodes under the default ceiling."""
    cfg = pipeline_config(tmp_path)
    side = int((cfg.thumbnail.max_decoded_bytes / 4) ** 0.5)  # 7071 x 7071 RGBA: 200 MB decoded
    small = images.photo(9401, (256, 256)).convert("RGBA")
    small.putalpha(Image.linear_gradient("L").resize((256, 256)))
    out = io.BytesIO()
    small.resize((side, side), Image.Resampling.NEAREST).save(out, "PNG", compress_level=1)
    data = out.getvalue()
    pool = ProcessPool(1, memory_limit=cfg.pipeline.decode_memory_limit, metrics=Metrics())

    async def run() -> Any:
        try:
            return await pool.run(prepare, data, "0" * 40, cfg.thumbnail)
        finally:
            pool.shutdown()

    media = asyncio.run(run())
    assert media.width == side and media.pdq is not None
