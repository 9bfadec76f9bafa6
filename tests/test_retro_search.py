"""The retroactive PDQ search: its duty cycle, and its own process, which is restarted and reloaded when it dies."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.config import ThumbnailSection
from service.file_hashes import scanned_file
from service.media.thumbnail import prepare
from service.metrics import Metrics
from service.retro import RetroMatcher, StoredPdqs, pdq_rows
from service.retro_search import Batch, DutyCycle, LocalSearch, SearchDied, SearchProcess
from service.store import MemoryStore, sqlite_stores
from service.store.base import RETRO_DONE
from tests.infra.images import jpeg_bytes, photo
from tests.test_retro import cfg, delta, event, near, pdq, stored


class Clocks:
    """A CPU clock and a wall clock the test moves; ``sleep`` advances the wall clock only."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0
        self.slept: list[float] = []

    def work(self, cpu: float, wall: float | None = None) -> None:
        self.cpu += cpu
        self.wall += cpu if wall is None else wall

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.wall += seconds


def duty(clocks: Clocks, share: float) -> DutyCycle:
    return DutyCycle(share, cpu=lambda: clocks.cpu, wall=lambda: clocks.wall, sleep=clocks.sleep, slice_cpu=0.02)


def test_the_duty_cycle_keeps_cpu_time_to_its_share_of_the_wall_time() -> None:
    clocks = Clocks()
    d = duty(clocks, 0.25)
    for _ in range(100):
        clocks.work(0.005)
        d.tick()
    assert clocks.cpu == pytest.approx(0.5)
    assert clocks.cpu / clocks.wall == pytest.approx(0.25, rel=0.05)
    assert d.paused == pytest.approx(sum(clocks.slept))


def test_the_duty_cycle_does_not_pause_work_that_got_less_than_its_share() -> None:
    """On a saturated machine the search gets less CPU than wall time: it then never sleeps, so it keeps moving."""
    clocks = Clocks()
    d = duty(clocks, 0.25)
    for _ in range(100):
        clocks.work(0.005, wall=0.05)  # 10% of a core: below the share
        d.tick()
    assert clocks.slept == []
    # Idle time between calls is not credit: after restart() a burst is paused again.
    clocks.wall += 100.0
    d.restart()
    for _ in range(10):
        clocks.work(0.005)
        d.tick()
    assert clocks.slept and clocks.cpu / clocks.wall < 1


def test_a_whole_core_never_pauses() -> None:
    clocks = Clocks()
    d = duty(clocks, 1.0)
    for _ in range(10):
        clocks.work(0.1)
        d.tick()
    assert clocks.slept == []


async def test_the_search_process_answers_like_the_index_in_this_process() -> None:
    rng = np.random.default_rng(7)
    words = rng.integers(0, 2**64, size=(3000, 4), dtype=np.uint64)
    ids = np.arange(1, 3001, dtype=np.int64)
    queries = words[[5, 17, 2999]].copy()
    queries[1, 0] ^= np.uint64(0xFF)  # 8 bits off
    local, remote = LocalSearch(), SearchProcess(0.5)
    try:
        for search in (local, remote):
            await search.add(Batch(ids[:1000], words[:1000]), last=False)
            await search.add(Batch(ids[1000:], words[1000:]))
        assert local.size == remote.size == 3000
        assert remote.pid is not None and remote.pid != os.getpid()
        expected = [(6, 0, 0), (18, 1, 8), (3000, 2, 0)]
        assert sorted(await local.query(queries, 31)) == expected
        assert sorted(await remote.query(queries, 31)) == expected
    finally:
        remote.close()
    assert remote.pid is None


async def test_a_dead_search_process_is_noticed_replaced_and_loaded_again_and_the_delta_finishes() -> None:
    store = MemoryStore()
    await store.put_file_hashes([stored(n) for n in range(1, 7)])
    metrics = Metrics()
    search = SearchProcess(1.0)
    config = cfg(batch=2)
    m = RetroMatcher(config.banks, store=store, planners=[], metrics=metrics,
                     index=StoredPdqs(search, quality_min=config.banks.pdq_quality_min))
    try:
        await m.load()
        assert len(m.pdqs) == 6 and search.generation == 0
        first = search.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # the OOM killer, say
        m.on_delta(delta(*((near(pdq(n), 3), f"h{n}") for n in range(1, 7))))
        await m.step()
        [d] = await store.list_retro_deltas()
        assert d.state == RETRO_DONE and sorted(h[0] for h in d.hits) == [1, 2, 3, 4, 5, 6]
        assert search.generation == 1 and search.pid not in (None, first) and len(m.pdqs) == 6
        assert metrics.registry.get_sample_value("mediamoderation_retro_search_restarts_total") == 1
    finally:
        m.close()


async def test_a_search_process_that_keeps_dying_fails_the_task_for_its_supervisor() -> None:
    store = MemoryStore()
    await store.put_file_hashes([stored(1)])

    class Dying(LocalSearch):
        async def query(self, rows: np.ndarray, threshold: int) -> list[tuple[int, int, int]]:
            raise SearchDied("killed")

    m = RetroMatcher(cfg().banks, store=store, planners=[], metrics=Metrics(), index=StoredPdqs(Dying()))
    await m.load()
    m.on_delta(delta((pdq(1), "h1")))
    with pytest.raises(SearchDied):
        await m.step()
    [d] = await store.list_retro_deltas()
    assert d.progress == 0  # resumed from here by the restarted task


def test_pdq_rows_keep_the_banks_word_layout() -> None:
    h = random.Random(3).randbytes(32)
    assert pdq_rows([h.hex()]).tobytes() == h


@pytest.mark.parametrize("turn", [Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90])
async def test_a_rotated_or_mirrored_upload_scanned_clean_is_found_when_the_original_joins_a_bank(
        tmp_path: Path, turn: Image.Transpose) -> None:
    original = photo(77, size=(400, 300))
    shown = prepare(jpeg_bytes(original), "0" * 40, ThumbnailSection()).pdq
    uploaded = prepare(jpeg_bytes(original.transpose(turn)), "1" * 40, ThumbnailSection())
    assert shown is not None and uploaded.pdq is not None
    assert hamming(shown.hex, uploaded.pdq.hex) > 31  # the image as shown alone would not match
    stores = sqlite_stores(str(tmp_path / "s.sqlite3"))
    await stores.open()
    config = cfg()
    search = SearchProcess(1.0)
    m = RetroMatcher(config.banks, store=stores.retro, planners=[], metrics=Metrics(),
                     index=StoredPdqs(search, quality_min=config.banks.pdq_quality_min))
    try:
        row = scanned_file(event(1), "1" * 40, uploaded)
        assert row.pdq_variants is not None and len(row.pdq_variants) == 7 * 32
        await stores.retro.put_file_hashes([row, stored(2)])
        await m.load()
        assert (len(m.pdqs), search.variants) == (2, 7)
        m.on_delta(delta((shown.hex, "original")))
        await m.step()
        [d] = await stores.retro.list_retro_deltas()
        [(file_id, entry, dist)] = d.hits
        [f] = await stores.retro.files_by_id([file_id])
        assert f.event.title == "File:F1.jpg" and entry == 0 and dist is not None and dist <= 31
    finally:
        m.close()
        await stores.close()


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()
