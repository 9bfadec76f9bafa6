"""An executor of worker processes driven by the event loop itself: one pipe per worker, no helper threads.

``concurrent.futures.ProcessPoolExecutor`` moves every call through two threads of the calling process
(its manager thread and a queue feeder thread) and a feeder thread in the worker; on a busy 2-core
machine those hand-offs cost more CPU than the call's own pickling (measured: ~0.4 ms per call of the
service process, against ~0.1 ms here, see docs/benchmarks.md).  :class:`PipeExecutor` sends each call's
pickled bytes straight down an idle worker's pipe and reads the answer when the event loop sees the pipe
readable; a worker runs one call at a time, the others wait in order in the calling process.

It keeps the executor contract :class:`~service.media.pool.ProcessPool` relies on: ``submit`` returns a
``concurrent.futures.Future``; when any worker dies (killed, crashed, its initializer failed) the
executor is broken for good, like ``ProcessPoolExecutor``: every call in it fails with
``BrokenProcessPool``, the other workers are stopped, and later ``submit`` calls raise it (the pool
then starts a new executor and retries the calls alone).  It must be used from one event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger(__name__)

_STOP = b""  # asks a worker to exit


def serve(conn: Connection, initializer: Callable[..., None] | None,
          initargs: tuple[Any, ...]) -> None:  # pragma: no cover - runs in the worker processes
    """A worker's loop: read a pickled ``(fn, args)``, answer a pickled ``(True, result)`` or ``(False, exc)``."""
    if initializer is not None:
        initializer(*initargs)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # the executor is gone
            return
        if message == _STOP:
            return
        try:
            fn, args = pickle.loads(message)
            answer: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:  # handed to the caller, as ProcessPoolExecutor does
            answer = (False, exc)
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an answer that cannot be pickled is the caller's error, not the worker's
            data = pickle.dumps((False, RuntimeError(f"the call's answer cannot be pickled: {exc!r}")))
        conn.send_bytes(data)


class _Worker:
    __slots__ = ("call", "conn", "process", "stopping")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.call: Future[Any] | None = None  # the call it is running
        self.stopping = False


class PipeExecutor(Executor):
    """``workers`` processes of ``context``, each run through ``initializer(*initargs)`` first; see the module
    docstring.  Every worker starts with the first call."""

    def __init__(self, workers: int, *, context: ForkServerContext | SpawnContext,
                 initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._size = workers
        self._context = context
        self._initializer = initializer
        self._initargs = initargs
        self._workers: list[_Worker] = []
        self._waiting: deque[tuple[Future[Any], bytes]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken: str | None = None
        self._shut = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._broken is not None:
            raise BrokenProcessPool(self._broken)
        if self._shut:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if kwargs:
            raise TypeError("PipeExecutor.submit takes positional arguments only")
        payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        if not self._workers:
            self._start()
        else:
            self._follow_loop()
        future: Future[Any] = Future()
        self._waiting.append((future, payload))
        self._dispatch()
        return future

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for _ in range(self._size):
            parent, child = self._context.Pipe(duplex=True)
            process = self._context.Process(target=serve, args=(child, self._initializer, self._initargs),
                                            daemon=True, name="decode-worker")
            process.start()
            child.close()
            worker = _Worker(process, parent)
            self._workers.append(worker)
            self._loop.add_reader(parent.fileno(), self._answered, worker)
            self._loop.add_reader(process.sentinel, self._died, worker)

    def _follow_loop(self) -> None:
        """Calls come from one event loop; after that loop closed, from the next one (tests, CLI runs)."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError("a PipeExecutor is used from one event loop at a time")
        self._loop = loop
        for worker in self._workers:
            if not worker.stopping:
                loop.add_reader(worker.conn.fileno(), self._answered, worker)
                loop.add_reader(worker.process.sentinel, self._died, worker)

    def _dispatch(self) -> None:
        for worker in self._workers:
            if not self._waiting:
                return
            if worker.call is not None or worker.stopping:
                continue
            while self._waiting:
                future, payload = self._waiting.popleft()
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited
                worker.call = future
                try:
                    worker.conn.send_bytes(payload)
                except OSError as exc:  # the worker is gone (its death is noticed here first)
                    self._break(f"a decode worker's pipe closed ({exc})")
                    return
                break

    def _answered(self, worker: _Worker) -> None:
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            self._died(worker)
            return
        future, worker.call = worker.call, None
        if future is not None:
            try:
                ok, value = pickle.loads(data)
            except Exception as exc:  # an answer that does not unpickle: this call's error
                future.set_exception(exc)
            else:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        self._dispatch()
        if self._shut and not self._waiting:
            self._stop_idle()

    def _died(self, worker: _Worker) -> None:
        if worker.stopping:
            return
        code = worker.process.exitcode
        self._break(f"a decode worker (pid {worker.process.pid}) ended abruptly (exit code {code})")

    def _break(self, reason: str) -> None:
        """Like a broken ``ProcessPoolExecutor``: every call fails, every worker is stopped."""
        if self._broken is not None:
            return
        self._broken = reason
        error = BrokenProcessPool(reason)
        for worker in self._workers:
            if worker.call is not None and not worker.call.done():
                worker.call.set_exception(error)
            worker.call = None
            self._kill(worker)
        while self._waiting:
            future, _ = self._waiting.popleft()
            if future.set_running_or_notify_cancel():
                future.set_exception(error)

    def _forget(self, worker: _Worker) -> None:
        worker.stopping = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(worker.conn.fileno())
            self._loop.remove_reader(worker.process.sentinel)

    def _kill(self, worker: _Worker) -> None:
        self._forget(worker)
        with contextlib.suppress(OSError, ValueError):
            worker.process.kill()
        worker.conn.close()

    def _stop(self, worker: _Worker) -> None:
        """Ask an idle worker to exit (it is not a death)."""
        self._forget(worker)
        with contextlib.suppress(OSError):
            worker.conn.send_bytes(_STOP)
        worker.conn.close()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers; calls not started are cancelled (``cancel_futures``) or still run first; a call
        that is running finishes (its worker stops after it).  ``wait``: wait for idle workers to exit."""
        if self._shut:
            return
        self._shut = True
        if cancel_futures:
            while self._waiting:
                self._waiting.popleft()[0].cancel()
        if self._broken is None and not self._waiting:
            self._stop_idle(wait=wait)

    def _stop_idle(self, *, wait: bool = False) -> None:
        for worker in self._workers:
            if worker.call is None and not worker.stopping:
                self._stop(worker)
                if wait:
                    worker.process.join(5)
