"""Where CPU work on untrusted media runs: a process pool that survives its workers, or threads.

One small interface, :class:`CpuPool`: ``await pool.run(fn, *args)``, ``pool.failure`` (None while the
pool can work) and ``pool.shutdown()``.  The pipeline and the rescanner only see that interface.

:class:`ProcessPool` (``pipeline.cpu_pool: process``, the default) wraps a process executor
(forkserver; :class:`~service.media.pipe_pool.PipeExecutor`, which has the contract of a
``ProcessPoolExecutor`` without its helper threads) whose workers run under an address-space ceiling
(``RLIMIT_AS``), so an image too big for the ceiling raises ``MemoryError`` in the worker, which ends that upload
``unscannable:decoder-memory`` and leaves the worker alive.  The ceiling is ``decode_memory_limit`` beyond what a
worker maps once started: its libraries and numba's compiled kernels, a few hundred MB of address space, are loaded
once in the forkserver (:mod:`service.media.preload`) and shared by every worker forked from it.

A worker that dies anyway (SIGKILL from the kernel's OOM killer, a segfault in a decoder) breaks the
executor for good: every future in it fails with ``BrokenProcessPool`` and so would every
later one.  Here the first call that sees the break replaces the executor (at most once per
generation), and every upload whose call was in the broken pool is retried **once, alone**, in a
one-worker quarantine pool: the executor cannot say which of its calls killed the worker, so the others
(innocent) finish normally and only an upload that also kills the quarantine worker ends
``unscannable:decoder-crashed``.  A crash therefore costs at most two worker deaths and fails no
upload but its own.

If a new executor cannot be started ``max_rebuild_failures`` times in a row, the pool is down for good:
``failure`` says why (the liveness check makes ``/healthz`` fail so Kubernetes restarts the pod) and
calls raise :class:`DecodePoolDown` (outcome ``error:decoder``).

:class:`ExecutorPool` runs calls in a given executor (``cpu_pool: thread``, and tests that pass an
executor or None); a thread cannot be given its own memory ceiling, so it has none.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import resource
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

from service.errors import ServiceError, Unscannable
from service.media.pipe_pool import PipeExecutor
from service.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

CRASHED = "decoder-crashed"
OUT_OF_MEMORY = "decoder-memory"


class DecodePoolDown(ServiceError):
    """The process pool broke and could not be started again; ``reason`` makes the outcome ``error:decoder``."""

    reason = "decoder"


class CpuPool(Protocol):
    """Runs a picklable top-level function with picklable arguments away from the event loop."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...

    @property
    def failure(self) -> str | None:
        """Why the pool can no longer run anything (the liveness check reports it), or None."""
        ...

    def shutdown(self) -> None: ...


def _guarded(fn: Callable[..., T], *args: Any) -> T:
    """Runs in the worker: running out of memory ends this call, not the worker."""
    try:
        return fn(*args)
    except MemoryError as exc:
        raise Unscannable(OUT_OF_MEMORY, f"out of memory while decoding ({type(exc).__name__})") from None


def ping() -> bool:  # pragma: no cover - runs in pool workers
    """A call that only shows the pool's workers are up (they start with the first call)."""
    return True


def init_worker(memory_limit: int | None) -> None:  # pragma: no cover - runs in pool workers
    """Worker initializer: the imports every call needs and the compiled kernels (already there when the
    forkserver preloaded them), then the address-space ceiling: ``memory_limit`` beyond what is mapped now."""
    import service.media.thumbnail

    service.media.thumbnail.warm_up()
    if memory_limit:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = mapped_bytes() + memory_limit
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def mapped_bytes() -> int:
    """This process's address space (``VmSize``), 0 where /proc does not say."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def process_executor(workers: int, memory_limit: int | None) -> Executor:
    """Forkserver worker processes with the memory ceiling, driven by the event loop (:mod:`.pipe_pool`).
    The forkserver (started by the first of them, unless something else started it already) preloads the
    decoders and compiled kernels for all."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", "service.media.preload"])
    return PipeExecutor(workers, context=ctx, initializer=init_worker, initargs=(memory_limit,))


class ExecutorPool:
    """Calls run in ``executor`` (None: the event loop's default executor); it never breaks."""

    def __init__(self, executor: Executor | None = None) -> None:
        self.executor = executor

    @property
    def failure(self) -> str | None:
        return None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, _guarded, fn, *args)

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


