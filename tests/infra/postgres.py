"""A throw-away PostgreSQL database for tests, on the server at 127.0.0.1:5432 (trust auth).

``scripts/test.sh`` installs and starts the server; each ``TestDatabase`` creates its own database
(``mm_test_<random>``) and drops it afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from types import TracebackType

SERVER = os.environ.get("MM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server answers at SERVER."""


class TestDatabase:
    __test__ = False  # not a test class

    def __init__(self, server: str = SERVER) -> None:
        self.server = server.rstrip("/")
        self.name = f"mm_test_{uuid.uuid4().hex[:12]}"

    @property
    def url(self) -> str:
        return f"{self.server}/{self.name}"

    def _admin(self) -> object:
        import psycopg

        try:
            return psycopg.connect(f"{self.server}/postgres", autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise PostgresUnavailable(
                f"no PostgreSQL server at {self.server} ({exc}); `bash scripts/test.sh` installs and starts it"
            ) from exc

    def create(self) -> None:
        with self._admin() as conn:  # type: ignore[attr-defined]
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with self._admin() as conn:  # type: ignore[attr-defined]
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def __enter__(self) -> TestDatabase:
        self.create()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.drop()
