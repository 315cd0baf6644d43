"""Hedged requests: when the attempt under way is slow to answer, the next target starts beside it
and the first to answer wins (``models.<alias>.hedge``).

A hedge budget per alias bounds the extra load: each request earns ``budget_pct / 100`` of a hedge
and each hedge spends one, so in a brown-out, when every request is slow, at most that share of
them is doubled. ``Race`` runs the attempts side by side; the failover loop decides when to start
one and what a result means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Generic, TypeVar

from router.config import HedgeConfig
from router.resilience.targets import TargetState

T = TypeVar("T")
K = TypeVar("K")

OVERTAKEN: Final = "overtaken by a faster attempt"  # the message a losing attempt is cancelled with


class HedgeBudget:
    """A token bucket: a request earns a fraction of a hedge, a hedge spends a whole one. It holds
    at most as many as a hundred requests earn, and starts with one."""

    __slots__ = ("_cap", "_rate", "_tokens")

    def __init__(self, budget_pct: float) -> None:
        self._rate = budget_pct / 100
        self._cap = max(1.0, self._rate * 100)
        self._tokens = 1.0

    def earn(self) -> None:
        self._tokens = min(self._cap, self._tokens + self._rate)

    def spend(self) -> bool:
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def hedge_after(hedge: HedgeConfig, state: TargetState) -> float | None:
    """How long the attempt at ``state``'s target may take before a hedge starts: the percentile
    of its observed times to answer when there are enough of them, else ``after_s`` (None: no
    hedge yet)."""
    if hedge.after_percentile is not None:
        observed = state.percentile(hedge.after_percentile)
        if observed is not None:
            return observed
    return hedge.after_s


class Race(Generic[T, K]):
    """Attempts running side by side, each a task keyed by what started it. The owner waits for
    the next to finish and, once one has won, ``cancel_rest`` ends the others."""

    __slots__ = ("_running", "overtaken")

    def __init__(self) -> None:
        self._running: dict[asyncio.Task[T], K] = {}
        self.overtaken: set[asyncio.Task[Any]] = set()  # cancelled because another won

    def __len__(self) -> int:
        return len(self._running)

    def start(self, attempt: Coroutine[Any, Any, T], key: K) -> None:
        self._running[asyncio.get_running_loop().create_task(attempt)] = key

    async def finished(self, within: float | None) -> list[tuple[K, asyncio.Task[T]]]:
        """Those that finished first (none if ``within`` seconds passed before any did)."""
        done, _ = await asyncio.wait(self._running, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        return [(self._running.pop(task), task) for task in done]

    async def cancel_rest(self, discard: Callable[[T], Awaitable[None]]) -> None:
        """Cancel what still runs, as overtaken, and wait for it to end; a result that arrived
        meanwhile is handed to ``discard``."""
        tasks = list(self._running)
        self._running.clear()
        for task in tasks:
            self.overtaken.add(task)
            task.cancel(OVERTAKEN)
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is None:
                await discard(task.result())
