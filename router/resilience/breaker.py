"""Per-target circuit breakers: pybreaker keeps the state machine and counters; ``Breaker``
admits requests from asyncio. Breakers read their own clock so tests can drive the open →
half-open timeline without sleeping.

With ``resilience.breaker.shared`` a breaker has ``Peers`` (the other workers and replicas, through
``router.state.redis_breakers``): its own transitions are announced to them, theirs are applied
here with ``apply``, and once the reset timeout has passed it probes only when the fleet granted it
the probe. Admission stays local and synchronous: the peers are told things, never waited for."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

import pybreaker

from router.config import BreakerConfig

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
ASK_EVERY_S: Final = 1.0  # how often a breaker waiting for the fleet's probe asks for it again
Origin = Literal["here", "granted", "elsewhere"]  # who made a transition (see Breaker.apply)


class Peers(Protocol):
    """The other workers and replicas sharing breakers. Every call returns at once; what needs
    the network happens in the background."""

    @property
    def online(self) -> bool:
        """False while the shared state cannot be reached: breakers then work alone."""
        ...

    def announce(self, label: str, old: str, new: str, opened_at: float | None, failures: int) -> None:
        """A transition made here (epoch seconds for ``opened_at``)."""
        ...

    def want_probe(self, label: str, now: float, reset_timeout_s: float) -> None:
        """Ask for the fleet's one probe of this target, due once the circuit has been open
        ``reset_timeout_s`` (``now`` by this breaker's clock); granted through ``Breaker.apply``."""
        ...

    def may_probe(self, label: str) -> bool:
        """Whether this process holds the fleet's probe of the target now."""
        ...

    def watch(self, label: str) -> None:
        """A breaker was created here: bring it the fleet's state of its target."""
        ...


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

    def adopt(self, opened_at: datetime | None, failures: int) -> None:
        """Take another process's figures: when it opened the circuit, the failures that did it."""
        if opened_at is not None:
            self._opened_at = opened_at
        self._fail_counter = failures


class _TargetFailed(Exception):
    """What the breaker is told when a call failed (a fresh instance each time)."""


def _fail() -> None:
    raise _TargetFailed


def _succeed() -> None:
    return None


class _Watch(pybreaker.CircuitBreakerListener):
    """Tells its breaker of every transition pybreaker makes."""

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._breaker._changed(old_state.name if old_state is not None else None, new_state.name)


class Breaker:
    """One target's breaker: pybreaker keeps the state machine and counters; this adapter admits
    requests from asyncio. pybreaker alone would let every concurrent request through while
    half-open; here at most ``half_open_max_calls`` probes are in flight and the rest skip."""

    __slots__ = (
        "_applying",
        "_cb",
        "_clock",
        "_next_ask",
        "_peers",
        "_probe_limit",
        "_probes",
        "_reset",
        "_storage",
        "config",
        "name",
        "transitions",
        "version",
    )

    def __init__(self, name: str, cfg: BreakerConfig, clock: Clock = utc_now, peers: Peers | None = None) -> None:
        self.name = name
        self.config = cfg
        self._storage = _ClockedStorage(clock)
        self.transitions: dict[str, int] = {}  # state entered → how many times, by this process
        self._peers = peers
        self._applying: Origin = "here"
        self.version = 0  # of the fleet's state last applied (see Breaker.apply)
        self._next_ask = 0.0
        self._cb = pybreaker.CircuitBreaker(
            fail_max=cfg.fail_max,
            reset_timeout=cfg.reset_timeout_s,
            success_threshold=cfg.success_threshold,
            state_storage=self._storage,
            listeners=[_Watch(self)],
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

    @property
    def scope(self) -> str:
        """``shared`` while the fleet's state is followed, ``worker`` while this breaker is on its own."""
        return "shared" if self._peers is not None and self._peers.online else "worker"

    @property
    def probes(self) -> int:
        """Probes in flight in this process."""
        return self._probes

    def admit(self) -> bool | str:
        """``False`` for a normal call, ``True`` for a half-open probe, or why the target is skipped."""
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return False
        peers = self._peers if self._peers is not None and self._peers.online else None
        if state == pybreaker.STATE_OPEN:
            opened = self._storage.opened_at
            if opened is not None and self._clock() < opened + self._reset:
                return "circuit open"
            if peers is not None:  # one process probes for the fleet: this one, once granted
                self._ask(peers)
                return "circuit open"
            self._cb.half_open()
        elif peers is not None and not peers.may_probe(self.name):
            self._ask(peers)  # in case the process probing has gone
            return "circuit half-open, probe in flight"
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

    def _ask(self, peers: Peers) -> None:
        now = time.monotonic()
        if now >= self._next_ask:
            self._next_ask = now + ASK_EVERY_S
            peers.want_probe(self.name, self._clock().timestamp(), self.config.reset_timeout_s)

    def apply(self, state: str, opened_at: datetime | None, failures: int, version: int, *, mine: bool = False) -> None:
        """The fleet's state of this target (``version`` orders them; ``0`` when it has none),
        taken without announcing it back. A transition counts in ``transitions`` only where it was
        made: a probe granted here (``mine``) counts, another process's transition does not."""
        self.version = version
        self._applying = "granted" if mine else "elsewhere"
        try:
            if state != self._cb.current_state:
                {
                    pybreaker.STATE_OPEN: self._cb.open,
                    pybreaker.STATE_HALF_OPEN: self._cb.half_open,
                    pybreaker.STATE_CLOSED: self._cb.close,
                }[state]()
        finally:
            self._applying = "here"
        if state != pybreaker.STATE_CLOSED:
            self._storage.adopt(opened_at, failures)

    def _changed(self, old: str | None, new: str) -> None:
        origin = self._applying
        if origin != "elsewhere":
            self.transitions[new] = self.transitions.get(new, 0) + 1
            log.warning("breaker target=%s %s -> %s", self.name, old or "-", new)
        else:
            log.info("breaker target=%s %s -> %s (by another worker)", self.name, old or "-", new)
        if origin == "here" and old is not None and self._peers is not None:
            opened = self._storage.opened_at if new == pybreaker.STATE_OPEN else None
            self._peers.announce(self.name, old, new, opened.timestamp() if opened else None, self._cb.fail_counter)
