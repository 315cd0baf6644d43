"""The tables (SQLAlchemy Core). Secrets are never stored: a key is kept as its SHA-256 digest."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
)

metadata = MetaData()

teams = Table(
    "teams",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("models", JSON, nullable=False),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("max_parallel", Integer),
    Column("budget_usd", Float),
    Column("budget_period", String(16)),
    Column("metadata", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

keys = Table(
    "keys",
    metadata,
    Column("id", String(32), primary_key=True),  # the public part of the key: names it in logs
    Column("name", String(200), nullable=False),
    Column("team_id", String(32), ForeignKey("teams.id", ondelete="SET NULL")),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("models", JSON, nullable=False),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("max_parallel", Integer),
    Column("budget_usd", Float),
    Column("budget_period", String(16)),
    Column("model_limits", JSON),  # {pattern: {rpm, tpm, max_parallel}}
    Column("params", JSON),  # the key's server-controlled parameters
    Column("expires_at", DateTime(timezone=True)),
    Column("enabled", Boolean, nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("metadata", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One row: bumped by every write to keys or teams, so every worker and replica sees a change by
# reading one integer.
changes = Table(
    "changes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

# Counters per day, key, team and model (the alias asked for), added to in batches.
usage = Table(
    "usage",
    metadata,
    Column("day", Date, nullable=False),
    Column("key_id", String(64), nullable=False),  # "" for the master key
    Column("team_id", String(32), nullable=False),  # "" for none
    Column("model", String(256), nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cost_usd", Float, nullable=False),
    PrimaryKeyConstraint("day", "key_id", "team_id", "model"),
)

# Responses kept for ``previous_response_id`` and ``GET /v1/responses/{id}``, until they expire.
responses = Table(
    "responses",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("key_id", String(64), nullable=False),  # the owner: "" for the master key
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    Column("response", JSON, nullable=False),
    Column("items", JSON, nullable=False),  # the conversation to continue from
    Column("native", Boolean, nullable=False),  # answered by a target's own Responses API
)
