"""Breakers shared through Redis (``resilience.breaker.shared``): several processes' registries,
here several in one process on a real Redis, open, probe and close each target together; Redis
going away leaves each breaker working alone until it comes back. Then two real Switchboard
processes: failures through one open the breaker the other shows."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from providers.errors import UpstreamServerError
from router.cli import main
from router.config import BreakerConfig, ConfigError, settings_from_dict
from router.resilience.breaker import Breaker
from router.resilience.targets import Lease, TargetRegistry, TargetState
from router.state.redis_breakers import PROBE_PREFIX, PROBE_TTL_S, STATE_PREFIX, BreakerSync
from tests.live import running_proxy
from tests.test_resilience import Clock
from tests.test_shared_limits import own_redis  # noqa: F401 - the fixture

FAIL = UpstreamServerError("boom", upstream_status=503)


@dataclass
class Member:
    """One worker's view: its sync with the fleet and its state of the shared target."""

    sync: BreakerSync
    registry: TargetRegistry
    target: TargetState


@asynccontextmanager
async def fleet(
    url: str, count: int, cfg: BreakerConfig, clock: Clock, timeout_s: float = 1.0, probe_ttl_s: float = PROBE_TTL_S
) -> AsyncIterator[list[Member]]:
    """``count`` processes' registries sharing one target (a name of this test's own) through Redis."""
    provider = "p" + secrets.token_hex(4)
    members: list[Member] = []
    try:
        for _ in range(count):
            peers = BreakerSync(url, timeout_s, probe_ttl_s)
            registry = TargetRegistry(lambda p, m: cfg, lambda p, m: None, clock, peers=peers)
            target = registry.declare(provider, "m")
            await peers.start(registry)
            members.append(Member(peers, registry, target))
        yield members
    finally:
        for member in members:
            await member.sync.close()
        client = Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            await client.delete(STATE_PREFIX + f"{provider}/m", PROBE_PREFIX + f"{provider}/m")
        except Exception:  # noqa: S110 - the Redis of a test that stopped it
            pass
        finally:
            await client.aclose()


async def until(check: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.01)


def states(members: list[Member]) -> list[str]:
    return [m.target.breaker.state for m in members]


def lease(target: TargetState) -> Lease:
    got = target.acquire()
    assert isinstance(got, Lease), got
    return got


async def trip(members: list[Member], clock: Clock, fail_max: int) -> None:
    """Member 0 sees ``fail_max`` failures; every member is open soon after."""
    for _ in range(fail_max):
        lease(members[0].target).failed(FAIL)
    await until(lambda: states(members) == ["open"] * len(members))


