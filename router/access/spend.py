"""Spend: what each key and team has used, for budgets and ``/admin/usage``.

Every Outcome of a request made with a key adds to this worker's pending counters (no database
write on the request path). Every ``FLUSH_S`` the pending counters are added to the database's
daily rows in one transaction, and the spend of every key and team is read back from it. A
subject's spend is what the database holds, from every worker and replica, plus what this worker
has not written yet: exact across replicas within a flush, never counted twice (a batch leaves the
pending counters in the same step that writes it), and it survives restarts.

With the Redis state backend, budgets are also checked against a running count in Redis, charged
as each request ends (batched, off the request path) and read in the same atomic step that admits
a request: exact across replicas at once, not a flush later. Redis keeps nothing the database does
not: a count missing there (Redis restarted, or a subject quiet for weeks) is seeded from the
database, and a charge is written to the database only after it reached Redis or was given up on,
so a seeded count cannot hold a request twice. A charge that may have been lost drops its
subject's count, to be seeded afresh. The cost of that rule: a count rebuilt in the second a
charge was lost may miss that charge; it never counts one twice, and the database's figure, which
is checked too, has it within a flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Final, Protocol

from providers.base import TokenUsage
from router.gateway.outcome import Outcome, Pricer
from router.store.database import Database, UsageKey

log = logging.getLogger(__name__)

FLUSH_S: Final = 1.0
PERIODS: Final = ("daily", "weekly", "monthly", "total")


def utc_today() -> date:
    return datetime.now(UTC).date()


def period_start(period: str, today: date) -> date | None:
    """The first day a budget period covers (UTC); None for ``total``."""
    if period == "daily":
        return today
    if period == "weekly":
        return today - timedelta(days=today.weekday())
    if period == "monthly":
        return today.replace(day=1)
    return None


def next_reset(period: str, today: date) -> date | None:
    if period == "daily":
        return today + timedelta(days=1)
    if period == "weekly":
        return today + timedelta(days=7 - today.weekday())
    if period == "monthly":
        return (today.replace(day=28) + timedelta(days=4)).replace(day=1)
    return None


def period_fields(today: date) -> dict[str, str]:
    """Each period's name for its running spend today: ``daily:2026-11-30``, …, ``total``."""
    return {p: f"{p}:{start.isoformat()}" if (start := period_start(p, today)) else p for p in PERIODS}


class SharedSpend(Protocol):
    """Spend counted in the shared state backend (Redis), exact across replicas at once."""

    def charge(self, subjects: Sequence[str], cost: float, fields: Sequence[str]) -> None: ...

    async def drain(self) -> None: ...


