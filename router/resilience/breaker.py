"""Per-target circuit breakers: pybreaker keeps the state machine and counters; ``Breaker``
admits requests from asyncio. Breakers read their own clock so tests can drive the open →
half-open timeline without sleeping."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import pybreaker

from router.config import BreakerConfig

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class _ClockedStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's in-memory storage, stamping ``opened_at`` with our clock instead of its own."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    @opened_at.setter
    def opened_at(self, _: datetime) -> None:
        self._opened_at = self._clock()


class _TargetFailed(Exception):
    """What the breaker is told when a call failed (a fresh instance each time)."""


def _fail() -> None:
    raise _TargetFailed


def _succeed() -> None:
    return None


class _StateLog(pybreaker.CircuitBreakerListener):
    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        before = old_state.name if old_state is not None else "-"
        log.warning("breaker target=%s %s -> %s", cb.name, before, new_state.name)


_STATE_LOG: Final = _StateLog()


class _Transitions(pybreaker.CircuitBreakerListener):
    """Counts one breaker's transitions by the state entered (for the metrics)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self._counts = counts

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._counts[new_state.name] = self._counts.get(new_state.name, 0) + 1


class Breaker:
    """One target's breaker: pybreaker keeps the state machine and counters; this adapter admits
    requests from asyncio. pybreaker alone would let every concurrent request through while
    half-open; here at most ``half_open_max_calls`` probes are in flight and the rest skip."""

    __slots__ = ("_cb", "_clock", "_probe_limit", "_probes", "_reset", "_storage", "config", "transitions")

    def __init__(self, name: str, cfg: BreakerConfig, clock: Clock = utc_now) -> None:
        self.config = cfg
        self._storage = _ClockedStorage(clock)
        self.transitions: dict[str, int] = {}  # state entered → how many times
        self._cb = pybreaker.CircuitBreaker(
            fail_max=cfg.fail_max,
            reset_timeout=cfg.reset_timeout_s,
            success_threshold=cfg.success_threshold,
            state_storage=self._storage,
            listeners=[_STATE_LOG, _Transitions(self.transitions)],
            name=name,
        )
        self._clock = clock
        self._reset = timedelta(seconds=cfg.reset_timeout_s)
        self._probe_limit = cfg.half_open_max_calls
        self._probes = 0

    @property
    def state(self) -> str:
        return self._cb.current_state

    @property
    def failures(self) -> int:
        """Consecutive failures."""
        return self._cb.fail_counter

    @property
    def opened_at(self) -> datetime | None:
        return self._storage.opened_at if self.state != pybreaker.STATE_CLOSED else None

    def admit(self) -> bool | str:
        """``False`` for a normal call, ``True`` for a half-open probe, or why the target is skipped."""
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return False
        if state == pybreaker.STATE_OPEN:
            opened = self._storage.opened_at
            if opened is not None and self._clock() < opened + self._reset:
                return "circuit open"
            self._cb.half_open()
        if self._probes >= self._probe_limit:
            return "circuit half-open, probe in flight"
        self._probes += 1
        return True

    def record(self, probe: bool, failed: bool) -> None:
        """The outcome of an admitted call. A call admitted in another phase than the current one
        (closed vs half-open) is stale and teaches nothing."""
        if probe:
            self._probes -= 1
        state = self._cb.current_state
        if state != (pybreaker.STATE_HALF_OPEN if probe else pybreaker.STATE_CLOSED):
            return
        if not failed:
            if state == pybreaker.STATE_CLOSED and self._cb.fail_counter == 0:
                return  # the hot path: nothing to reset
            self._cb.call(_succeed)
            return
        # pybreaker re-raises the failure, or CircuitBreakerError when it trips.
        with contextlib.suppress(_TargetFailed, pybreaker.CircuitBreakerError):
            self._cb.call(_fail)

    def release(self, probe: bool) -> None:
        """An admitted call ended without an outcome (the client left)."""
        if probe:
            self._probes -= 1
