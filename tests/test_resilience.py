"""Breakers on a controllable clock, the retry policy, balancing, bulkheads: no real waits."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from providers.errors import (
    UpstreamAuthFailed,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamTimeout,
)
from router.config import BreakerConfig, RetryConfig, settings_from_dict
from router.errors import Overloaded
from router.gateway.balancing import EXPLORE, order
from router.resilience.breaker import Breaker
from router.resilience.bulkhead import Bulkhead
from router.resilience.retry import RetryPolicy
from router.resilience.targets import Lease, TargetRegistry, TargetState, registry_from_config


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def target(cfg: BreakerConfig, clock: Clock, max_concurrent: int | None = None) -> TargetState:
    return TargetState("p/m", Breaker("p/m", cfg, clock), max_concurrent)


def lease(state: TargetState) -> Lease:
    got = state.acquire()
    assert isinstance(got, Lease), got
    return got


FAIL = UpstreamServerError("boom", upstream_status=503)


def test_breaker_timeline_closed_open_half_open_closed() -> None:
    clock = Clock()
    state = target(BreakerConfig(fail_max=3, reset_timeout_s=30), clock)
    for _ in range(2):
        lease(state).failed(FAIL)
    assert state.breaker.state == "closed"
    assert state.breaker.failures == 2
    lease(state).failed(FAIL)
    assert state.breaker.state == "open"
    assert state.breaker.opened_at == clock.now
    assert state.acquire() == "circuit open"
    clock.advance(29.9)
    assert state.acquire() == "circuit open"
    clock.advance(0.2)
    probe = lease(state)
    assert state.breaker.state == "half-open"
    assert state.acquire() == "circuit half-open, probe in flight"
    probe.succeeded()
    assert state.breaker.state == "closed"
    assert state.breaker.failures == 0
    assert state.snapshot()["opened_at"] is None
    assert (state.successes, state.failures, state.in_flight) == (1, 3, 0)


def test_failed_probe_reopens_for_a_new_reset_timeout() -> None:
    clock = Clock()
    state = target(BreakerConfig(fail_max=1, reset_timeout_s=10), clock)
    lease(state).failed(FAIL)
    first_opened = state.breaker.opened_at
    assert first_opened is not None
    clock.advance(10)
    lease(state).failed(UpstreamTimeout("slow"))
    assert state.breaker.state == "open"
    assert state.breaker.opened_at == first_opened + timedelta(seconds=10)
    clock.advance(9)
    assert state.acquire() == "circuit open"
    clock.advance(1)
    assert isinstance(state.acquire(), Lease)


def test_success_threshold_needs_that_many_probe_successes() -> None:
    clock = Clock()
    state = target(BreakerConfig(fail_max=1, reset_timeout_s=5, success_threshold=2), clock)
    lease(state).failed(FAIL)
    clock.advance(5)
    lease(state).succeeded()
    assert state.breaker.state == "half-open"
    lease(state).succeeded()
    assert state.breaker.state == "closed"


def test_half_open_admits_only_the_allowed_number_of_concurrent_probes() -> None:
    clock = Clock()
    state = target(BreakerConfig(fail_max=1, reset_timeout_s=1, half_open_max_calls=2), clock)
    lease(state).failed(FAIL)
    clock.advance(1)
    admitted = [state.acquire() for _ in range(50)]
    probes = [a for a in admitted if isinstance(a, Lease)]
    assert len(probes) == 2
    assert admitted[2:] == ["circuit half-open, probe in flight"] * 48
    probes[0].abandoned()  # a probe whose client left frees its slot and proves nothing
    assert state.breaker.state == "half-open"
    assert isinstance(state.acquire(), Lease)


@pytest.mark.parametrize("error", [UpstreamRejected("bad request", status=400), UpstreamRejected("nf", status=404)])
def test_the_clients_own_errors_never_count(error: UpstreamRejected) -> None:
    state = target(BreakerConfig(fail_max=2), Clock())
    lease(state).failed(FAIL)
    for _ in range(10):
        lease(state).failed(error)
    assert state.breaker.state == "closed"
    assert state.breaker.failures == 0  # the target answered: the consecutive count starts over
    assert state.failures == 1


@pytest.mark.parametrize(
    "error",
    [
        UpstreamServerError("500", upstream_status=500),
        UpstreamRateLimited("429", upstream_status=429),
        UpstreamAuthFailed("401", upstream_status=401),
        UpstreamConnectError("refused"),
        UpstreamTimeout("slow"),
        UpstreamProtocolError("garbage"),
    ],
)
def test_the_targets_failures_count(error: UpstreamServerError) -> None:
    state = target(BreakerConfig(fail_max=1), Clock())
    lease(state).failed(error)
    assert state.breaker.state == "open"


def test_abandoned_calls_teach_nothing() -> None:
    state = target(BreakerConfig(fail_max=1), Clock())
    for _ in range(5):
        lease(state).abandoned()
    assert state.breaker.state == "closed"
    assert (state.successes, state.failures, state.in_flight) == (0, 0, 0)


def test_a_lease_ends_once() -> None:
    state = target(BreakerConfig(fail_max=1), Clock())
    one = lease(state)
    one.succeeded()
    one.failed(FAIL)
    one.abandoned()
    assert (state.successes, state.failures, state.in_flight, state.breaker.state) == (1, 0, 0, "closed")


def test_stale_outcomes_from_before_the_breaker_opened_are_ignored() -> None:
    clock = Clock()
    state = target(BreakerConfig(fail_max=1, reset_timeout_s=5), clock)
    slow = lease(state)  # admitted while closed
    lease(state).failed(FAIL)
    clock.advance(5)
    probe = lease(state)
    slow.succeeded()  # finishes during half-open: it was not the probe
    assert state.breaker.state == "half-open"
    probe.failed(FAIL)
    assert state.breaker.state == "open"


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "abandoned"])
def test_outcomes_that_land_while_open_are_ignored(outcome: str) -> None:
    clock = Clock()
    state = target(BreakerConfig(fail_max=2, reset_timeout_s=5), clock)
    slow = lease(state)
    lease(state).failed(FAIL)
    lease(state).failed(FAIL)
    assert state.breaker.state == "open"
    opened = state.breaker.opened_at
    if outcome == "failed":
        slow.failed(FAIL)
    else:
        getattr(slow, outcome)()
    assert state.breaker.state == "open"
    assert state.breaker.opened_at == opened
    assert state.in_flight == 0


def test_max_concurrent_skips_a_full_target() -> None:
    state = target(BreakerConfig(), Clock(), max_concurrent=2)
    first, _ = lease(state), lease(state)
    assert state.acquire() == "at max_concurrent (2)"
    first.succeeded()
    assert isinstance(state.acquire(), Lease)


def test_bulkhead() -> None:
    bulkhead = Bulkhead(2)
    bulkhead.enter()
    bulkhead.enter()
    with pytest.raises(Overloaded) as info:
        bulkhead.enter()
    assert (info.value.status, info.value.retry_after) == (429, 1.0)
    bulkhead.leave()
    bulkhead.enter()
    Bulkhead(None).enter()


def test_breaker_overrides_per_provider_and_per_target() -> None:
    config = settings_from_dict(
        {
            "resilience": {"breaker": {"fail_max": 5, "reset_timeout_s": 30}},
            "providers": {"a": {"type": "mock", "breaker": {"fail_max": 2}}, "b": {"type": "mock"}},
            "models": {
                "m": {
                    "targets": [
                        {"provider": "a", "model": "x"},
                        {"provider": "a", "model": "y", "breaker": {"reset_timeout_s": 5}, "max_concurrent": 3},
                        {"provider": "b", "model": "x"},
                    ]
                }
            },
        },
        {},
    ).config
    registry = registry_from_config(config, Clock())
    assert {s["target"] for s in registry.snapshot()} == {"a/x", "a/y", "b/x"}
    ax, ay, bx = registry.get("a", "x"), registry.get("a", "y"), registry.get("b", "x")
    assert (ax.breaker.config.fail_max, ax.breaker.config.reset_timeout_s) == (2, 30)
    assert (ay.breaker.config.fail_max, ay.breaker.config.reset_timeout_s, ay.max_concurrent) == (2, 5, 3)
    assert (bx.breaker.config.fail_max, bx.max_concurrent) == (5, None)


def test_direct_route_targets_are_bounded() -> None:
    registry = TargetRegistry(lambda p, m: BreakerConfig(), lambda p, m: None, Clock(), max_ad_hoc=10)
    declared = registry.declare("p", "configured")
    for i in range(100):
        registry.get("p", f"invented-{i}")
    assert len(registry) == 11
    assert registry.get("p", "configured") is declared  # configured targets are never evicted


def test_ad_hoc_targets_stay_bounded_when_every_breaker_is_open() -> None:
    """Regression: eviction kept every target whose breaker was open, so during an outage
    invented names grew the registry without bound (and each new name rescanned all of it)."""
    registry = TargetRegistry(lambda p, m: BreakerConfig(fail_max=1), lambda p, m: None, Clock(), max_ad_hoc=50)
    for i in range(2_000):
        state = registry.get("p", f"invented-{i}")
        held = lease(state)
        held.failed(UpstreamServerError("down", upstream_status=503))
        assert state.breaker.state == "open"
    assert len(registry) == 50


def test_recently_used_ad_hoc_targets_survive_eviction() -> None:
    registry = TargetRegistry(lambda p, m: BreakerConfig(), lambda p, m: None, Clock(), max_ad_hoc=10)
    hot = registry.get("p", "hot")
    for i in range(100):
        registry.get("p", f"invented-{i}")
        assert registry.get("p", "hot") is hot  # used again: moves to the back of the line
    first = registry.get("p", "invented-0")
    for i in range(10):
        registry.get("p", f"other-{i}")
    assert registry.get("p", "invented-0") is not first  # least recently used: evicted


# ---- retry policy ---------------------------------------------------------------------------


def policy(**kw: float) -> RetryPolicy:
    async def no_sleep(_: float) -> None:
        return None

    return RetryPolicy(RetryConfig(**kw), no_sleep)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (UpstreamServerError("x", upstream_status=500), True),
        (UpstreamServerError("x", upstream_status=529), True),
        (UpstreamConnectError("x"), True),
        (UpstreamRateLimited("x", upstream_status=429), True),
        (UpstreamRateLimited("x", upstream_status=429, retry_after=5), True),
        (UpstreamRateLimited("x", upstream_status=429, retry_after=60), False),  # longer than max_retry_after_s
        (UpstreamTimeout("x"), False),
        (UpstreamAuthFailed("x"), False),
        (UpstreamProtocolError("x"), False),
        (UpstreamRejected("x", status=400), False),
        (ValueError("x"), False),
    ],
)
def test_what_is_retried(error: Exception, retry: bool) -> None:
    assert policy(max_retry_after_s=10).should_retry(error) is retry


def test_retry_after_sets_the_wait_and_backoff_grows_with_jitter_to_its_cap() -> None:
    p = policy(initial_backoff_s=0.5, max_backoff_s=4)
    assert p.delay(UpstreamRateLimited("x", retry_after=2.5), 1) == 2.5
    waits = [p.delay(FAIL, n) for n in (1, 2, 3, 4, 5)]
    assert 0.5 <= waits[0] <= 1.0
    assert 1.0 <= waits[1] <= 1.5
    assert 2.0 <= waits[2] <= 2.5
    assert waits[3] == waits[4] == 4


async def test_tenacity_runs_the_remaining_tries_and_stops_at_the_deadline() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise UpstreamServerError("x", upstream_status=503, retry_after=1)

    p = RetryPolicy(RetryConfig(max_attempts=4), sleep)
    with pytest.raises(UpstreamServerError):
        await p.retrying(1, lambda delay: True)(failing)
    assert (calls, slept) == (3, [1, 1])
    calls, slept = 0, []
    with pytest.raises(UpstreamServerError):
        await p.retrying(1, lambda delay: delay < 0.5)(failing)  # no time left for a wait of 1 s
    assert (calls, slept) == (1, [])


# ---- balancing ------------------------------------------------------------------------------


def states(n: int) -> list[TargetState]:
    return [target(BreakerConfig(), Clock()) for _ in range(n)]


def test_priority_keeps_the_configured_order() -> None:
    assert order("priority", states(3), (1, 1, 1), random.Random(1)) == [0, 1, 2]


def test_weighted_first_choices_follow_the_weights() -> None:
    rng = random.Random(7)
    firsts = Counter(order("weighted", states(3), (6, 3, 1), rng)[0] for _ in range(20_000))
    shares = [firsts[i] / 20_000 for i in range(3)]
    assert shares == pytest.approx([0.6, 0.3, 0.1], abs=0.02)


def test_weighted_lists_every_target_once() -> None:
    rng = random.Random(3)
    assert all(sorted(order("weighted", states(4), (1, 2, 3, 4), rng)) == [0, 1, 2, 3] for _ in range(100))


def test_least_busy_prefers_fewest_in_flight() -> None:
    s = states(3)
    s[0].in_flight, s[1].in_flight, s[2].in_flight = 5, 1, 3
    assert order("least-busy", s, (1, 1, 1), random.Random(0)) == [1, 2, 0]


def test_latency_measures_the_unmeasured_then_prefers_the_fastest_and_explores() -> None:
    s = states(3)
    s[0].observe_latency(0.5)
    s[2].observe_latency(0.1)
    assert order("latency", s, (1, 1, 1), random.Random(0))[0] == 1  # never measured: goes first
    s[1].observe_latency(0.9)
    rng = random.Random(11)
    firsts = Counter(order("latency", s, (1, 1, 1), rng)[0] for _ in range(10_000))
    assert firsts[2] / 10_000 == pytest.approx(1 - EXPLORE, abs=0.015)
    assert firsts[0] > 0
    assert firsts[1] > 0  # the slow ones still get a chance to show they recovered


def test_ewma_follows_recent_latency() -> None:
    s = states(1)[0]
    s.observe_latency(1.0)
    for _ in range(20):
        s.observe_latency(0.1)
    assert s.ewma_s == pytest.approx(0.1, abs=0.01)


async def test_admission_is_safe_under_concurrency() -> None:
    clock = Clock()
    state = target(BreakerConfig(fail_max=1, reset_timeout_s=1, half_open_max_calls=1), clock)
    lease(state).failed(FAIL)
    clock.advance(1)
    admitted: list[Lease] = []

    async def request() -> None:
        got = state.acquire()
        if isinstance(got, Lease):
            admitted.append(got)
            await asyncio.sleep(0.01)
            got.succeeded()

    await asyncio.gather(*(request() for _ in range(100)))
    assert len(admitted) == 1
    assert state.breaker.state == "closed"


def test_every_breaker_transition_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    state = target(BreakerConfig(fail_max=1, reset_timeout_s=1), clock)
    with caplog.at_level("WARNING", logger="router.resilience.breaker"):
        lease(state).failed(FAIL)
        clock.advance(1)
        lease(state).succeeded()
    transitions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("breaker ")]
    assert transitions == [
        "breaker target=p/m closed -> open",
        "breaker target=p/m open -> half-open",
        "breaker target=p/m half-open -> closed",
    ]


def test_the_ad_hoc_cap_comes_from_the_config() -> None:
    config = settings_from_dict(
        {
            "providers": {"p": {"type": "mock"}},
            "models": {"m": {"targets": [{"provider": "p", "model": "x"}]}},
            "resilience": {"max_ad_hoc_targets": 3},
        },
        {},
    ).config
    registry = registry_from_config(config, Clock())
    for i in range(10):
        registry.get("p", f"invented-{i}")
    assert len(registry) == 1 + 3
