"""Stored responses: what ``previous_response_id`` continues from and ``GET /v1/responses/{id}``
reads, kept until they expire.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("key_id", sa.String(64), nullable=False),  # the owner: "" for the master key
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("items", sa.JSON, nullable=False),  # the conversation to continue from
        sa.Column("native", sa.Boolean, nullable=False),  # answered by a target's own Responses API
    )


def downgrade() -> None:
    op.drop_table("responses")
