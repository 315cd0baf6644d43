"""Per-target resilience: circuit breakers (pybreaker behind an asyncio adapter), the bulkhead,
the numbers the balancer reads, and the one retry policy (tenacity).

A target takes a request through ``TargetState.acquire()``, which answers a ``Lease`` or the
reason to skip the target; the lease ends as ``succeeded``, ``failed`` or ``abandoned`` (the client
left: nothing is learned about the target). Breakers read their own clock so tests can drive the
open → half-open timeline without sleeping; retries sleep through an injectable function.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import pybreaker
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from providers.errors import SwitchboardError, UpstreamError
from router.config import BreakerConfig, Config, RetryConfig
from router.errors import Overloaded

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
EWMA_ALPHA: Final = 0.3


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


class Breaker:
    """One target's breaker: pybreaker keeps the state machine and counters; this adapter admits
    requests from asyncio. pybreaker alone would let every concurrent request through while
    half-open; here at most ``half_open_max_calls`` probes are in flight and the rest skip."""

    __slots__ = ("_cb", "_clock", "_probe_limit", "_probes", "_reset", "_storage", "config")

    def __init__(self, name: str, cfg: BreakerConfig, clock: Clock = utc_now) -> None:
        self.config = cfg
        self._storage = _ClockedStorage(clock)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=cfg.fail_max,
            reset_timeout=cfg.reset_timeout_s,
            success_threshold=cfg.success_threshold,
            state_storage=self._storage,
            listeners=[_STATE_LOG],
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


class TargetState:
    """What Switchboard knows about one target, and its admission control."""

    __slots__ = ("breaker", "ewma_s", "failures", "in_flight", "label", "max_concurrent", "successes")

    def __init__(self, label: str, breaker: Breaker, max_concurrent: int | None = None) -> None:
        self.label = label
        self.breaker = breaker
        self.max_concurrent = max_concurrent
        self.in_flight = 0
        self.successes = 0
        self.failures = 0
        self.ewma_s: float | None = None  # time to first token (whole answer when not streamed)

    def acquire(self) -> Lease | str:
        """A lease to call this target, or the reason it must be skipped now."""
        if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
            return f"at max_concurrent ({self.max_concurrent})"
        admitted = self.breaker.admit()
        if isinstance(admitted, str):
            return admitted
        self.in_flight += 1
        return Lease(self, admitted)

    def observe_latency(self, seconds: float) -> None:
        self.ewma_s = seconds if self.ewma_s is None else self.ewma_s + EWMA_ALPHA * (seconds - self.ewma_s)

    def snapshot(self) -> dict[str, object]:
        opened = self.breaker.opened_at
        return {
            "target": self.label,
            "state": self.breaker.state,
            "consecutive_failures": self.breaker.failures,
            "opened_at": opened.isoformat() if opened else None,
            "in_flight": self.in_flight,
            "ewma_latency_ms": round(self.ewma_s * 1000, 1) if self.ewma_s is not None else None,
            "successes": self.successes,
            "failures": self.failures,
        }


class Lease:
    """One admitted call to a target; ends exactly once."""

    __slots__ = ("_done", "_probe", "_state")

    def __init__(self, state: TargetState, probe: bool) -> None:
        self._state = state
        self._probe = probe
        self._done = False

    def _end(self) -> bool:
        if self._done:
            return False
        self._done = True
        self._state.in_flight -= 1
        return True

    def succeeded(self) -> None:
        if self._end():
            self._state.successes += 1
            self._state.breaker.record(self._probe, failed=False)

    def failed(self, error: SwitchboardError) -> None:
        """Only failures that are the target's fault count; the client's bad request proves the
        target answered, so the breaker takes it as a success."""
        if self._end():
            if error.trips_breaker:
                self._state.failures += 1
            self._state.breaker.record(self._probe, failed=error.trips_breaker)

    def abandoned(self) -> None:
        if self._end():
            self._state.breaker.release(self._probe)


class _StopAtDeadline(stop_base):
    """Stop when the next try, after its wait, could not start before the request's deadline."""

    def __init__(self, fits: Callable[[float], bool]) -> None:
        self._fits = fits

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self._fits(retry_state.upcoming_sleep)


