"""Shared helpers. Tests never leave the machine: pytest-socket allows loopback only."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_bytes(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / name).read_bytes()


# Real services: CI requires them (.ci/run sets SWITCHBOARD_REQUIRE_SERVICES=1); on a machine
# without them the tests that need them skip, each with one line saying why.
REQUIRE_SERVICES = os.environ.get("SWITCHBOARD_REQUIRE_SERVICES") == "1"
POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}); the README's Development section says how to start it"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A database of its own on the local PostgreSQL, dropped afterwards."""
    import asyncpg

    try:
        admin = await asyncpg.connect(f"{POSTGRES}/test", timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _unavailable("PostgreSQL on 127.0.0.1:5432", exc)
    name = "switchboard_test_" + secrets.token_hex(6)  # ours, not input: safe to put in the statement
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{POSTGRES}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def redis_url() -> str:
    """The local Redis (database 0; tests use keys of their own)."""
    from redis.asyncio import Redis

    client = Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=2)
    try:
        await client.execute_command("PING")  # type: ignore[no-untyped-call]
    except Exception as exc:  # redis' ConnectionError is not an OSError
        _unavailable("Redis on 127.0.0.1:6379", exc)
    finally:
        await client.aclose()
    return "redis://127.0.0.1:6379/0"
