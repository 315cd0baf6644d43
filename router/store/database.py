"""The database: the engine for ``database.url``, migrations at startup, and the key and team
repository. Every statement is built by SQLAlchemy with bound parameters; no SQL from strings.

Every write to keys or teams bumps one counter in the same transaction, so a worker that reads
the counter every half second knows when to reload (``router.access.guard``)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import msgspec
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, RowMapping, event, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from router.config_schema import ModelLimits, ParamsPolicy
from router.store.records import KeyRecord, TeamRecord
from router.store.tables import changes, keys, responses, teams, usage

MIGRATIONS = Path(__file__).parent / "migrations"
LIMIT_FIELDS = ("models", "rpm", "tpm", "max_parallel", "budget_usd", "budget_period", "metadata")
KEY_FIELDS = frozenset({"name", "team_id", "expires_at", "enabled", "model_limits", "params", *LIMIT_FIELDS})
TEAM_FIELDS = frozenset({"name", *LIMIT_FIELDS})


UsageKey = tuple[date, str, str, str]  # day, key id, team id, model


class Conflict(Exception):
    """A unique name taken, or a team that does not exist."""


def now() -> datetime:
    return datetime.now(UTC)


class Database:
    def __init__(self, url: URL) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        if url.drivername.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    async def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration (Alembic)."""
        if self.url.drivername.startswith("sqlite") and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)

    async def close(self) -> None:
        await self.engine.dispose()

    async def version(self) -> int:
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(changes.c.version).where(changes.c.id == 1))
        return int(value or 0)

    async def load(self) -> tuple[int, list[KeyRecord], list[TeamRecord]]:
        """Everything the guard holds, read in one transaction with the version it matches."""
        async with self.engine.connect() as conn:
            version = await conn.scalar(select(changes.c.version).where(changes.c.id == 1))
            key_rows = (await conn.execute(select(keys))).mappings().all()
            team_rows = (await conn.execute(select(teams))).mappings().all()
        return int(version or 0), [_key(r) for r in key_rows], [_team(r) for r in team_rows]

    # responses (the Responses API's store)

    async def put_responses(self, rows: Sequence[StoredResponse]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(responses), [msgspec.structs.asdict(r) for r in rows])

    async def get_response(self, response_id: str) -> StoredResponse | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(responses).where(responses.c.id == response_id))).mappings().one_or_none()
        if row is None:
            return None
        return StoredResponse(
            id=row["id"],
            key_id=row["key_id"],
            created_at=_aware(row["created_at"]) or now(),
            expires_at=_aware(row["expires_at"]) or now(),
            response=dict(row["response"]),
            items=list(row["items"]),
            native=bool(row["native"]),
        )

    async def delete_response(self, response_id: str) -> bool:
        async with self.engine.begin() as conn:
            done = await conn.execute(responses.delete().where(responses.c.id == response_id))
        return bool(done.rowcount)

    async def purge_responses(self, before: datetime) -> int:
        async with self.engine.begin() as conn:
            done = await conn.execute(responses.delete().where(responses.c.expires_at < before))
        return int(done.rowcount or 0)

    # keys

    async def create_key(self, key_id: str, key_hash: str, fields: Mapping[str, Any]) -> KeyRecord:
        stamp = now()
        row = {
            "id": key_id,
            "key_hash": key_hash,
            "models": [],
            "enabled": True,
            "metadata": {},
            **{k: v for k, v in fields.items() if k in KEY_FIELDS},
            "created_at": stamp,
            "updated_at": stamp,
        }
        try:
            async with self.engine.begin() as conn:
                await self._check_team(conn, row.get("team_id"))
                await conn.execute(insert(keys).values(**row))
                await _bump(conn)
                return _key((await conn.execute(select(keys).where(keys.c.id == key_id))).mappings().one())
        except IntegrityError:  # the team went away meanwhile
            raise Conflict(f"no team with id '{row.get('team_id')}'") from None

    async def keys(self) -> list[KeyRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(keys).order_by(keys.c.created_at))).mappings().all()
        return [_key(r) for r in rows]

    async def key(self, key_id: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(keys).where(keys.c.id == key_id))).mappings().one_or_none()
        return _key(row) if row is not None else None

    async def update_key(self, key_id: str, fields: Mapping[str, Any]) -> KeyRecord | None:
        values = {k: v for k, v in fields.items() if k in KEY_FIELDS or k in ("key_hash", "revoked_at")}
        try:
            async with self.engine.begin() as conn:
                await self._check_team(conn, values.get("team_id"))
                done = await conn.execute(update(keys).where(keys.c.id == key_id).values(**values, updated_at=now()))
                if done.rowcount == 0:
                    return None
                await _bump(conn)
                return _key((await conn.execute(select(keys).where(keys.c.id == key_id))).mappings().one())
        except IntegrityError:
            raise Conflict(f"no team with id '{values.get('team_id')}'") from None

    # teams

    async def create_team(self, fields: Mapping[str, Any]) -> TeamRecord:
        stamp = now()
        team_id = "team_" + secrets.token_hex(6)
        row = {"id": team_id, "models": [], "metadata": {}, **{k: v for k, v in fields.items() if k in TEAM_FIELDS}}
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(teams).values(**row, created_at=stamp, updated_at=stamp))
                await _bump(conn)
                return _team((await conn.execute(select(teams).where(teams.c.id == team_id))).mappings().one())
        except IntegrityError:
            raise Conflict(f"a team named '{fields.get('name')}' exists already") from None

    async def teams(self) -> list[TeamRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(teams).order_by(teams.c.created_at))).mappings().all()
        return [_team(r) for r in rows]

    async def team(self, team_id: str) -> TeamRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(teams).where(teams.c.id == team_id))).mappings().one_or_none()
        return _team(row) if row is not None else None

    async def update_team(self, team_id: str, fields: Mapping[str, Any]) -> TeamRecord | None:
        values = {k: v for k, v in fields.items() if k in TEAM_FIELDS}
        try:
            async with self.engine.begin() as conn:
                done = await conn.execute(update(teams).where(teams.c.id == team_id).values(**values, updated_at=now()))
                if done.rowcount == 0:
                    return None
                await _bump(conn)
                return _team((await conn.execute(select(teams).where(teams.c.id == team_id))).mappings().one())
        except IntegrityError:
            raise Conflict(f"a team named '{fields.get('name')}' exists already") from None

    async def delete_team(self, team_id: str) -> bool:
        async with self.engine.begin() as conn:
            await conn.execute(update(keys).where(keys.c.team_id == team_id).values(team_id=None, updated_at=now()))
            done = await conn.execute(teams.delete().where(teams.c.id == team_id))
            await _bump(conn)
            return bool(done.rowcount)

    # usage

    async def add_usage(self, rows: Mapping[UsageKey, Sequence[float]]) -> None:
        """Add counters to their day's rows, in one transaction (an upsert per row)."""
        if not rows:
            return
        values = [
            {
                "day": day,
                "key_id": key_id,
                "team_id": team_id,
                "model": model,
                "requests": int(counts[0]),
                "prompt_tokens": int(counts[1]),
                "completion_tokens": int(counts[2]),
                "cost_usd": counts[3],
            }
            for (day, key_id, team_id, model), counts in rows.items()
        ]
        dialect = self.engine.dialect.name
        upsert = (postgres_insert if dialect == "postgresql" else sqlite_insert)(usage)
        excluded = upsert.excluded
        statement = upsert.on_conflict_do_update(
            index_elements=[usage.c.day, usage.c.key_id, usage.c.team_id, usage.c.model],
            set_={
                "requests": usage.c.requests + excluded.requests,
                "prompt_tokens": usage.c.prompt_tokens + excluded.prompt_tokens,
                "completion_tokens": usage.c.completion_tokens + excluded.completion_tokens,
                "cost_usd": usage.c.cost_usd + excluded.cost_usd,
            },
        )
        async with self.engine.begin() as conn:
            await conn.execute(statement, values)

    async def spend_since(self, since: date) -> list[tuple[str, str, date, float]]:
        """Cost per key, team and day from ``since`` on."""
        query = (
            select(usage.c.key_id, usage.c.team_id, usage.c.day, func.sum(usage.c.cost_usd))
            .where(usage.c.day >= since)
            .group_by(usage.c.key_id, usage.c.team_id, usage.c.day)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(r[0], r[1], r[2], float(r[3] or 0.0)) for r in rows]

    async def spend_total(self) -> list[tuple[str, str, float]]:
        """Cost per key and team, all time."""
        query = select(usage.c.key_id, usage.c.team_id, func.sum(usage.c.cost_usd)).group_by(
            usage.c.key_id, usage.c.team_id
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(r[0], r[1], float(r[2] or 0.0)) for r in rows]

    async def usage_report(
        self,
        group_by: str,
        *,
        key_id: str | None = None,
        team_id: str | None = None,
        model: str | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[dict[str, Any]]:
        """Requests, tokens and cost grouped by key, team, model or day, filtered and in a range."""
        column = {"key": usage.c.key_id, "team": usage.c.team_id, "model": usage.c.model, "day": usage.c.day}[group_by]
        query = select(
            column,
            func.sum(usage.c.requests),
            func.sum(usage.c.prompt_tokens),
            func.sum(usage.c.completion_tokens),
            func.sum(usage.c.cost_usd),
        ).group_by(column)
        for value, col in ((key_id, usage.c.key_id), (team_id, usage.c.team_id), (model, usage.c.model)):
            if value is not None:
                query = query.where(col == value)
        if start is not None:
            query = query.where(usage.c.day >= start)
        if end is not None:
            query = query.where(usage.c.day <= end)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(column))).all()
        return [
            {
                "group": row[0].isoformat() if isinstance(row[0], date) else row[0],
                "requests": int(row[1] or 0),
                "prompt_tokens": int(row[2] or 0),
                "completion_tokens": int(row[3] or 0),
                "cost_usd": round(float(row[4] or 0.0), 10),
            }
            for row in rows
        ]

    @staticmethod
    async def _check_team(conn: AsyncConnection, team_id: object) -> None:
        if team_id is None:
            return
        found = await conn.scalar(select(teams.c.id).where(teams.c.id == team_id))
        if found is None:
            raise Conflict(f"no team with id '{team_id}'")


