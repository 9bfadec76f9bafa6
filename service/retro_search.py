"""Where the retroactive PDQ search runs, and how it keeps to its share of the CPU.

One small interface, :class:`PdqSearch`: the stored files' PDQ hashes go in with ``add``, a batch of new bank
hashes is answered by ``query`` (one query per hash, at the bank's threshold), ``size`` counts what is in,
``close`` ends it.

:class:`SearchProcess` (the running service) keeps the index in a **process of its own**: the search never
holds the service's GIL, so the event loop and the decode pool keep their pace, and the service process no
longer holds the stored hashes' index.  The process is owned: it is started on first use, ended by ``close``,
and when it dies (OOM killer, a crash) the call that sees it raises :class:`SearchDied`, the next call starts a
new one (``generation`` counts them) and the caller loads the stored hashes into it again
(:class:`service.retro.StoredPdqs` does).

:class:`LocalSearch` keeps the index in this process and searches in a worker thread (tests, and the one-off
``mediamoderation retro run``, which runs at a whole core).

Both keep to ``cpu_share`` of one core with a :class:`DutyCycle` driven by the search's **own CPU time**
(the process's in :class:`SearchProcess`, the thread's in :class:`LocalSearch`), not by priority: after each
slice of work it sleeps until its CPU time is at most ``cpu_share`` of the wall time since the slice began.
So it never takes more than its share beside live scanning, and when the machine is saturated and the
search got less than its share, it does not sleep at all: at normal priority a process asking for 15% of a
core gets it from the kernel's fair scheduler, so a delta keeps moving (at nice 19 it did not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np

from service.errors import ServiceError
from service.matchers import pdq_join
from service.matchers.pdq_index import PdqIndex

log = logging.getLogger(__name__)

Found = tuple[int, int, int]  # file id, query row, distance
SLICE = 0.02  # CPU seconds of work between pauses
VARIANTS = 7  # rotated / mirrored variants per stored file (the eight dihedral ones but the image as shown)


class SearchDied(ServiceError):
    """The search process ended (killed, crashed) during a call: its index is gone; the next call starts a new one."""


class SearchFailed(ServiceError):
    """The search raised (bad input, out of memory): the process is alive and its index intact."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Stored hashes on their way into a search: file ids and (N, 4) uint64 rows of the image as shown, and the
    rotated and mirrored variants' rows with their file ids."""

    ids: np.ndarray
    words: np.ndarray
    var_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # one per file: VARIANTS rows each
    var_words: np.ndarray = field(default_factory=lambda: np.empty((0, 4), np.uint64))


class PdqSearch(Protocol):
    @property
    def size(self) -> int:
        """Stored hashes in the index."""
        ...

    @property
    def variants(self) -> int:
        """Stored rotated / mirrored variant hashes."""
        ...

    @property
    def generation(self) -> int:
        """Changes when the index was lost (a new process): whoever filled it must fill it again."""
        ...

    async def add(self, batch: Batch, *, last: bool = True) -> None:
        """Add stored hashes; with ``last=False`` they are buffered until a call with ``last=True`` adds every
        buffered batch in one index update (a first load is one update)."""
        ...

    async def query(self, rows: np.ndarray, threshold: int) -> list[Found]:
        """(file id, row, distance) for every stored file whose hash, or one of its variants' hashes, is within
        ``threshold`` of a row ((N, 4) uint64), the smallest distance, sorted."""
        ...

    def close(self) -> None: ...


class DutyCycle:
    """Keeps work to ``share`` of one core, measured by ``cpu`` (a CPU clock of the worker); see the module."""

    def __init__(self, share: float, *, cpu: Callable[[], float] = time.process_time,
                 wall: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 slice_cpu: float = SLICE) -> None:
        self.share = share
        self._cpu, self._wall, self._sleep, self._slice = cpu, wall, sleep, slice_cpu
        self._cpu0 = cpu()
        self._wall0 = wall()
        self.paused = 0.0  # seconds slept in all

    def restart(self) -> None:
        """Begin a new slice (after idle time, which must not count as time the work was entitled to)."""
        self._cpu0, self._wall0 = self._cpu(), self._wall()

    def tick(self) -> None:
        """Between two units of work: once a slice of CPU is used, sleep what the share requires."""
        if self.share >= 1:
            return
        used = self._cpu() - self._cpu0
        if used < self._slice:
            return
        pause = used / self.share - (self._wall() - self._wall0)
        if pause > 0:
            self._sleep(pause)
            self.paused += pause
        self.restart()


