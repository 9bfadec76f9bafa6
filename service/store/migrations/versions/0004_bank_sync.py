"""Banks filled by syncs: ``bank_sync`` (checkpoint and status per bank) and ``bank_hashes`` (their content).

A restart loads each bank from ``bank_hashes`` and continues its exchange's delta from ``bank_sync``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_bank_sync"
down_revision = "0003_review_team"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bank_sync",
        sa.Column("bank", sa.Text(), primary_key=True),
        sa.Column("checkpoint", sa.Text(), nullable=True),
        sa.Column("last_success", sa.Double(), nullable=True),
        sa.Column("last_attempt", sa.Double(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("errors", sa.Integer(), nullable=False, server_default="0"),
        if_not_exists=True,
    )
    op.create_table(
        "bank_hashes",
        sa.Column("bank", sa.Text(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False, server_default=""),
        sa.Column("entry_id", sa.Text(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("bank", "record", "kind", "hash"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("bank_hashes")
    op.drop_table("bank_sync")