class Ledger:
    """Spend per subject (``key:<id>``, ``team:<id>``) and period; an Outcome listener. With a
    shared backend every charge also goes there (see ``SharedSpend``), before the database."""

    def __init__(
        self,
        database: Database,
        pricing: Pricer | None = None,
        today: Callable[[], date] = utc_today,
        shared: SharedSpend | None = None,
    ) -> None:
        self.database = database
        self._pricing = pricing
        self._today = today
        self._shared = shared
        self._day_checked = -1e9
        self._day_cached = today()
        self._fields = period_fields(self._day_cached)
        self._pending: dict[UsageKey, list[float]] = {}
        self._unwritten: dict[str, float] = {}  # subject → cost not in the database yet
        self._stored: dict[tuple[str, str], float] = {}  # (subject, period) → cost in the database
        self._stored_day: date | None = None  # the day ``_stored`` was read for
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    def __call__(self, outcome: Outcome) -> None:
        if outcome.key_id is None or outcome.alias is None:  # not a key's, or never routed
            return
        usage, cost = outcome.usage, outcome.cost_usd
        if cost is None:
            cost = self._estimated_cost(outcome)
        row = (self._day(), outcome.key_id, outcome.team_id or "", outcome.alias)
        counts = self._pending.get(row)
        if counts is None:
            counts = self._pending[row] = [0.0, 0.0, 0.0, 0.0]
        counts[0] += 1
        if usage is not None:
            counts[1] += usage.prompt
            counts[2] += usage.completion
        counts[3] += cost
        if cost:
            subjects = _subjects(outcome.key_id, outcome.team_id or "")
            for subject in subjects:
                self._unwritten[subject] = self._unwritten.get(subject, 0.0) + cost
            if self._shared is not None:
                self._shared.charge(subjects, cost, tuple(self._fields.values()))

    def _estimated_cost(self, outcome: Outcome) -> float:
        """An answer whose usage never came (a stream cut before its last chunk) is charged at
        its reservation, priced as output tokens: a client cannot spend for free by leaving
        early. An unknown price charges nothing."""
        if outcome.usage is not None or not outcome.reserved_tokens or outcome.target is None or self._pricing is None:
            return 0.0
        model = outcome.target.partition("/")[2]
        reserved = TokenUsage(prompt=0, completion=outcome.reserved_tokens)
        try:
            return self._pricing.cost(outcome.provider, model, outcome.response_model, reserved) or 0.0
        except Exception:  # a price table surprise must not lose the usage
            log.exception("spend: pricing the reservation failed")
            return 0.0

    def _day(self) -> date:
        """Today (UTC), looked up at most once a second: an Outcome needs only the day."""
        now = time.monotonic()
        if now >= self._day_checked + 1.0:
            self._set_day(now, self._today())
        return self._day_cached

    def _set_day(self, now: float, today: date) -> None:
        if today != self._day_cached:
            self._fields = period_fields(today)
        self._day_checked, self._day_cached = now, today

    def fields(self) -> dict[str, str]:
        """Each budget period's spend field today (see ``period_fields``)."""
        self._day()
        return self._fields

    def spent(self, subject: str, period: str) -> float:
        return self._stored.get((subject, period), 0.0) + self._unwritten.get(subject, 0.0)

    def stored(self, subject: str) -> dict[str, float] | None:
        """What the database held at the last read, per period field: what a shared count
        starts from. None in the moments after midnight before the first read of the new day:
        yesterday's daily figure must not start today's count."""
        if self._day() != self._stored_day:
            return None
        return {field: self._stored.get((subject, period), 0.0) for period, field in self._fields.items()}

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()  # the last batch

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception:  # the database away: the counters wait for the next try
                log.warning("spend: cannot write usage to the database; will retry", exc_info=True)

    async def flush(self) -> None:
        async with self._flushing:
            batch, self._pending = self._pending, {}
            written = dict(self._unwritten)  # what this batch carries, counted until it is read back
            try:
                if self._shared is not None:  # what the batch holds reaches the shared count first
                    await self._shared.drain()
                await self.database.add_usage(batch)
            except Exception:
                _merge_back(self._pending, batch)  # nothing lost: it goes with the next batch
                raise
            # (Cancelled while writing, the batch may or may not be in: it is not put back, so
            # that it cannot be counted twice.)
            try:
                await self.refresh()
            finally:
                for subject, cost in written.items():
                    left = self._unwritten.get(subject, 0.0) - cost
                    if left > 1e-12:
                        self._unwritten[subject] = left
                    else:
                        self._unwritten.pop(subject, None)

    async def refresh(self) -> None:
        """Read every subject's spend per period back from the database."""
        today = self._today()
        self._set_day(time.monotonic(), today)
        starts = {p: period_start(p, today) for p in PERIODS[:3]}
        since = min(d for d in starts.values() if d is not None)
        stored: dict[tuple[str, str], float] = {}
        for key_id, team_id, day, cost in await self.database.spend_since(since):
            for period, start in starts.items():
                if start is not None and day >= start:
                    for subject in _subjects(key_id, team_id):
                        stored[(subject, period)] = stored.get((subject, period), 0.0) + cost
        for key_id, team_id, cost in await self.database.spend_total():
            for subject in _subjects(key_id, team_id):
                stored[(subject, "total")] = stored.get((subject, "total"), 0.0) + cost
        self._stored, self._stored_day = stored, today


def _subjects(key_id: str, team_id: str) -> list[str]:
    subjects = [f"key:{key_id}"] if key_id else []
    if team_id:
        subjects.append(f"team:{team_id}")
    return subjects


def _merge_back(into: dict[UsageKey, list[float]], batch: dict[UsageKey, list[float]]) -> None:
    for row, counts in batch.items():
        mine = into.get(row)
        if mine is None:
            into[row] = counts
        else:
            for i, value in enumerate(counts):
                mine[i] += value
