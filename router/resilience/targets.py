"""What Switchboard knows about each target: its breaker, load and latency (``TargetState``),
the lease one call holds on it, and the registry of every target's state."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

from providers.errors import SwitchboardError
from router.config import BreakerConfig, Config
from router.resilience.breaker import Breaker, Clock, Peers, utc_now

EWMA_ALPHA: Final = 0.3
SAMPLES: Final = 128  # latest times to answer kept per target, for a hedge's percentile
MIN_SAMPLES: Final = 20  # fewer than this, and a percentile says nothing yet


class TargetState:
    """What Switchboard knows about one target, and its admission control."""

    __slots__ = ("breaker", "ewma_s", "failures", "in_flight", "label", "max_concurrent", "samples", "successes")

    def __init__(self, label: str, breaker: Breaker, max_concurrent: int | None = None) -> None:
        self.label = label
        self.breaker = breaker
        self.max_concurrent = max_concurrent
        self.in_flight = 0
        self.successes = 0
        self.failures = 0
        self.ewma_s: float | None = None  # time to first token (whole answer when not streamed)
        self.samples: deque[float] = deque(maxlen=SAMPLES)  # the same, the latest ones, for percentiles

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
        self.samples.append(seconds)

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile of the latest times to answer; None until there are enough."""
        if len(self.samples) < MIN_SAMPLES:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    def snapshot(self) -> dict[str, object]:
        opened = self.breaker.opened_at
        return {
            "target": self.label,
            "state": self.breaker.state,
            "breaker_scope": self.breaker.scope,  # state, failures, opened_at: the fleet's or this worker's
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


class TargetRegistry:
    """Every target's state, keyed by (provider, model). Targets named in the config exist from
    the start and stay; ``<provider>/<model>`` requests add theirs on demand, kept in
    least-recently-used order up to ``max_ad_hoc``, so that clients inventing model names cannot
    grow memory, whatever the breakers' states. Every lookup is O(1). An evicted target that is
    still in flight keeps its state object until its lease ends; a later request starts afresh.
    With ``peers`` every breaker follows the fleet's (``resilience.breaker.shared``)."""

    def __init__(
        self,
        breakers: Callable[[str, str], BreakerConfig],
        limits: Callable[[str, str], int | None],
        clock: Clock = utc_now,
        max_ad_hoc: int = 1024,
        peers: Peers | None = None,
    ) -> None:
        self._breakers = breakers
        self._limits = limits
        self._clock = clock
        self._peers = peers
        self._declared: dict[tuple[str, str], TargetState] = {}
        self._ad_hoc: OrderedDict[tuple[str, str], TargetState] = OrderedDict()
        self._max_ad_hoc = max_ad_hoc

    def _new(self, provider: str, model: str) -> TargetState:
        label = f"{provider}/{model}"
        breaker = Breaker(label, self._breakers(provider, model), self._clock, self._peers)
        if self._peers is not None:
            self._peers.watch(label)
        return TargetState(label, breaker, self._limits(provider, model))

    def declare(self, provider: str, model: str) -> TargetState:
        key = (provider, model)
        state = self._declared.get(key)
        if state is None:
            state = self._ad_hoc.pop(key) if key in self._ad_hoc else self._new(provider, model)
            self._declared[key] = state
        return state

    def adopt(self, old: TargetRegistry) -> int:
        """After a config reload: take over ``old``'s state (breaker, counts, requests in flight)
        of every target whose breaker settings and limit did not change; how many."""
        kept = 0
        for key, state in self._declared.items():
            previous = old._declared.get(key) or old._ad_hoc.get(key)
            if previous is not None and _same(previous, state.breaker.config, state.max_concurrent):
                self._declared[key] = previous
                kept += 1
        for key, previous in old._ad_hoc.items():
            if key not in self._declared and _same(previous, self._breakers(*key), self._limits(*key)):
                self._ad_hoc[key] = previous
        return kept

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

    def find(self, label: str) -> Breaker | None:
        """The breaker of a target this process knows, by its label; never adds one, nor moves it
        in the least-recently-used order."""
        provider, _, model = label.partition("/")
        key = (provider, model)
        state = self._declared.get(key) or self._ad_hoc.get(key)
        return state.breaker if state is not None and state.label == label else None

    def labels(self) -> list[str]:
        return [state.label for state in (*self._declared.values(), *self._ad_hoc.values())]

    def __len__(self) -> int:
        return len(self._declared) + len(self._ad_hoc)

    def snapshot(self) -> list[dict[str, object]]:
        return [state.snapshot() for state in (*self._declared.values(), *self._ad_hoc.values())]

    def states(self) -> list[tuple[str, str]]:
        """Each target's label and breaker state."""
        return [(state.label, state.breaker.state) for state in (*self._declared.values(), *self._ad_hoc.values())]

    def transitions(self) -> list[tuple[str, str, int]]:
        """Each target's breaker transitions so far: label, state entered, count."""
        return [
            (state.label, entered, count)
            for state in (*self._declared.values(), *self._ad_hoc.values())
            for entered, count in state.breaker.transitions.items()
        ]


def _same(state: TargetState, breaker: BreakerConfig, limit: int | None) -> bool:
    return state.breaker.config == breaker and state.max_concurrent == limit


def registry_from_config(config: Config, clock: Clock = utc_now, peers: Peers | None = None) -> TargetRegistry:
    """Breaker settings per target: ``resilience.breaker``, then the provider's ``breaker:``, then
    the target's own; every configured target gets its state up front. ``peers`` when the
    breakers are shared (``resilience.breaker.shared``)."""
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

    registry = TargetRegistry(breaker, limit, clock, config.resilience.max_ad_hoc_targets, peers)
    for model in config.models.values():
        for t in model.targets:
            registry.declare(t.provider, t.model)
    return registry