class RetryPolicy:
    """Which failures a target gets another try for, and how long to wait first.

    Retryable: connection errors and 408, 409, 429, 500, 502, 503, 504, 529. A ``Retry-After`` up
    to ``max_retry_after_s`` is waited for; a longer one means "go elsewhere now". Timeouts are
    never retried on the same target.
    """

    def __init__(self, cfg: RetryConfig, sleep: Sleep) -> None:
        self.cfg = cfg
        self.sleep = sleep
        self._backoff = wait_exponential_jitter(
            multiplier=cfg.initial_backoff_s, max=cfg.max_backoff_s, jitter=cfg.initial_backoff_s
        )
        self._template = AsyncRetrying()

    def should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, UpstreamError) or not exc.retryable:
            return False
        return exc.retry_after is None or exc.retry_after <= self.cfg.max_retry_after_s

    def delay(self, exc: BaseException, attempt: int) -> float:
        """The wait before try ``attempt + 1`` after ``exc`` failed try ``attempt``."""
        if isinstance(exc, UpstreamError) and exc.retry_after is not None:
            return exc.retry_after
        state = RetryCallState(self._template, None, (), {})
        state.attempt_number = attempt
        return min(float(self._backoff(state)), self.cfg.max_backoff_s)

    def retrying(self, first_attempt_done: int, fits: Callable[[float], bool]) -> AsyncRetrying:
        """Tenacity for the tries after the first ``first_attempt_done`` (the first try runs
        outside tenacity, so a healthy request pays nothing for it). ``fits(delay)`` says whether
        a try after that wait could still start before the deadline."""

        def wait(state: RetryCallState) -> float:
            assert state.outcome is not None
            return self.delay(state.outcome.exception() or Exception(), state.attempt_number + first_attempt_done)

        return AsyncRetrying(
            stop=stop_any(
                stop_after_attempt(max(1, self.cfg.max_attempts - first_attempt_done)), _StopAtDeadline(fits)
            ),
            wait=wait,
            retry=retry_if_exception(self.should_retry),
            sleep=self.sleep,
            reraise=True,
        )


def seeded_random(seed: int | None = None) -> random.Random:
    return random.Random(seed)  # noqa: S311 - load balancing, not cryptography


class TargetRegistry:
    """Every target's state, keyed by (provider, model). Targets named in the config exist from
    the start and stay; ``<provider>/<model>`` requests add theirs on demand, kept in
    least-recently-used order up to ``max_ad_hoc``, so that clients inventing model names cannot
    grow memory, whatever the breakers' states. Every lookup is O(1). An evicted target that is
    still in flight keeps its state object until its lease ends; a later request starts afresh."""

    def __init__(
        self,
        breakers: Callable[[str, str], BreakerConfig],
        limits: Callable[[str, str], int | None],
        clock: Clock = utc_now,
        max_ad_hoc: int = 1024,
    ) -> None:
        self._breakers = breakers
        self._limits = limits
        self._clock = clock
        self._declared: dict[tuple[str, str], TargetState] = {}
        self._ad_hoc: OrderedDict[tuple[str, str], TargetState] = OrderedDict()
        self._max_ad_hoc = max_ad_hoc

    def _new(self, provider: str, model: str) -> TargetState:
        label = f"{provider}/{model}"
        breaker = Breaker(label, self._breakers(provider, model), self._clock)
        return TargetState(label, breaker, self._limits(provider, model))

    def declare(self, provider: str, model: str) -> TargetState:
        key = (provider, model)
        state = self._declared.get(key)
        if state is None:
            state = self._ad_hoc.pop(key) if key in self._ad_hoc else self._new(provider, model)
            self._declared[key] = state
        return state

    def get(self, provider: str, model: str) -> TargetState:
        key = (provider, model)
        state = self._declared.get(key)
        if state is not None:
            return state
        state = self._ad_hoc.get(key)
        if state is not None:
            self._ad_hoc.move_to_end(key)
            return state
        if len(self._ad_hoc) >= self._max_ad_hoc:
            self._ad_hoc.popitem(last=False)
        state = self._ad_hoc[key] = self._new(provider, model)
        return state

    def __len__(self) -> int:
        return len(self._declared) + len(self._ad_hoc)

    def snapshot(self) -> list[dict[str, object]]:
        return [state.snapshot() for state in (*self._declared.values(), *self._ad_hoc.values())]


class Bulkhead:
    """The process-wide cap on requests in flight (``resilience.max_concurrent``)."""

    __slots__ = ("in_flight", "limit")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> None:
        if self.limit is not None and self.in_flight >= self.limit:
            raise Overloaded(f"Switchboard is at its limit of {self.limit} requests in flight; retry shortly.")
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


def registry_from_config(config: Config, clock: Clock = utc_now) -> TargetRegistry:
    """Breaker settings per target: ``resilience.breaker``, then the provider's ``breaker:``, then
    the target's own; every configured target gets its state up front."""
    declared = {
        (t.provider, t.model): t for m in config.models.values() for t in m.targets if t.breaker or t.max_concurrent
    }

    def breaker(provider: str, model: str) -> BreakerConfig:
        cfg = config.resilience.breaker
        provider_cfg = config.providers.get(provider)
        if provider_cfg is not None and provider_cfg.breaker is not None:
            cfg = provider_cfg.breaker.apply(cfg)
        target = declared.get((provider, model))
        return target.breaker.apply(cfg) if target is not None and target.breaker is not None else cfg

    def limit(provider: str, model: str) -> int | None:
        target = declared.get((provider, model))
        return target.max_concurrent if target is not None else None

    registry = TargetRegistry(breaker, limit, clock, config.resilience.max_ad_hoc_targets)
    for model in config.models.values():
        for t in model.targets:
            registry.declare(t.provider, t.model)
    return registry