MIGRATION_LOCK: Final = 0x5B1D_0001  # a PostgreSQL advisory lock: one migration at a time


class StoredResponse(msgspec.Struct, frozen=True):
    id: str
    key_id: str
    created_at: datetime
    expires_at: datetime
    response: dict[str, Any]
    items: list[Any]
    native: bool = False  # its target knows it by its id (previous_response_id can go there as is)


def _upgrade(connection: Connection) -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per migration context is noise
    if connection.dialect.name == "postgresql":  # replicas starting together wait for each other
        connection.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": MIGRATION_LOCK})
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection: Any, _: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # workers read while one writes
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


async def _bump(conn: AsyncConnection) -> None:
    await conn.execute(update(changes).where(changes.c.id == 1).values(version=changes.c.version + 1))


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were stored in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _key(row: RowMapping) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        team_id=row["team_id"],
        key_hash=row["key_hash"],
        models=tuple(row["models"] or ()),
        rpm=row["rpm"],
        tpm=row["tpm"],
        max_parallel=row["max_parallel"],
        budget_usd=row["budget_usd"],
        budget_period=row["budget_period"],
        model_limits=msgspec.convert(row["model_limits"] or {}, dict[str, ModelLimits]),
        params=msgspec.convert(row["params"], ParamsPolicy) if row["params"] is not None else None,
        expires_at=_aware(row["expires_at"]),
        enabled=bool(row["enabled"]),
        revoked_at=_aware(row["revoked_at"]),
        metadata=dict(row["metadata"] or {}),
        created_at=_aware(row["created_at"]) or now(),
        updated_at=_aware(row["updated_at"]) or now(),
    )


def _team(row: RowMapping) -> TeamRecord:
    return TeamRecord(
        id=row["id"],
        name=row["name"],
        models=tuple(row["models"] or ()),
        rpm=row["rpm"],
        tpm=row["tpm"],
        max_parallel=row["max_parallel"],
        budget_usd=row["budget_usd"],
        budget_period=row["budget_period"],
        metadata=dict(row["metadata"] or {}),
        created_at=_aware(row["created_at"]) or now(),
        updated_at=_aware(row["updated_at"]) or now(),
    )
