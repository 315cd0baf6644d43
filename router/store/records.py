"""Keys and teams as the guard holds them in memory (the database's rows, without secrets)."""

from __future__ import annotations

import fnmatch
import re
from datetime import datetime
from typing import Literal

import msgspec

from router.config_schema import ModelLimits, ParamsPolicy

BudgetPeriod = Literal["daily", "weekly", "monthly", "total"]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    models: tuple[str, ...] = ()  # aliases and globs; empty: every model
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_usd: float | None = None
    budget_period: BudgetPeriod | None = None


class TeamRecord(Limits, frozen=True, kw_only=True):
    id: str
    name: str
    metadata: dict[str, str] = {}
    created_at: datetime
    updated_at: datetime


class KeyRecord(Limits, frozen=True, kw_only=True):
    id: str
    name: str
    team_id: str | None = None
    key_hash: str
    model_limits: dict[str, ModelLimits] = {}  # pattern → limits, in order: the first that matches counts
    params: ParamsPolicy | None = None
    expires_at: datetime | None = None
    enabled: bool = True
    revoked_at: datetime | None = None
    metadata: dict[str, str] = {}
    created_at: datetime
    updated_at: datetime

    def usable(self, now: datetime) -> bool:
        if not self.enabled or self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


class ModelRule:
    """A key's or team's model list, compiled once: exact names and ``fnmatch`` globs."""

    __slots__ = ("_any", "_exact", "_pattern")

    def __init__(self, models: tuple[str, ...]) -> None:
        self._any = not models
        self._exact = frozenset(m for m in models if not _is_glob(m))
        globs = [fnmatch.translate(m) for m in models if _is_glob(m)]
        self._pattern = re.compile("|".join(globs)) if globs else None

    def allows(self, model: str) -> bool:
        if self._any or model in self._exact:
            return True
        return self._pattern is not None and self._pattern.fullmatch(model) is not None


def _is_glob(model: str) -> bool:
    return any(c in model for c in "*?[")