async def the_probes(members: list[Member], seconds: float) -> list[tuple[int, Lease]]:
    """Requests reaching every member for ``seconds``: which members let one through."""
    admitted: list[tuple[int, Lease]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for i, member in enumerate(members):
            got = member.target.acquire()
            if isinstance(got, Lease):
                admitted.append((i, got))
        await asyncio.sleep(0.01)
    return admitted


async def test_one_opens_and_every_process_follows(redis_url: str) -> None:
    clock = Clock()
    async with fleet(redis_url, 3, BreakerConfig(fail_max=3, reset_timeout_s=30), clock) as members:
        for _ in range(2):
            lease(members[0].target).failed(FAIL)
        await asyncio.sleep(0.1)
        assert states(members) == ["closed"] * 3  # failures are counted by each process: nothing to share yet
        lease(members[0].target).failed(FAIL)
        await until(lambda: states(members) == ["open"] * 3)
        assert {m.target.breaker.opened_at for m in members} == {clock.now}
        assert [m.target.acquire() for m in members] == ["circuit open"] * 3
        for member in members:
            snapshot = member.target.snapshot()
            assert (snapshot["state"], snapshot["breaker_scope"], snapshot["consecutive_failures"]) == (
                "open",
                "shared",
                3,
            )
        # Counted once, where it happened: the transitions metric adds up across processes.
        assert [m.registry.transitions() for m in members] == [[(members[0].target.label, "open", 1)], [], []]


async def test_after_the_reset_timeout_one_probe_for_the_fleet_and_its_success_closes_all(redis_url: str) -> None:
    clock = Clock()
    async with fleet(redis_url, 3, BreakerConfig(fail_max=1, reset_timeout_s=10), clock) as members:
        await trip(members, clock, 1)
        clock.advance(9.9)
        assert await the_probes(members, 0.3) == []
        assert states(members) == ["open"] * 3
        clock.advance(0.1)
        probes = await the_probes(members, 1.5)  # past the second ask of each process
        assert len(probes) == 1, probes
        winner, probe = probes[0]
        assert states(members) == ["half-open"] * 3  # one picture while the probe is out
        probe.succeeded()
        await until(lambda: states(members) == ["closed"] * 3)
        assert all(isinstance(m.target.acquire(), Lease) for m in members)
        counted = [{state: n for _, state, n in m.registry.transitions()} for m in members]
        assert counted[winner] == {"half-open": 1, "closed": 1} | ({"open": 1} if winner == 0 else {})
        assert all("closed" not in c and "half-open" not in c for i, c in enumerate(counted) if i != winner)


async def test_a_failed_probe_reopens_every_process_for_a_new_reset_timeout(redis_url: str) -> None:
    clock = Clock()
    async with fleet(redis_url, 3, BreakerConfig(fail_max=1, reset_timeout_s=10), clock) as members:
        await trip(members, clock, 1)
        clock.advance(10)
        probes = await the_probes(members, 0.5)
        assert len(probes) == 1, probes
        clock.advance(2)  # the probe took two seconds to fail
        probes[0][1].failed(FAIL)
        await until(lambda: states(members) == ["open"] * 3)
        assert {m.target.breaker.opened_at for m in members} == {clock.now}
        clock.advance(9)
        assert await the_probes(members, 0.3) == []  # open again, for the whole reset timeout
        clock.advance(1)
        assert len(await the_probes(members, 1.2)) == 1


async def test_the_probe_of_a_process_that_died_lapses_and_another_probes(redis_url: str) -> None:
    clock = Clock()
    cfg = BreakerConfig(fail_max=1, reset_timeout_s=10)
    async with fleet(redis_url, 3, cfg, clock, probe_ttl_s=0.6) as members:
        await trip(members, clock, 1)
        clock.advance(10)
        probes = await the_probes(members, 0.5)
        assert len(probes) == 1, probes
        winner = probes[0][0]
        survivors = [m for i, m in enumerate(members) if i != winner]
        await asyncio.sleep(0.7)
        assert await the_probes(survivors, 1.2) == []  # a probe call in flight keeps the probe past its expiry
        await members[winner].sync.close()  # the process dies with its probe in flight
        later = await the_probes(survivors, 2.5)
        assert len(later) == 1, later
        later[0][1].succeeded()
        await until(lambda: states(survivors) == ["closed"] * 2)


async def test_a_process_that_starts_later_takes_the_fleets_picture(redis_url: str) -> None:
    clock = Clock()
    cfg = BreakerConfig(fail_max=1, reset_timeout_s=10)
    async with fleet(redis_url, 1, cfg, clock) as (first,):
        lease(first.target).failed(FAIL)
        await asyncio.sleep(0.2)
        label = first.target.label
        late = BreakerSync(redis_url, 1.0)
        registry = TargetRegistry(lambda p, m: cfg, lambda p, m: None, clock, peers=late)
        target = registry.declare(*label.split("/"))
        try:
            await late.start(registry)
            assert target.breaker.state == "open"  # at once: start() returns with the picture
            assert target.breaker.opened_at == clock.now
            adhoc = registry.get(first.target.label.split("/")[0], "other")  # a target created on demand
            assert adhoc.breaker.state == "closed"
        finally:
            await late.close()


def test_a_shared_breaker_never_probes_before_the_fleet_grants_it() -> None:
    """Without Redis: the breaker's side of the protocol, on a fake fleet."""

    class Fleet:
        online = True

        def __init__(self) -> None:
            self.asked: list[tuple[str, float, float]] = []
            self.announced: list[tuple[str, str, str]] = []
            self.granted = False

        def announce(self, label: str, old: str, new: str, opened_at: float | None, failures: int) -> None:
            self.announced.append((label, old, new))

        def want_probe(self, label: str, now: float, reset_timeout_s: float) -> None:
            self.asked.append((label, now, reset_timeout_s))

        def may_probe(self, label: str) -> bool:
            return self.granted

        def watch(self, label: str) -> None:
            pass

    clock, peers = Clock(), Fleet()
    target = TargetState("p/m", Breaker("p/m", BreakerConfig(fail_max=1, reset_timeout_s=5), clock, peers))
    lease(target).failed(FAIL)
    assert peers.announced == [("p/m", "closed", "open")]
    clock.advance(5)
    assert [target.acquire() for _ in range(3)] == ["circuit open"] * 3
    assert peers.asked == [("p/m", clock.now.timestamp(), 5.0)]  # asked once, not per request
    target.breaker.apply("half-open", clock.now, 1, 7, mine=True)
    assert target.breaker.transitions == {"open": 1, "half-open": 1}
    assert target.acquire() == "circuit half-open, probe in flight"  # not granted to this process
    peers.granted = True
    probe = lease(target)
    probe.succeeded()
    assert peers.announced[-1] == ("p/m", "half-open", "closed")
    target.breaker.apply("open", clock.now, 4, 8)  # another process's trip: neither counted nor announced
    assert target.breaker.transitions == {"open": 1, "half-open": 1, "closed": 1}
    assert len(peers.announced) == 2
    assert (target.breaker.state, target.breaker.failures) == ("open", 4)
    peers.online = False
    clock.advance(5)
    assert isinstance(target.acquire(), Lease)  # the fleet out of reach: this breaker decides alone


async def test_redis_away_leaves_each_breaker_working_alone_and_the_fleet_comes_back(
    own_redis: tuple[str, Any],  # noqa: F811 - the fixture imported above
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, (start, stop) = own_redis
    clock = Clock()
    caplog.set_level(logging.WARNING, "router.state.redis_breakers")
    async with fleet(url, 2, BreakerConfig(fail_max=2, reset_timeout_s=10), clock, timeout_s=0.2) as (a, b):
        assert (a.sync.online, b.sync.online) == (True, True)
        stop()
        await until(lambda: not a.sync.online and not b.sync.online)
        began = time.monotonic()
        lease(b.target).failed(FAIL)
        lease(b.target).failed(FAIL)
        assert (b.target.breaker.state, a.target.breaker.state) == ("open", "closed")  # alone: b's own breaker
        assert b.target.snapshot()["breaker_scope"] == "worker"
        clock.advance(10)
        probe = lease(b.target)  # probes at once, as an unshared breaker would
        assert b.target.acquire() == "circuit half-open, probe in flight"
        probe.succeeded()
        assert b.target.breaker.state == "closed"
        assert time.monotonic() - began < 0.1  # nothing waited on Redis
        await asyncio.sleep(1.5)  # reconnections fail meanwhile, and are not logged each time
        start()
        await until(lambda: a.sync.online and b.sync.online, within=5)
        assert a.sync.errors >= 2
        messages = [r.getMessage() for r in caplog.records]
        assert sum("not answering" in m for m in messages) == 2  # once for each process
        assert sum("answers again" in m for m in messages) == 2
        lease(a.target).failed(FAIL)
        lease(a.target).failed(FAIL)
        await until(lambda: b.target.breaker.state == "open")
        assert b.target.snapshot()["breaker_scope"] == "shared"


def test_shared_breakers_need_the_redis_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"providers": {"p": {"type": "mock"}}, "models": {"m": {"targets": [{"provider": "p", "model": "x"}]}}}
    with pytest.raises(ConfigError) as refused:
        settings_from_dict({**base, "resilience": {"breaker": {"shared": True}}}, {})
    assert refused.value.errors == [
        "resilience.breaker.shared: breakers are shared through the state backend, and state.backend is 'memory': "
        "set state.backend: redis (and state.url), or leave shared off (breakers per worker)"
    ]
    shared = {**base, "resilience": {"breaker": {"shared": True}}, "state": {"backend": "redis"}}
    assert settings_from_dict(shared, {}).config.resilience.breaker.shared
    per_provider = {**base, "providers": {"p": {"type": "mock", "breaker": {"shared": True}}}}
    with pytest.raises(ConfigError, match=r"providers\.p\.breaker\.shared: unknown key"):
        settings_from_dict(per_provider, {})
    path = tmp_path / "config.yaml"
    path.write_text(
        "providers: {p: {type: mock}}\nmodels: {m: {targets: [{provider: p, model: x}]}}\n"
        "resilience: {breaker: {shared: true}}\n"
    )
    assert main(["check", "--config", str(path)]) == 2
    assert "resilience.breaker.shared: breakers are shared through the state backend" in capsys.readouterr().err


E2E = """\
providers: {{{provider}: {{type: mock, failure_rate: 1.0}}}}
models:
  flaky: {{targets: [{{provider: {provider}, model: echo}}]}}
resilience:
  retry: {{max_attempts: 1}}
  breaker: {{shared: true, fail_max: 2, reset_timeout_s: 60}}
state: {{backend: redis, url: "{redis}"}}
"""


async def test_two_processes_failures_through_one_open_the_breaker_the_other_shows(
    tmp_path: Path, redis_url: str
) -> None:
    provider = "flaky" + secrets.token_hex(4)
    label = f"{provider}/echo"
    config = tmp_path / "config.yaml"
    config.write_text(E2E.format(provider=provider, redis=redis_url))
    body = {"model": "flaky", "messages": [{"role": "user", "content": "hi"}]}
    try:
        with (
            running_proxy(config, {}, tmp_path / "a.log") as a,
            running_proxy(config, {}, tmp_path / "b.log") as b,
        ):
            async with httpx.AsyncClient(timeout=10) as http:

                async def target(base: str) -> dict[str, Any]:
                    data = (await http.get(f"{base}/admin/targets")).json()["data"]
                    found: dict[str, Any] = next(t for t in data if t["target"] == label)
                    return found

                assert (await target(b))["state"] == "closed"
                for _ in range(2):
                    assert (await http.post(f"{a}/v1/chat/completions", json=body)).status_code == 502
                deadline = time.monotonic() + 2
                while (seen := await target(b))["state"] != "open":
                    assert time.monotonic() < deadline, seen
                    await asyncio.sleep(0.05)
                assert seen["breaker_scope"] == "shared"
                assert seen["consecutive_failures"] == 2
                assert seen["opened_at"] == (await target(a))["opened_at"]
                assert (seen["failures"], seen["in_flight"]) == (0, 0)  # b's own calls: none
                refused = await http.post(f"{b}/v1/chat/completions", json=body)
                assert refused.status_code == 503
                assert "circuit open" in refused.text  # b did not call the target
                transitions = f'switchboard_breaker_transitions_total{{state="open",target="{label}"}} 1.0'
                assert transitions in (await http.get(f"{a}/metrics")).text
                assert "switchboard_breaker_transitions_total{" not in (await http.get(f"{b}/metrics")).text
    finally:
        client = Redis.from_url(redis_url)
        await client.delete(STATE_PREFIX + label, PROBE_PREFIX + label)
        await client.aclose()
