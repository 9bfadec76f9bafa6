"""The decode pool survives its workers: a worker killed mid-call fails only that call, the pool restarts,
other calls in flight are retried alone; running out of memory under the ceiling ends one call; a pool
that cannot restart reports why (the liveness check)."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from pathlib import Path

import pytest

from service.config import config_from_dict, warnings_for
from service.errors import ConfigError, Unscannable
from service.media.pool import DecodePoolDown, ProcessPool, process_executor
from service.metrics import Metrics
from tests.helpers import until

# Files the test-only functions below look at: the pool's workers are other processes.
MARKERS = Path(tempfile.gettempdir()) / "mediamoderation-test-markers"


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_self_if_marked(name: str) -> int:
    """SIGKILL this worker while a marker file ``name`` exists, else answer this worker's pid."""
    if (MARKERS / name).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def wait_for_marker(name: str, timeout: float = 60.0) -> str:
    """Stay busy in the worker until the test creates the marker (so this call is in flight at a crash)."""
    (MARKERS / f"{name}.started").touch()
    end = time.monotonic() + timeout
    while not (MARKERS / name).exists():
        if time.monotonic() > end:
            raise TimeoutError(name)
        time.sleep(0.01)  # polling a file another process creates
    return "done"


def allocate(n: int) -> int:
    return len(bytearray(n))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def marker() -> Callable[[str], Path]:
    MARKERS.mkdir(exist_ok=True)
    made: list[Path] = []

    def name(prefix: str) -> Path:
        path = MARKERS / f"{prefix}-{uuid.uuid4().hex}"
        made.append(path)
        return path

    yield name
    for path in made:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".started").unlink(missing_ok=True)


@pytest.fixture
async def pool() -> AsyncIterator[ProcessPool]:
    p = ProcessPool(2, memory_limit=512 * 1024 * 1024, metrics=Metrics())
    yield p
    p.shutdown()


async def test_sigkilled_worker_fails_only_its_own_call(pool: ProcessPool, marker: Callable[[str], Path]) -> None:
    go = marker("go")
    innocent = asyncio.create_task(pool.run(wait_for_marker, go.name))
    await until(lambda: go.with_name(go.name + ".started").exists(), 60, interval=0.02)  # running in one worker
    killer = asyncio.create_task(pool.run(kill_self))  # the other worker dies mid-call
    await until(lambda: sample(pool.metrics, "mediamoderation_decode_worker_crashes_total", pool="main") >= 1, 60,
                interval=0.02)
    go.touch()  # only now can the innocent call finish: it was in flight when the pool broke
    with pytest.raises(Unscannable) as crashed:
        await asyncio.wait_for(killer, 120)
    assert crashed.value.reason == "decoder-crashed"
    assert await asyncio.wait_for(innocent, 120) == "done"  # retried alone, finished normally
    assert sample(pool.metrics, "mediamoderation_decode_worker_crashes_total", pool="retry") == 1  # the killer again
    assert sample(pool.metrics, "mediamoderation_decode_pool_restarts_total", result="ok") == 1
    assert pool._quarantine is None  # the one-worker retry pool lives only while retries wait for it
    # The next calls run on the new pool, in parallel as before.
    assert await asyncio.wait_for(asyncio.gather(*(pool.run(allocate, 10) for _ in range(4))), 60) == [10] * 4
    assert pool.failure is None


async def test_a_worker_killed_from_outside_while_idle_breaks_nothing(
    pool: ProcessPool, marker: Callable[[str], Path],
) -> None:
    pid = await pool.run(kill_self_if_marked, marker("never").name)
    os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
    # Calls made after the death run on a restarted pool, none fails.
    results = await asyncio.wait_for(asyncio.gather(*(pool.run(allocate, n) for n in range(6))), 120)
    assert results == list(range(6))
    assert sample(pool.metrics, "mediamoderation_decode_pool_restarts_total", result="ok") == 1


