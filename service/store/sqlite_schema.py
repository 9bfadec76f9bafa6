"""The SQLite store's schema: one migration per version, applied in order (``PRAGMA user_version``)."""

from __future__ import annotations

import sqlite3

from service.store.sqlite_common import StoreError

MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE checkpoints (
        name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL
    );
    CREATE TABLE events (
        event_id TEXT PRIMARY KEY, wiki TEXT NOT NULL, title TEXT NOT NULL, sha1 TEXT,
        log_action TEXT NOT NULL, outcome TEXT NOT NULL, finished_at REAL NOT NULL
    );
    CREATE INDEX events_finished_at ON events (finished_at);
    CREATE TABLE scans (
        sha1 TEXT PRIMARY KEY, outcome TEXT NOT NULL, bank_version TEXT NOT NULL, scanned_at REAL NOT NULL,
        pdq TEXT, pdq_quality INTEGER, md5 TEXT, matches TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE matches (
        id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, wiki TEXT NOT NULL, title TEXT NOT NULL,
        sha1 TEXT NOT NULL, uploader TEXT, upload_time TEXT NOT NULL, log_action TEXT NOT NULL,
        page_url TEXT NOT NULL, matcher TEXT NOT NULL, bank TEXT NOT NULL, category TEXT NOT NULL,
        hash_id TEXT NOT NULL, hash_value TEXT NOT NULL, distance INTEGER, source TEXT,
        details TEXT NOT NULL, created_at REAL NOT NULL,
        UNIQUE (wiki, title, sha1, matcher, bank, hash_id)
    );
    CREATE INDEX matches_created_at ON matches (created_at);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        last_error TEXT, result TEXT
    );
    CREATE INDEX outbox_due ON outbox (state, kind, next_attempt_at);
    """,
    # 2: remote matchers' per-content states (rescan, retry schedule) and request budgets
    """
    CREATE TABLE remote_scans (
        sha1 TEXT NOT NULL, matcher TEXT NOT NULL, state TEXT NOT NULL, scanned_at REAL NOT NULL,
        clean_at REAL, failures INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL, upload TEXT,
        last_error TEXT,
        PRIMARY KEY (sha1, matcher)
    );
    CREATE INDEX remote_scans_retry ON remote_scans (matcher, state, next_attempt_at);
    CREATE INDEX remote_scans_clean ON remote_scans (matcher, state, clean_at);
    CREATE TABLE budgets (
        name TEXT NOT NULL, period TEXT NOT NULL, used INTEGER NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (name, period)
    );
    """,
    # 3: review queue: append-only audit log, per-bank allowlist, review decisions, reviewer sessions
    """
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        sha1 TEXT, wiki TEXT, title TEXT, note TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_log_sha1 ON audit_log (sha1, id);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TABLE allowlist (
        bank TEXT NOT NULL, sha1 TEXT NOT NULL, added_by TEXT NOT NULL, added_at REAL NOT NULL,
        note TEXT NOT NULL DEFAULT '', PRIMARY KEY (sha1, bank)
    );
    CREATE TABLE review_state (
        sha1 TEXT PRIMARY KEY, state TEXT NOT NULL, reviewer TEXT NOT NULL, decided_at REAL NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE review_sessions (
        token_hash TEXT PRIMARY KEY, reviewer TEXT NOT NULL, csrf TEXT NOT NULL, created_at REAL NOT NULL,
        last_seen REAL NOT NULL, expires_at REAL NOT NULL
    );
    CREATE INDEX matches_sha1 ON matches (sha1);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; refuse a database written by a newer version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise StoreError(f"database schema version {current} is newer than this program's ({SCHEMA_VERSION})")
    for version in range(current, SCHEMA_VERSION):
        with conn:
            conn.executescript(MIGRATIONS[version])
            conn.execute(f"PRAGMA user_version = {version + 1}")
    return SCHEMA_VERSION
