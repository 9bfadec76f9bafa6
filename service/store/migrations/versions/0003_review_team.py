"""The review queue for a team: reviewers in the store, sign-in audit and shared throttle, case claims,
and the PDQ of allowlisted content (near copies of a dismissed false positive stay quiet)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_review_team"
down_revision = "0002"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # adopting a pre-Alembic database creates the current schema's missing tables first (with the column)
    if "pdq" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("allowlist")}:
        op.add_column("allowlist", sa.Column("pdq", sa.Text()))
    op.create_table(
        "reviewers",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False, server_default="reviewer"),
        sa.Column("disabled_at", sa.Double()),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        if_not_exists=True,
    )
    op.create_table(
        "review_signins",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        if_not_exists=True,
    )
    op.create_index("review_signins_name", "review_signins", ["name", "at"], if_not_exists=True)
    op.create_index("review_signins_address", "review_signins", ["address", "at"], if_not_exists=True)
    op.create_table(
        "review_claims",
        sa.Column("sha1", sa.Text(), primary_key=True),
        sa.Column("reviewer", sa.Text(), nullable=False),
        sa.Column("claimed_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("review_claims")
    op.drop_index("review_signins_address", table_name="review_signins")
    op.drop_index("review_signins_name", table_name="review_signins")
    op.drop_table("review_signins")
    op.drop_table("reviewers")
    with op.batch_alter_table("allowlist") as batch:
        batch.drop_column("pdq")
