"""Baseline: the schema as the last release before Alembic made it (SQLite user_version 3, PostgreSQL 2).

Nothing to do: databases made by that release already have it (missing tables of older ones are
added before stamping), and new databases are created from :mod:`service.store.schema`.
"""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    raise NotImplementedError("the baseline cannot be downgraded")
