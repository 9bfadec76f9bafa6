"""Every table of the store, once, as SQLAlchemy Core ``Table`` objects (both SQLite and PostgreSQL).

Times are Unix seconds (``Double``); JSON documents are stored as text.  The migrations in
:mod:`service.store.migrations` create these tables; ``tests/store/test_migrations.py`` checks that a
migrated database and this module agree.
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    event,
)

metadata = MetaData()

# BIGSERIAL on PostgreSQL; on SQLite only ``INTEGER PRIMARY KEY`` is the rowid (auto-numbered).
RowId = BigInteger().with_variant(Integer(), "sqlite")

checkpoints = Table(
    "checkpoints", metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Double, nullable=False),
)

events = Table(
    "events", metadata,
    Column("event_id", Text, primary_key=True),
    Column("wiki", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("sha1", Text),
    Column("log_action", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("finished_at", Double, nullable=False),
    # Outcomes a later result replaced (error -> a rescan's verdict), oldest first: a JSON list.
    Column("history", Text, nullable=False, server_default="[]"),
    Index("events_finished_at", "finished_at"),
    Index("events_sha1", "sha1"),
)

scans = Table(
    "scans", metadata,
    Column("sha1", Text, primary_key=True),
    Column("outcome", Text, nullable=False),
    Column("bank_version", Text, nullable=False),
    Column("scanned_at", Double, nullable=False),
    Column("pdq", Text),
    Column("pdq_quality", Integer),
    Column("md5", Text),
    Column("matches", Text, nullable=False, server_default="[]"),
)

matches = Table(
    "matches", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False),
    Column("wiki", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("sha1", Text, nullable=False),
    Column("uploader", Text),
    Column("upload_time", Text, nullable=False),
    Column("log_action", Text, nullable=False),
    Column("page_url", Text, nullable=False),
    Column("matcher", Text, nullable=False),
    Column("bank", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("hash_id", Text, nullable=False),
    Column("hash_value", Text, nullable=False),
    Column("distance", Integer),
    Column("source", Text),
    Column("details", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    UniqueConstraint("wiki", "title", "sha1", "matcher", "bank", "hash_id"),
    Index("matches_created_at", "created_at"),
    Index("matches_sha1", "sha1"),
)

outbox = Table(
    "outbox", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("key", Text, nullable=False, unique=True),
    Column("kind", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Double, nullable=False, server_default="0"),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("last_error", Text),
    Column("result", Text),
    Index("outbox_due", "state", "kind", "next_attempt_at"),
)

remote_scans = Table(
    "remote_scans", metadata,
    Column("sha1", Text, nullable=False),
    Column("matcher", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("scanned_at", Double, nullable=False),
    Column("clean_at", Double),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Double),
    Column("upload", Text),
    Column("last_error", Text),
    PrimaryKeyConstraint("sha1", "matcher"),
    Index("remote_scans_retry", "matcher", "state", "next_attempt_at"),
    Index("remote_scans_clean", "matcher", "state", "clean_at"),
)

budgets = Table(
    "budgets", metadata,
    Column("name", Text, nullable=False),
    Column("period", Text, nullable=False),
    Column("used", Integer, nullable=False),
    Column("updated_at", Double, nullable=False),
    PrimaryKeyConstraint("name", "period"),
)

# Append-only: the migrations add triggers that refuse UPDATE and DELETE.
audit_log = Table(
    "audit_log", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("at", Double, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("sha1", Text),
    Column("wiki", Text),
    Column("title", Text),
    Column("note", Text, nullable=False, server_default=""),
    Column("detail", Text, nullable=False, server_default="{}"),
    Index("audit_log_sha1", "sha1", "id"),
)
for _ddl in (
    DDL("CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END").execute_if(dialect="sqlite"),
    DDL("CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END").execute_if(dialect="sqlite"),
    DDL("CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$").execute_if(dialect="postgresql"),
    DDL("CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()").execute_if(dialect="postgresql"),
):
    event.listen(audit_log, "after_create", _ddl)

allowlist = Table(
    "allowlist", metadata,
    Column("bank", Text, nullable=False),
    Column("sha1", Text, nullable=False),
    Column("added_by", Text, nullable=False),
    Column("added_at", Double, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
    # The content's PDQ (hex) when known: near copies (re-encoded, resized) are allowlisted too.
    Column("pdq", Text),
    PrimaryKeyConstraint("sha1", "bank"),
)

review_state = Table(
    "review_state", metadata,
    Column("sha1", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("reviewer", Text, nullable=False),
    Column("decided_at", Double, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
)

review_sessions = Table(
    "review_sessions", metadata,
    Column("token_hash", Text, primary_key=True),
    Column("reviewer", Text, nullable=False),
    Column("csrf", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)

# Reviewers managed with `mediamoderation reviewer ...` (config-file reviewers are the deprecated other source).
reviewers = Table(
    "reviewers", metadata,
    Column("name", Text, primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("role", Text, nullable=False, server_default="reviewer"),
    Column("disabled_at", Double),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

# Every sign-in attempt (audit, visible to admins) and the shared sign-in throttle's state: the throttle counts
# recent failures here, so all replicas see the same counts.
review_signins = Table(
    "review_signins", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("at", Double, nullable=False),
    Column("name", Text, nullable=False),
    Column("address", Text, nullable=False),
    Column("result", Text, nullable=False),
    Index("review_signins_name", "name", "at"),
    Index("review_signins_address", "address", "at"),
)

# Who is working on a case, until when.
review_claims = Table(
    "review_claims", metadata,
    Column("sha1", Text, primary_key=True),
    Column("reviewer", Text, nullable=False),
    Column("claimed_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)

# Hash banks filled by syncs (`url` and `exchange` banks): where each one's sync resumes, and its content.
bank_sync = Table(
    "bank_sync", metadata,
    Column("bank", Text, primary_key=True),
    Column("checkpoint", Text, nullable=True),  # JSON: the exchange's checkpoint, or a URL's ETag/Last-Modified
    Column("last_success", Double, nullable=True),
    Column("last_attempt", Double, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("errors", Integer, nullable=False, server_default="0"),  # consecutive failed syncs
)

bank_hashes = Table(
    "bank_hashes", metadata,
    Column("bank", Text, nullable=False),
    Column("record", Text, nullable=False),  # the upstream record's key: an update to it replaces its rows
    Column("kind", Text, nullable=False),  # sha1, md5, pdq
    Column("hash", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("source", Text, nullable=False, server_default=""),
    Column("entry_id", Text, nullable=False, server_default=""),
    PrimaryKeyConstraint("bank", "record", "kind", "hash"),
)


# --------------------------------------------------------------------------- Trust & Safety workflow (issue 13)

# Grouped notifications: the item that was emailed at once for a group (a known hash, an uploader) and the
# digest the group's further items go into until ``first_at`` + the window.
notify_groups = Table(
    "notify_groups", metadata,
    Column("group_key", Text, primary_key=True),
    Column("lead_key", Text, nullable=False),
    Column("first_at", Double, nullable=False),
    Column("digest_key", Text, nullable=False),
)

# One row per notification folded into a digest (``item_key`` unique: folding twice adds nothing).
digest_entries = Table(
    "digest_entries", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("digest_key", Text, nullable=False),
    Column("item_key", Text, nullable=False, unique=True),
    Column("payload", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Index("digest_entries_digest", "digest_key", "id"),
)

# Uploads that could not be scanned: review cases of their own kind (no preview).
unscannable_cases = Table(
    "unscannable_cases", metadata,
    Column("event_id", Text, primary_key=True),
    Column("wiki", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("sha1", Text),
    Column("uploader", Text),
    Column("upload_time", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("state", Text, nullable=False, server_default="open"),
    Column("decided_by", Text),
    Column("decided_at", Double),
    Index("unscannable_cases_state", "state", "created_at"),
)

# What the wiki keeps of a removed file (its deleted-file archive rows) and until when it must be kept.
preservation = Table(
    "preservation", metadata,
    Column("wiki", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("sha1", Text, nullable=False),
    Column("filearchive_ids", Text, nullable=False, server_default="[]"),
    Column("suppressed", Integer, nullable=False, server_default="0"),
    Column("removed_at", Double, nullable=False),
    Column("preserve_until", Double, nullable=False),
    PrimaryKeyConstraint("wiki", "title", "sha1"),
    Index("preservation_sha1", "sha1"),
)

# The hashes of every scanned file (never its media), to match it again when a bank gains hashes
# (retroactive matching), with what acting on it later needs.  One row per upload version.
file_hashes = Table(
    "file_hashes", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("wiki", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("sha1", Text, nullable=False),
    Column("md5", Text),
    Column("pdq", Text),
    Column("pdq_quality", Integer),
    Column("pdq_variants", LargeBinary),  # the 7 rotated / mirrored variants' PDQ hashes, 32 bytes each
    Column("event_id", Text, nullable=False),
    Column("server_url", Text, nullable=False),
    Column("page_url", Text, nullable=False),
    Column("uploader", Text),
    Column("upload_time", Text, nullable=False),
    Column("log_action", Text, nullable=False),
    Column("scanned_at", Double, nullable=False),
    UniqueConstraint("wiki", "title", "sha1"),
    Index("file_hashes_sha1", "sha1"),
    Index("file_hashes_md5", "md5"),
)

# Bank deltas being matched against the stored file hashes, with their progress (a restart resumes them).
retro_deltas = Table(
    "retro_deltas", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("bank", Text, nullable=False),
    Column("added_at", Double, nullable=False),
    Column("entries", Text, nullable=False),  # JSON list of [hash, category, source, id]
    Column("size", Integer, nullable=False),  # number of entries
    Column("state", Text, nullable=False),
    Column("progress", Integer, nullable=False, server_default="0"),
    Column("hits", Text, nullable=False, server_default="[]"),  # JSON list of [file id, entry index, distance]
    Column("note", Text, nullable=False, server_default=""),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Index("retro_deltas_state", "state", "id"),
)
