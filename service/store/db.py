"""The one database layer under every store concern: engine, connections, transactions, dialect details.

SQLAlchemy Core over ``sqlite3`` or ``psycopg`` 3 (sync drivers).  Store methods are coroutines; their
SQL runs in worker threads so the event loop never waits on disk or network:

* SQLite: one thread and one connection (SQLite never sees two threads); WAL journal; a write
  transaction starts with ``BEGIN IMMEDIATE`` (one writer at a time, across processes too).
* PostgreSQL: ``pool_size`` threads and as many pooled connections; every call is one transaction.

The SQL differences between the two engines live here and nowhere else: upserts
(:func:`Database.insert`), string aggregation (:meth:`Database.string_agg`), row locking with
``SKIP LOCKED`` (SQLAlchemy renders nothing on SQLite, where the write lock covers it), and the
lock held while migrating (:mod:`.migrate`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import QueuePool, StaticPool
from sqlalchemy.sql.compiler import SQLCompiler

from service.store.base import StoreError
from service.store.grouped import Grouper, Outcome
from service.store.migrate import migrate

T = TypeVar("T")
S = TypeVar("S")
_DRIVER_ERRORS = (SQLAlchemyError, sqlite3.Error, psycopg.Error)
# A grouped write waits this long for others to share its transaction (the pipeline's outcome writes,
# which no stage worker waits for: at 400 uploads/s about four per transaction instead of one or two).
WRITE_LINGER = 0.01


@dataclass(frozen=True, slots=True)
class Compiled:
    """A statement compiled once for one database, run on the driver's cursor (see :meth:`Database.compiled`)."""

    sql: str
    order: tuple[str, ...] | None  # the parameters' order for a positional driver (sqlite3); None: by name
    defaults: dict[str, Any]  # values bound in the statement itself (literals)

    def run(self, conn: Connection, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Execute inside ``conn``'s transaction; the rows as dicts (none for a statement without rows)."""
        merged = {**self.defaults, **values}
        params: Sequence[Any] | Mapping[str, Any] = merged if self.order is None else [merged[k] for k in self.order]
        driver = conn.connection.driver_connection
        assert driver is not None
        cursor = driver.cursor()
        try:
            cursor.execute(self.sql, params)
            if cursor.description is None:
                return []
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            cursor.close()


class Database:
    """An engine plus the threads its calls run in.  ``open()`` connects and migrates; ``close()`` ends both."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite")
        self.pool_size = 1 if self.sqlite else pool_size
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._prepared: dict[Callable[[Database], Any], Any] = {}
        self._held: Connection | None = None  # SQLite: the one connection, kept open in the store thread
        # Hot small calls (the pipeline's admit and finish) grouped: as many groups at a time as threads.
        self._groupers = {False: Grouper(partial(self._run_group, write=False), limit=self.pool_size),
                          True: Grouper(partial(self._run_group, write=True), limit=self.pool_size,
                                        linger=WRITE_LINGER)}

    @classmethod
    def for_sqlite(cls, path: str) -> Database:
        return cls(f"sqlite:///{path}")

    @classmethod
    def for_postgres(cls, url: str, *, pool_size: int = 8) -> Database:
        """``url`` as configured (``postgresql://user@host/db``); psycopg 3 is the driver."""
        rest = url.partition("://")[2]
        return cls(f"postgresql+psycopg://{rest}", pool_size=pool_size)

    @property
    def where(self) -> str:
        """The database's location without credentials, for messages."""
        if self.sqlite:
            return self.url.partition(":///")[2]
        return self.url.split("@")[-1].split("://")[-1]

    @property
    def name(self) -> str:
        return "SQLite" if self.sqlite else "PostgreSQL"

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        if self._engine is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=self.pool_size, thread_name_prefix="store")
        try:
            self._engine = await self._in_thread(self._connect)
            if self.sqlite:
                self._held = await self._in_thread(self._engine.connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> Engine:
        engine = self._make_engine()
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(f"cannot connect to {self.name} at {self.where}: {_cause(exc)}") from exc
        try:
            migrate(engine)
        except _DRIVER_ERRORS as exc:
            engine.dispose()
            raise StoreError(f"cannot migrate the {self.name} store at {self.where}: {_cause(exc)}") from exc
        except BaseException:
            engine.dispose()
            raise
        return engine

    def _make_engine(self) -> Engine:
        if not self.sqlite:
            return sa.create_engine(self.url, poolclass=QueuePool, pool_size=self.pool_size, max_overflow=0,
                                    pool_timeout=30, connect_args={"connect_timeout": 10})
        path = self.where
        if path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open SQLite store {path}: {exc}") from exc
        # One connection, always used from the one store thread; every use ends in COMMIT or ROLLBACK,
        # so returning it to the pool needs no extra rollback.
        engine = sa.create_engine(self.url, poolclass=StaticPool, pool_reset_on_return=None,
                                  connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun by ``_run``, explicitly
            cur = dbapi_conn.cursor()
            try:
                _use_wal(cur)
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
            finally:
                cur.close()

        return engine

    async def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await self._in_thread(held.close)
        engine, self._engine = self._engine, None
        if engine is not None:
            await self._in_thread(engine.dispose)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def ping(self) -> None:
        await self.read(lambda c: c.exec_driver_sql("SELECT 1").scalar())

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise StoreError("store is not open")
        return self._engine

    # ------------------------------------------------------------------ running statements

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one read transaction."""
        return await self._run(fn, write=False)

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction: all of it is committed, or none of it."""
        return await self._run(fn, write=True)

    async def read_grouped(self, fn: Callable[[Connection], T]) -> T:
        """:meth:`read`, sharing a thread hop and a transaction with the calls that arrive together
        (:mod:`.grouped`); ``fn`` must be safe to run again after a rollback."""
        return await self._groupers[False].run(fn)  # type: ignore[no-any-return]

    async def write_grouped(self, fn: Callable[[Connection], T]) -> T:
        """:meth:`write`, committed with the calls that arrive together (group commit, :mod:`.grouped`);
        ``fn`` must be safe to run again after a rollback. Its effects are committed when this returns."""
        return await self._groupers[True].run(fn)  # type: ignore[no-any-return]

    async def _run(self, fn: Callable[[Connection], T], *, write: bool) -> T:
        return await self._in_thread(lambda: self._call(fn, write))

    def _call(self, fn: Callable[[Connection], T], write: bool) -> T:
        """In the store thread: ``fn`` in its own transaction."""
        try:
            with self._transaction(write) as conn:
                return fn(conn)
        except _DRIVER_ERRORS as exc:  # the driver's own: from BEGIN and compiled statements
            raise StoreError(f"{self.name} error: {_cause(exc)}") from exc

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        """In the store thread: one transaction, committed at the end, rolled back on an exception."""
        held = self._held
        if held is not None:  # SQLite: BEGIN on the driver (an engine event would slow every statement)
            with held.begin():
                driver = held.connection.driver_connection
                assert driver is not None
                driver.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield held
            return
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _run_group(self, fns: list[Callable[[Connection], Any]], *, write: bool) -> asyncio.Future[list[Outcome]]:
        if self._executor is None:
            raise StoreError("store is not open")
        return asyncio.get_running_loop().run_in_executor(self._executor, self._call_group, fns, write)

    def _call_group(self, fns: list[Callable[[Connection], Any]], write: bool) -> list[Outcome]:
        """In the store thread: every call in one transaction; if one raises, each again in its own."""
        if len(fns) > 1:
            failed = False
            try:
                with self._transaction(write) as conn:
                    results = []
                    for fn in fns:
                        try:
                            results.append(fn(conn))
                        except Exception:
                            failed = True
                            raise
                return [(True, r) for r in results]
            except Exception as exc:
                if not failed:  # beginning or committing failed: the same answer for every call
                    err = StoreError(f"{self.name} error: {_cause(exc)}") if isinstance(exc, _DRIVER_ERRORS) else exc
                    return [(False, err)] * len(fns)
        outcomes: list[Outcome] = []
        for fn in fns:
            try:
                outcomes.append((True, self._call(fn, write)))
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def prepared(self, build: Callable[[Database], S]) -> S:
        """``build(self)``, built once per database: a statement with bound parameters, reused by every call.

        SQLAlchemy then finds the compiled SQL in its cache without rebuilding the statement or its
        cache key; on the pipeline's hot path that is most of the cost of a query.
        """
        stmt = self._prepared.get(build)
        if stmt is None:
            stmt = self._prepared[build] = build(self)
        return stmt  # type: ignore[no-any-return]

    def compiled(self, build: Callable[[Database], sa.ClauseElement]) -> Compiled:
        """``build(self)`` compiled once to this database's SQL, to run on the driver's cursor.

        For the pipeline's two calls per upload (admit, finish): SQLAlchemy's execution and result
        layers cost more than the query itself on SQLite.  The statement is still written once, in
        SQLAlchemy Core, and compiled by it for each engine.
        """
        done = self._prepared.get(build)
        if done is None:
            c = build(self).compile(dialect=self.engine.dialect)
            assert isinstance(c, SQLCompiler)
            order = tuple(c.positiontup) if c.positional and c.positiontup is not None else None
            done = self._prepared[build] = Compiled(str(c), order, dict(c.params))
        assert isinstance(done, Compiled)
        return done

    # ------------------------------------------------------------------ dialect differences

    def insert(self, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
        """``INSERT`` with ``on_conflict_do_nothing`` / ``on_conflict_do_update`` for this engine."""
        return sqlite.insert(table) if self.sqlite else postgresql.insert(table)

    def string_agg(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
        """The distinct values of ``column`` joined with commas."""
        if self.sqlite:
            return sa.func.group_concat(sa.distinct(column))
        return sa.func.string_agg(sa.distinct(column), sa.literal_column("','"))


def _cause(exc: SQLAlchemyError | sqlite3.Error | psycopg.Error) -> str:
    """The driver's message (SQLAlchemy's wrapper adds the statement and a link)."""
    return str(exc.orig if isinstance(exc, DBAPIError) else exc).strip()


def _use_wal(cur: sqlite3.Cursor, timeout: float = 30.0) -> None:
    """Put the database in WAL mode.  Switching needs a moment alone with the file, and SQLite's busy timeout
    does not cover it: a replica opening while another migrates would fail at once with "database is
    locked".  So: nothing to do when WAL is already on (a read), else retry the switch until ``timeout``."""
    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
