"""Usage per day, key, team and model: what budgets are charged from and /admin/usage reads.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),  # "" for the master key
        sa.Column("team_id", sa.String(32), nullable=False),  # "" for none
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("day", "key_id", "team_id", "model"),
    )


def downgrade() -> None:
    op.drop_table("usage")
