"""A key's limits per model and its own server-controlled parameters.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("keys") as batch:  # SQLite alters a table by copying it
        batch.add_column(sa.Column("model_limits", sa.JSON))
        batch.add_column(sa.Column("params", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.drop_column("params")
        batch.drop_column("model_limits")