class _Index:
    """The index, the variants and the duty cycle, wherever they run (the search process or a thread).

    The stored files' PDQ hashes of the image as shown are in a :class:`PdqIndex`; their rotated and mirrored
    variants (seven per file) are kept as packed rows beside it and streamed past each query batch
    (:func:`service.matchers.pdq_join.join`): indexing them would take seven times the index's memory."""

    def __init__(self, duty: DutyCycle) -> None:
        self.index = PdqIndex()
        self.duty = duty
        self._pending: list[Batch] = []
        self.var_ids = np.empty(0, np.int64)  # file ids (capacity-sized); file k has rows VARIANTS*k ...
        self.var_words = np.empty((0, 4), np.uint64)
        self.n_files = 0  # files with variants

    def add(self, batch: Batch, last: bool) -> tuple[int, int]:
        self._pending.append(batch)
        if last:
            pending, self._pending = self._pending, []
            self.duty.restart()
            self.index.add(np.concatenate([p.ids for p in pending]), np.concatenate([p.words for p in pending]))
            self.duty.tick()
            self._add_variants(np.concatenate([p.var_ids for p in pending]),
                               np.concatenate([p.var_words for p in pending]))
        return len(self.index), self.n_var

    @property
    def n_var(self) -> int:
        return self.n_files * VARIANTS

    def _add_variants(self, ids: np.ndarray, words: np.ndarray) -> None:
        if words.shape[0] != ids.size * VARIANTS:
            raise ValueError(f"{words.shape[0]} variant hashes for {ids.size} files")
        need = self.n_files + ids.size
        if need > self.var_ids.size:  # grow by half at least: appends stay amortised O(1)
            cap = max(need, self.var_ids.size * 3 // 2, 1024)
            self.var_ids = np.resize(self.var_ids, cap)
            grown = np.empty((cap * VARIANTS, 4), np.uint64)
            grown[:self.n_var] = self.var_words[:self.n_var]
            self.var_words = grown
        self.var_ids[self.n_files:need] = ids
        self.var_words[self.n_var:need * VARIANTS] = words
        self.n_files = need

    def query(self, rows: np.ndarray, threshold: int) -> list[Found]:
        best: dict[tuple[int, int], int] = {}
        self.duty.restart()
        for row in range(rows.shape[0]):
            for file_id, dist, _ in self.index.query(rows[row:row + 1], threshold):
                best[file_id, row] = dist
            self.duty.tick()
        if self.n_var:
            srow, qrow, qdist = pdq_join.join(self.var_words[:self.n_var], rows, threshold, self.duty.tick)
            files = self.var_ids[srow // VARIANTS]
            for file_id, row, d in zip(files.tolist(), qrow.tolist(), qdist.tolist(), strict=True):
                if d < best.get((file_id, row), d + 1):
                    best[file_id, row] = d
        return sorted((file_id, row, dist) for (file_id, row), dist in best.items())


class LocalSearch:
    """The index in this process, searched in one worker thread at most ``cpu_share`` of a core (thread CPU)."""

    def __init__(self, cpu_share: float = 1.0) -> None:
        self._index = _Index(DutyCycle(cpu_share, cpu=time.thread_time))
        self._lock = threading.Lock()  # the duty cycle measures one thread's clock: one call at a time

    @property
    def index(self) -> PdqIndex:
        return self._index.index

    @property
    def size(self) -> int:
        return len(self._index.index)

    @property
    def variants(self) -> int:
        return self._index.n_var

    @property
    def generation(self) -> int:
        return 0

    async def add(self, batch: Batch, *, last: bool = True) -> None:
        await asyncio.to_thread(self._locked, self._index.add, batch, last)

    async def query(self, rows: np.ndarray, threshold: int) -> list[Found]:
        found: list[Found] = await asyncio.to_thread(self._locked, self._index.query, rows, threshold)
        return found

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    def close(self) -> None:
        pass


def serve(conn: Connection, cpu_share: float) -> None:  # pragma: no cover - runs in the search process
    """The search process: answer requests on ``conn`` until it closes.  A request is ``(op, *args)``; the
    reply ``("ok", value)`` or ``("error", text)``."""
    index = _Index(DutyCycle(cpu_share))
    ops: dict[str, Callable[..., Any]] = {"add": index.add, "query": index.query, "ping": lambda: True}
    while True:
        try:
            op, *args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", ops[op](*args))
        except Exception as exc:  # reported to the caller, which decides; the process goes on
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)


def _roundtrip(conn: Connection, request: tuple[Any, ...]) -> tuple[str, Any]:
    conn.send(request)
    reply: tuple[str, Any] = conn.recv()
    return reply


class SearchProcess:
    """The index in a process of its own (see the module docstring); one call at a time."""

    def __init__(self, cpu_share: float, *, start_timeout: float = 60.0) -> None:
        self.cpu_share = cpu_share
        self._ctx = multiprocessing.get_context("forkserver")  # as the decode pool: no fork of a threaded process
        self._start_timeout = start_timeout
        self._proc: Any = None  # multiprocessing.Process of the context
        self._conn: Connection | None = None
        self._size = 0
        self._variants = 0
        self._generation = 0
        self._lock = asyncio.Lock()
        # Calls wait for their reply in a thread of their own: never one of the event loop's default threads.
        self._waiter = ThreadPoolExecutor(1, thread_name_prefix="retro-search")

    @property
    def size(self) -> int:
        return self._size

    @property
    def variants(self) -> int:
        return self._variants

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def add(self, batch: Batch, *, last: bool = True) -> None:
        self._size, self._variants = await self._call("add", batch, last)

    async def query(self, rows: np.ndarray, threshold: int) -> list[Found]:
        found: list[Found] = await self._call("query", rows, threshold)
        return found

    async def _call(self, op: str, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._conn is None:
                await asyncio.wait_for(loop.run_in_executor(self._waiter, self._start), self._start_timeout)
            assert self._conn is not None
            try:
                status, value = await loop.run_in_executor(self._waiter, _roundtrip, self._conn, (op, *args))
            except (EOFError, OSError) as exc:
                code = self._lost()
                raise SearchDied(f"the retroactive search process ended (exit code {code})") from exc
            except asyncio.CancelledError:
                self._lost()  # the reply would come to the next call: end this process, the next call starts one
                raise
        if status != "ok":
            raise SearchFailed(str(value))
        return value

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=serve, args=(child, self.cpu_share), name="retro-search", daemon=True)
        proc.start()
        child.close()  # only the process holds its end: its death is EOF here
        self._proc, self._conn, self._size, self._variants = proc, parent, 0, 0
        log.info("retroactive search process started", extra={"pid": proc.pid, "generation": self._generation})

    def _lost(self) -> int | None:
        """End and forget the process (its index is gone); returns its exit code."""
        proc, conn = self._proc, self._conn
        self._proc, self._conn, self._size, self._variants = None, None, 0, 0
        self._generation += 1
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        # A call still waiting for this process's reply ends with it (EOF); the next calls get a fresh thread.
        self._waiter.shutdown(wait=False)
        self._waiter = ThreadPoolExecutor(1, thread_name_prefix="retro-search")
        code: int | None = proc.exitcode
        return code

    def close(self) -> None:
        """End the process (it holds nothing but the index, which the store can rebuild); a later call starts
        a new one."""
        if self._proc is not None:
            with contextlib.suppress(OSError, ValueError):
                self._lost()
