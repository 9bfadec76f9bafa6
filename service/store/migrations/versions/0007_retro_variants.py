"""Retroactive matching of rotated and mirrored uploads: the PDQ hashes of the seven other dihedral variants of
each scanned file's image as shown (``file_hashes.pdq_variants``, 7 x 32 bytes; NULL for rows written before)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_retro_variants"
down_revision = "0003_file_hashes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # adopting a pre-Alembic database creates the current schema's missing tables first (with the column)
    if "pdq_variants" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("file_hashes")}:
        op.add_column("file_hashes", sa.Column("pdq_variants", sa.LargeBinary()))


def downgrade() -> None:
    with op.batch_alter_table("file_hashes") as batch:
        batch.drop_column("pdq_variants")
