"""Retroactive matching: the hashes of every scanned file (``file_hashes``) and the bank deltas matched
against them, with their progress (``retro_deltas``)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_file_hashes"
down_revision = "0003_ts_workflow"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "file_hashes",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("wiki", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("sha1", sa.Text(), nullable=False),
        sa.Column("md5", sa.Text()),
        sa.Column("pdq", sa.Text()),
        sa.Column("pdq_quality", sa.Integer()),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("server_url", sa.Text(), nullable=False),
        sa.Column("page_url", sa.Text(), nullable=False),
        sa.Column("uploader", sa.Text()),
        sa.Column("upload_time", sa.Text(), nullable=False),
        sa.Column("log_action", sa.Text(), nullable=False),
        sa.Column("scanned_at", sa.Double(), nullable=False),
        sa.UniqueConstraint("wiki", "title", "sha1"),
        if_not_exists=True,
    )
    op.create_index("file_hashes_sha1", "file_hashes", ["sha1"], if_not_exists=True)
    op.create_index("file_hashes_md5", "file_hashes", ["md5"], if_not_exists=True)
    op.create_table(
        "retro_deltas",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("bank", sa.Text(), nullable=False),
        sa.Column("added_at", sa.Double(), nullable=False),
        sa.Column("entries", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("hits", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("note", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        if_not_exists=True,
    )
    op.create_index("retro_deltas_state", "retro_deltas", ["state", "id"], if_not_exists=True)


def downgrade() -> None:
    op.drop_table("retro_deltas")
    op.drop_table("file_hashes")