def thread_pool(workers: int) -> ExecutorPool:
    import service.media.thumbnail

    service.media.thumbnail.warm_up()  # compiled now, not on the first upload
    return ExecutorPool(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cpu"))


def as_cpu_pool(cpu: CpuPool | Executor | None) -> CpuPool:
    """What the pipeline and the rescanner accept: a pool, a plain executor or None (the loop's default)."""
    if cpu is None or isinstance(cpu, Executor):
        return ExecutorPool(cpu)
    return cpu


class ProcessPool:
    """A process pool that replaces its executor when a worker dies; see the module docstring."""

    def __init__(
        self,
        workers: int,
        *,
        memory_limit: int | None,
        metrics: Metrics,
        max_rebuild_failures: int = 3,
        start_timeout: float = 60.0,
        start: Callable[[int], Executor] | None = None,
    ) -> None:
        self.workers = workers
        self.metrics = metrics
        self.max_rebuild_failures = max_rebuild_failures
        self.start_timeout = start_timeout
        # ``start(n)`` makes an executor of n workers (tests inject one that fails).
        self._start = start or (lambda n: process_executor(n, memory_limit))
        self._executor = self._start(workers)
        self._generation = 0
        self._rebuild_lock = asyncio.Lock()
        self._quarantine: Executor | None = None
        self._quarantine_lock = asyncio.Lock()
        self._retries = 0  # calls waiting for or running in the quarantine worker
        self._failure: str | None = None
        self._closed = False

    @property
    def failure(self) -> str | None:
        return self._failure

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        while True:
            if self._failure is not None:
                raise DecodePoolDown(self._failure)
            generation, executor = self._generation, self._executor
            try:
                future = executor.submit(_guarded, fn, *args)
            except BrokenProcessPool:  # broken before this call got in: it is not involved
                await self._rebuild(generation)
                continue
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                pass
            break
        # A worker died while this call was queued or running in that executor.
        await self._rebuild(generation)
        return await self._run_alone(fn, args)

    async def _rebuild(self, generation: int) -> None:
        """Replace the broken executor of ``generation`` (once, whoever asks first).  Shielded: an upload
        that hits its deadline meanwhile stops waiting, the restart goes on (it raises nothing)."""
        await asyncio.shield(self._rebuild_once(generation))

    async def _rebuild_once(self, generation: int) -> None:
        async with self._rebuild_lock:
            if generation != self._generation or self._failure is not None or self._closed:
                return
            self.metrics.decode_worker_crashes.labels("main").inc()
            log.error("a decode worker died; restarting the decode pool", extra={"generation": generation})
            self._executor.shutdown(wait=False, cancel_futures=True)
            last = ""
            for attempt in range(1, self.max_rebuild_failures + 1):
                try:
                    executor = await self._started(self.workers)
                except Exception as exc:  # any failure to start counts; after N in a row the pool is down
                    last = f"{type(exc).__name__}: {exc}"
                    self.metrics.decode_pool_restarts.labels("failed").inc()
                    log.error("decode pool restart failed", extra={"attempt": attempt, "error": last})
                    await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
                    continue
                if self._closed:  # shut down while this one started
                    executor.shutdown(wait=False, cancel_futures=True)
                    return
                self._executor = executor
                self._generation += 1
                self.metrics.decode_pool_restarts.labels("ok").inc()
                log.warning("decode pool restarted", extra={"generation": self._generation})
                return
            self._failure = f"decode pool could not be restarted ({self.max_rebuild_failures} attempts): {last}"
            log.critical("decode pool is down", extra={"error": self._failure})

    async def _started(self, workers: int) -> Executor:
        """A new executor that has shown it can run a call (its workers start and pass the initializer)."""
        executor = self._start(workers)
        try:
            await asyncio.wait_for(asyncio.wrap_future(executor.submit(ping)), self.start_timeout)
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        return executor

    async def _run_alone(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """The retry of a call whose executor broke: alone in a one-worker pool, so a second death is its own.
        That worker exists only while retries wait for it (the pod's memory is planned for ``workers``)."""
        self._retries += 1
        try:
            async with self._quarantine_lock:
                return await self._in_quarantine(fn, args)
        finally:
            self._retries -= 1
            if self._retries == 0 and self._quarantine is not None:
                self._quarantine.shutdown(wait=False, cancel_futures=True)
                self._quarantine = None

    async def _in_quarantine(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._failure is not None:
            raise DecodePoolDown(self._failure)
        if self._quarantine is None:
            try:
                self._quarantine = await self._started(1)
            except Exception as exc:
                raise DecodePoolDown(f"could not start a worker to retry in: {type(exc).__name__}: {exc}") from exc
        try:
            return await asyncio.wrap_future(self._quarantine.submit(_guarded, fn, *args))
        except BrokenProcessPool:
            self.metrics.decode_worker_crashes.labels("retry").inc()
            self._quarantine.shutdown(wait=False, cancel_futures=True)
            self._quarantine = None
            raise Unscannable(CRASHED, "the decode worker died on this file twice (killed, or out of memory "
                                       "outside the ceiling)") from None

    def shutdown(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._quarantine is not None:
            self._quarantine.shutdown(wait=False, cancel_futures=True)
