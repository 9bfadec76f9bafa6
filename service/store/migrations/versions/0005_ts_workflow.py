"""Trust & Safety workflow (issue 13): grouped notifications, unscannable cases, preservation of removed files.

``notify_groups`` and ``digest_entries`` make grouped emails exactly-once across restarts;
``unscannable_cases`` are review cases of their own kind; ``preservation`` records the wiki's
deleted-file archive rows of a removed file and until when they must be kept.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_ts_workflow"
down_revision = "0003_bank_sync"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "notify_groups",
        sa.Column("group_key", sa.Text(), primary_key=True),
        sa.Column("lead_key", sa.Text(), nullable=False),
        sa.Column("first_at", sa.Double(), nullable=False),
        sa.Column("digest_key", sa.Text(), nullable=False),
        if_not_exists=True,
    )
    op.create_table(
        "digest_entries",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("digest_key", sa.Text(), nullable=False),
        sa.Column("item_key", sa.Text(), nullable=False, unique=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        if_not_exists=True,
    )
    op.create_index("digest_entries_digest", "digest_entries", ["digest_key", "id"], if_not_exists=True)
    op.create_table(
        "unscannable_cases",
        sa.Column("event_id", sa.Text(), primary_key=True),
        sa.Column("wiki", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("sha1", sa.Text()),
        sa.Column("uploader", sa.Text()),
        sa.Column("upload_time", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False, server_default="open"),
        sa.Column("decided_by", sa.Text()),
        sa.Column("decided_at", sa.Double()),
        if_not_exists=True,
    )
    op.create_index("unscannable_cases_state", "unscannable_cases", ["state", "created_at"], if_not_exists=True)
    op.create_table(
        "preservation",
        sa.Column("wiki", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("sha1", sa.Text(), nullable=False),
        sa.Column("filearchive_ids", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("suppressed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("removed_at", sa.Double(), nullable=False),
        sa.Column("preserve_until", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("wiki", "title", "sha1"),
        if_not_exists=True,
    )
    op.create_index("preservation_sha1", "preservation", ["sha1"], if_not_exists=True)


def downgrade() -> None:
    for table in ("preservation", "unscannable_cases", "digest_entries", "notify_groups"):
        op.drop_table(table)
