"""Events keep the outcomes a later result replaced (``history``), found by content (``events_sha1``).

An upload that ended as a remote matcher's error takes the verdict a rescan later gets for its content
(:meth:`~service.store.base.OutcomeLedger.supersede_outcomes`); the error stays in ``history``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("history", sa.Text(), nullable=False, server_default="[]"))
    # if_not_exists: adopting a pre-Alembic database creates the current schema's missing indexes first
    op.create_index("events_sha1", "events", ["sha1"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("events_sha1", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("history")