async def test_out_of_memory_under_the_ceiling_ends_one_call_and_keeps_the_worker(pool: ProcessPool) -> None:
    pid = await pool.run(os.getpid)
    with pytest.raises(Unscannable) as exc:
        await pool.run(allocate, 1024 * 1024 * 1024)  # twice the 512 MiB ceiling
    assert exc.value.reason == "decoder-memory"
    assert await pool.run(allocate, 50 * 1024 * 1024) == 50 * 1024 * 1024  # well under it: fine
    assert sample(pool.metrics, "mediamoderation_decode_worker_crashes_total", pool="main") == 0
    assert sample(pool.metrics, "mediamoderation_decode_pool_restarts_total", result="ok") == 0
    os.kill(pid, 0)  # that worker is still alive


async def test_pool_that_cannot_restart_is_down_with_its_reason() -> None:
    starts: list[int] = []

    def start(n: int) -> Executor:
        starts.append(n)
        if len(starts) > 1:
            raise OSError(11, "Resource temporarily unavailable")  # fork fails, as at a process limit
        return process_executor(n, None)

    metrics = Metrics()
    pool = ProcessPool(1, memory_limit=None, metrics=metrics, max_rebuild_failures=2, start=start)
    try:
        with pytest.raises(DecodePoolDown):
            await asyncio.wait_for(pool.run(kill_self), 60)
        assert pool.failure is not None and "Resource temporarily unavailable" in pool.failure
        assert sample(metrics, "mediamoderation_decode_pool_restarts_total", result="failed") == 2
        with pytest.raises(DecodePoolDown) as down:  # later calls fail at once: error:decoder
            await pool.run(allocate, 1)
        assert down.value.reason == "decoder"
    finally:
        pool.shutdown()


def _cfg_data(tmp_path: Path, **sections: dict[str, object]) -> dict[str, object]:
    bank = tmp_path / "bank.csv"
    bank.write_text("hash,category,source,id\n")
    return {
        "service": {"user_agent": "mm-test/0 (ts@example.org)"},
        "wikis": [{"id": "testwiki", "api_url": "http://127.0.0.1:1/api.php"}],
        "banks": {"list": [{"name": "b", "path": str(bank), "category": "child-protection"}]},
        "actions": {"notify": {"sender": "mm@example.org", "recipients": ["ts@example.org"]}},
        **sections,
    }


def test_memory_settings_have_safe_defaults(tmp_path: Path) -> None:
    cfg = config_from_dict(_cfg_data(tmp_path), base=tmp_path)
    assert cfg.pipeline.decode_memory_limit == 1024 * 1024 * 1024
    # The costliest common conversion (RGBA: the decoded image plus a white page and a mask) fits the ceiling.
    assert cfg.thumbnail.max_decoded_bytes * 9 // 4 + 200 * 1024 * 1024 < cfg.pipeline.decode_memory_limit
    assert config_from_dict(_cfg_data(tmp_path, pipeline={"decode_memory_limit": 0}),
                            base=tmp_path).pipeline.decode_memory_limit == 0  # 0: no ceiling


@pytest.mark.parametrize(("sections", "path"), [
    ({"pipeline": {"decode_memory_limit": 100 * 1024 * 1024}}, "pipeline.decode_memory_limit"),
    ({"pipeline": {"decode_memory_limit": -1}}, "pipeline.decode_memory_limit"),
    ({"pipeline": {"decode_memory_limit": "1GiB"}}, "pipeline.decode_memory_limit"),
    ({"thumbnail": {"max_decoded_bytes": 0}}, "thumbnail.max_decoded_bytes"),
])
def test_memory_settings_are_validated(tmp_path: Path, sections: dict[str, dict[str, object]], path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict(_cfg_data(tmp_path, **sections), base=tmp_path)
    assert [p for p, _ in exc.value.problems] == [path]


def test_a_budget_too_large_for_the_ceiling_is_warned_about(tmp_path: Path) -> None:
    assert not [w for w in warnings_for(config_from_dict(_cfg_data(tmp_path), base=tmp_path)) if "decode" in w]
    cfg = config_from_dict(_cfg_data(tmp_path, thumbnail={"max_decoded_bytes": 500_000_000}), base=tmp_path)
    assert [w for w in warnings_for(cfg) if w.startswith("thumbnail.max_decoded_bytes")]
