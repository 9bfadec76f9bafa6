"""Schema migrations with Alembic, run at open under a lock so replicas starting together migrate once.

* A new database is created from :mod:`.schema` and stamped with the newest revision (Alembic's
  recipe for building a database from scratch).
* A database made by the previous release (SQLite ``PRAGMA user_version`` 1-3, PostgreSQL
  ``schema_version`` 1-2, no ``alembic_version``) is that release's schema: the baseline revision.
  Tables and indexes it lacks are added, it is stamped with the baseline, then upgraded in place.
* Otherwise the revisions after the stored one run in order.  A revision this program does not
  know (a newer release wrote it) is refused.

The lock: PostgreSQL ``pg_advisory_xact_lock``; SQLite ``BEGIN IMMEDIATE``.  Everything happens in that
one transaction.  The legacy version marker is set past the previous release's numbers, so that
release refuses a database migrated here instead of writing its old schema into it.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from service.store.base import StoreError
from service.store.schema import metadata

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"  # the schema of the last release before Alembic
_LOCK = 0x6D6D5F73636865  # pg_advisory_xact_lock key (the previous release used the same one)
_LEGACY_SQLITE = 3  # the previous release's PRAGMA user_version ...
_LEGACY_POSTGRES = 2  # ... and schema_version
_FENCE = 100  # written to the legacy marker: the previous release sees a newer schema and stops


def script_directory() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg)


def migrate(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
        else:
            driver = conn.connection.driver_connection
            assert driver is not None
            driver.execute("BEGIN IMMEDIATE")
        _migrate(conn)


def _migrate(conn: Connection) -> None:
    script = script_directory()
    ctx = MigrationContext.configure(conn)
    current = ctx.get_current_heads()
    unknown = [rev for rev in current if _lookup(script, rev) is None]
    if unknown:
        raise StoreError(f"database schema revision {', '.join(unknown)} is newer than this program's "
                         f"({script.get_current_head()})")
    if not current:
        legacy = _legacy_version(conn)
        if legacy is None:  # a new database
            metadata.create_all(conn)
            _fence(conn)
            ctx.stamp(script, "head")
            return
        _adopt_legacy(conn)
        ctx.stamp(script, BASELINE)
    _upgrade(conn, script)


def _lookup(script: ScriptDirectory, rev: str) -> Script | None:
    try:
        return script.get_revision(rev)
    except CommandError:  # an id no revision here has
        return None


def _legacy_version(conn: Connection) -> int | None:
    """The previous release's schema version, or None for a database without any of our tables."""
    tables = set(sa.inspect(conn).get_table_names())
    if not tables & set(metadata.tables):
        return None
    if conn.dialect.name == "sqlite":
        version, newest = int(conn.exec_driver_sql("PRAGMA user_version").scalar_one()), _LEGACY_SQLITE
    else:
        row = (conn.exec_driver_sql("SELECT version FROM schema_version").scalar()
               if "schema_version" in tables else None)
        version, newest = int(row or 0), _LEGACY_POSTGRES
    if version > newest:
        raise StoreError(f"database schema version {version} is newer than this program's ({newest})")
    return version


def _adopt_legacy(conn: Connection) -> None:
    """Add what an older release's schema lacks (tables, indexes) so that it is the baseline schema."""
    metadata.create_all(conn, checkfirst=True)
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)
    _fence(conn)


def _fence(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA user_version = {_FENCE}")
    else:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        conn.exec_driver_sql("DELETE FROM schema_version")
        conn.exec_driver_sql(f"INSERT INTO schema_version (version) VALUES ({_FENCE})")


def _upgrade(conn: Connection, script: ScriptDirectory) -> None:
    """``alembic upgrade head`` on this connection, inside the caller's transaction."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with EnvironmentContext(cfg, script, fn=lambda rev, _ctx: script._upgrade_revs("head", rev),
                            destination_rev="head") as env:
        env.configure(connection=conn, target_metadata=metadata)
        with env.begin_transaction():
            env.run_migrations()
