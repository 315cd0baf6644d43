"""``database.url`` as users write it → the async driver SQLAlchemy needs."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from router.config_schema import ConfigError

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def async_url(url: str, base: Path | None = None) -> URL:
    """The URL with its async driver; a relative SQLite path is taken from ``base`` (the config's
    directory), so the database sits beside the config whatever the working directory."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database.url: not a database URL: {_shown(url)}") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigError(
            f"database.url: unsupported database '{parsed.drivername}' (sqlite:///path or postgresql://user@host/db)"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("sqlite") and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database)
        if not path.is_absolute() and base is not None:
            parsed = parsed.set(database=str(base / path))
    return parsed


def _shown(url: str) -> str:
    """The URL without a password, for messages."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://…@{rest.split('@', 1)[1]}"
    return url
