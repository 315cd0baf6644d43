"""Limits in Redis (``state.backend: redis``): one count for every worker and replica, and what
happens when Redis goes away (``on_state_error``) and comes back."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.config import settings_from_dict
from tests.conftest import REQUIRE_SERVICES, fixture_bytes
from tests.live import free_port
from tests.test_keys import ADMIN, bearer, config

HELLO = [{"role": "user", "content": "hi"}]


def upstream(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


@asynccontextmanager
async def replicas(tmp_path: Path, count: int, state: dict[str, Any]) -> AsyncIterator[list[AsyncTestClient[Any]]]:
    """``count`` apps on one database and one state backend, as replicas are."""
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            settings = settings_from_dict(config(tmp_path, state=state), {})
            app = create_app(settings, transport=httpx.MockTransport(upstream))
            clients.append(await stack.enter_async_context(AsyncTestClient(app=app)))
        yield clients


async def ask(http: AsyncTestClient[Any], key: str, **extra: Any) -> httpx.Response:
    return await http.post(
        "/v1/chat/completions", json={"model": "m-small", "messages": HELLO, **extra}, headers=bearer(key)
    )


async def key_everywhere(clients: list[AsyncTestClient[Any]], **fields: Any) -> str:
    created = await clients[0].post("/admin/keys", json={"name": "shared", **fields}, headers=ADMIN)
    key: str = created.json()["key"]
    for other in clients[1:]:  # each replica reloads within half a second
        deadline = time.monotonic() + 2
        while (await other.get("/v1/models", headers=bearer(key))).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    return key


async def test_three_replicas_admit_exactly_the_rpm_between_them(tmp_path: Path, redis_url: str) -> None:
    async with replicas(tmp_path, 3, {"backend": "redis", "url": redis_url}) as clients:
        key = await key_everywhere(clients, rpm=30)
        answers = [await ask(clients[i % 3], key) for i in range(45)]
        statuses = [a.status_code for a in answers]
        assert statuses.count(200) == 30
        assert statuses[:30] == [200] * 30
        assert set(statuses[30:]) == {429}
        assert answers[29].headers["x-ratelimit-remaining-requests"] == "0"
        assert answers[0].headers["x-ratelimit-limit-requests"] == "30"
        assert 1 <= int(answers[-1].headers["retry-after"]) <= 60


async def test_tokens_and_parallel_requests_are_shared_and_settled(tmp_path: Path, redis_url: str) -> None:
    async with replicas(tmp_path, 2, {"backend": "redis", "url": redis_url}) as (a, b):
        key = await key_everywhere([a, b], tpm=1000)
        first = await ask(a, key, max_tokens=900)
        assert first.status_code == 200
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100
        deadline = time.monotonic() + 2  # settlement goes to Redis off the request path
        while (second := await ask(b, key, max_tokens=900)).status_code != 200:
            assert time.monotonic() < deadline, second.text
            await asyncio.sleep(0.05)
        assert (await ask(a, key, max_tokens=990)).status_code == 429


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A Redis of this test's own, which it may stop and start again."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed; the README's Development section says how to get it"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        processes.append(subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL))  # noqa: S603
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        raise RuntimeError("redis-server did not start")

    def stop() -> None:
        for process in processes:
            process.kill()
            process.wait()
        processes.clear()

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", (start, stop)
    finally:
        stop()


async def test_redis_away_falls_back_to_local_limits_and_comes_back(tmp_path: Path, own_redis: tuple[str, Any]) -> None:
    url, (start, stop) = own_redis
    async with replicas(tmp_path, 1, {"backend": "redis", "url": url, "timeout_s": 0.2}) as (http,):
        key = await key_everywhere([http], rpm=100)
        assert (await ask(http, key)).status_code == 200
        stop()
        began = time.monotonic()
        answers = [await ask(http, key) for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5  # open: this process's own count
        assert time.monotonic() - began < 1.5  # a dead Redis is not waited for on every request
        metrics = (await http.get("/metrics")).text
        # Counted once per call that failed before Redis was marked away: the admission, and the
        # settlement and the spend charge of the request before, if they were on their way.
        errors = re.search(r"^switchboard_state_errors_total (\S+)$", metrics, re.MULTILINE)
        assert errors is not None
        assert 1.0 <= float(errors.group(1)) <= 3.0
        start()
        deadline = time.monotonic() + 5
        while True:  # once Redis answers again, the shared count is back: it saw one request
            answer = await ask(http, key)
            if answer.headers.get("x-ratelimit-remaining-requests") in {str(100 - n) for n in range(2, 10)}:
                break
            assert time.monotonic() < deadline, answer.headers
            await asyncio.sleep(0.2)


async def test_redis_away_with_on_state_error_closed_refuses(tmp_path: Path, own_redis: tuple[str, Any]) -> None:
    url, (_, stop) = own_redis
    state = {"backend": "redis", "url": url, "timeout_s": 0.2, "on_state_error": "closed"}
    async with replicas(tmp_path, 1, state) as (http,):
        key = await key_everywhere([http], rpm=100)
        assert (await ask(http, key)).status_code == 200
        stop()
        refused = await ask(http, key)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "state_unavailable"
        assert refused.headers["retry-after"] == "1"
        unlimited = (await http.post("/admin/keys", json={"name": "free"}, headers=ADMIN)).json()["key"]
        assert (await ask(http, unlimited)).status_code == 200  # no limits: Redis is not asked


async def test_concurrent_admissions_go_together_and_stay_exact(tmp_path: Path, redis_url: str) -> None:
    """Admissions asked for at once share one pipeline to Redis: still exactly the rpm (a real
    server, many requests in flight together)."""
    from tests.live import running_proxy

    master = "sk-master-concurrent-0123456789"
    path = tmp_path / "config.yaml"
    path.write_text(
        "providers: {demo: {type: mock}}\nmodels: {demo: {targets: [{provider: demo, model: echo}]}}\n"
        f"auth: {{master_key: {master}}}\ndatabase: {{url: 'sqlite:///{tmp_path / 'k.db'}'}}\n"
        f"state: {{backend: redis, url: '{redis_url}'}}\n"
    )
    with running_proxy(path, {}, tmp_path / "proxy.log") as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            created = await client.post("/admin/keys", json={"name": "c", "rpm": 30}, headers=bearer(master))
            key = created.json()["key"]
            body = {"model": "demo", "messages": HELLO}
            answers = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=body, headers=bearer(key)) for _ in range(50))
            )
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 30
    assert statuses.count(429) == 20
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in answers if a.status_code == 200)
    assert remaining == list(range(30))  # each admission saw the count the one before it left


async def test_admissions_asked_at_once_share_one_round_trip(redis_url: str) -> None:
    import secrets as random_ids

    from router.state.redis_limits import RedisLimiter

    limiter = RedisLimiter(redis_url, 1.0)
    calls: list[int] = []
    real = limiter._call

    async def counted(script: Any, keys: list[str], argv: list[Any]) -> Any:
        if script is limiter._admit:
            calls.append(len(argv[2].split("\n")))  # the admissions this call carries, a line each
        return await real(script, keys, argv)

    limiter._call = counted  # type: ignore[method-assign]
    subject = f"key:test-{random_ids.token_hex(6)}"
    try:
        answers = await asyncio.gather(
            *(limiter.admit([(subject, 5, None, None, None, "total")], 1, f"r{i}") for i in range(8))
        )
    finally:
        await limiter.close()
    assert calls == [8]
    assert [a[0] for a in answers] == [1] * 5 + [0] * 3


async def test_requests_sharing_a_client_request_id_still_count_twice(tmp_path: Path, redis_url: str) -> None:
    async with replicas(tmp_path, 1, {"backend": "redis", "url": redis_url}) as (http,):
        key = await key_everywhere([http], rpm=3)
        headers = {**bearer(key), "x-request-id": "same-id-every-time"}
        body = {"model": "m-small", "messages": HELLO}
        statuses = [(await http.post("/v1/chat/completions", json=body, headers=headers)).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


async def test_settlements_wait_for_redis_to_come_back(own_redis: tuple[str, Any]) -> None:
    """A request that ends while Redis is away keeps its settlement until Redis answers again:
    its parallel slot is given back then, not after the slot's quarter-hour expiry."""
    from router.state.redis_limits import RedisLimiter, Spec, StateUnavailable

    url, (start, stop) = own_redis
    limiter = RedisLimiter(url, 0.2)
    spec: list[Spec] = [("key:settle-test", None, None, 1, None, "total")]
    try:
        assert (await limiter.admit(spec, 1, "first"))[0] == 1
        assert (await limiter.admit(spec, 1, "second"))[0] == 0  # one in flight: the second waits
        stop()
        limiter.settle(spec, "first", 0)
        await asyncio.sleep(0.3)  # the settlement fails and is kept
        with pytest.raises(StateUnavailable):
            await limiter.admit(spec, 1, "third")
        start()
        deadline = time.monotonic() + 5
        while True:
            try:
                if (await limiter.admit(spec, 1, f"later-{time.monotonic()}"))[0] == 1:
                    break  # the slot came back, and this admission took it
            except StateUnavailable:
                pass
            assert time.monotonic() < deadline, "the kept settlement never reached Redis"
            await asyncio.sleep(0.2)
    finally:
        await limiter.close()


async def test_a_burst_leaving_the_window_at_once_is_expired_in_chunks(redis_url: str) -> None:
    """More reservations leaving the window together than Lua can unpack in one call."""
    import secrets as random_ids

    from redis.asyncio import Redis

    from router.state.redis_limits import PREFIX, RedisLimiter

    subject = f"key:burst-{random_ids.token_hex(6)}"
    base = PREFIX + subject
    client = Redis.from_url(redis_url)
    try:
        old = {f"m{i}": 0 for i in range(9000)}  # a minute and more ago
        await client.zadd(f"{base}:tok", old)  # type: ignore[arg-type,unused-ignore]
        await client.hset(f"{base}:amt", mapping=dict.fromkeys(old, 1))  # type: ignore[misc]
        await client.set(f"{base}:sum", 9000)
        limiter = RedisLimiter(redis_url, 2.0)
        try:
            answer = await limiter.admit([(subject, None, 100, None, None, "total")], 10, "fresh")
        finally:
            await limiter.close()
        assert answer[0] == 1
        assert float(await client.get(f"{base}:sum")) == 10
    finally:
        await client.delete(f"{base}:tok", f"{base}:amt", f"{base}:sum", f"{base}:req", f"{base}:par")
        await client.aclose()


# Spend in Redis: budgets exact across replicas at once, rebuilt from the database without
# counting anything twice.

PRICED: dict[str, Any] = {"pricing": {"x": {"input": 1000, "output": 1000}}}
PER_REQUEST = 16 * 1000 / 1e6  # completion.json: 9 + 7 tokens at $0.001 each


@asynccontextmanager
async def priced_replicas(tmp_path: Path, count: int, redis_url: str) -> AsyncIterator[list[AsyncTestClient[Any]]]:
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            state = {"backend": "redis", "url": redis_url}
            settings = settings_from_dict(config(tmp_path, state=state, **PRICED), {})
            app = create_app(settings, transport=httpx.MockTransport(upstream))
            clients.append(await stack.enter_async_context(AsyncTestClient(app=app)))
        yield clients


async def spend_in_redis(redis_url: str, key_id: str) -> float:
    from redis.asyncio import Redis

    from router.state.redis_limits import PREFIX

    client = Redis.from_url(redis_url)
    try:
        value = await client.hget(f"{PREFIX}key:{key_id}:spend", "total")  # type: ignore[misc]
    finally:
        await client.aclose()
    return float(value) if value is not None else -1.0


async def test_three_replicas_share_a_budget_at_once(tmp_path: Path, redis_url: str) -> None:
    """$0.05 at $0.016 a request: the fourth request is the last, whichever replica each goes to,
    with no time for any database flush (which alone would let each replica spend it)."""
    async with priced_replicas(tmp_path, 3, redis_url) as clients:
        key = await key_everywhere(clients, budget_usd=0.05)
        statuses = []
        for i in range(8):
            statuses.append((await ask(clients[i % 3], key)).status_code)
            await asyncio.sleep(0.02)  # the charge reaches Redis a few milliseconds after the answer
        assert statuses == [200] * 4 + [429] * 4
        refused = await ask(clients[1], key)
        assert refused.json()["error"]["code"] == "insufficient_quota"
        assert "spent $0.0640" in refused.json()["error"]["message"]
        key_id = key.split("-")[2]
        assert await spend_in_redis(redis_url, key_id) == pytest.approx(4 * PER_REQUEST)


async def test_a_lost_count_is_rebuilt_from_the_database_without_counting_twice(tmp_path: Path, redis_url: str) -> None:
    from redis.asyncio import Redis

    from router.state.redis_limits import PREFIX

    async with priced_replicas(tmp_path, 2, redis_url) as (a, b):
        key = await key_everywhere([a, b], budget_usd=0.08)
        key_id = key.split("-")[2]
        for http in (a, b):
            assert (await ask(http, key)).status_code == 200
        await asyncio.sleep(1.5)  # both replicas have written and read back the database
        client = Redis.from_url(redis_url)
        try:  # as a Redis restart would: the count is gone
            assert await client.delete(f"{PREFIX}key:{key_id}:spend") == 1
        finally:
            await client.aclose()
        statuses = []
        for i in range(4):
            statuses.append((await ask((a, b)[i % 2], key)).status_code)
            await asyncio.sleep(0.02)
        # seeded with the database's $0.032: two more requests reach $0.064, the third $0.08
        assert statuses == [200, 200, 200, 429]
        assert await spend_in_redis(redis_url, key_id) == pytest.approx(5 * PER_REQUEST)


async def test_a_charge_that_may_be_lost_drops_the_count_to_be_rebuilt(redis_url: str) -> None:
    import secrets as random_ids

    from redis.asyncio import Redis

    from router.state.redis_limits import PREFIX, RedisLimiter

    subject = f"key:lost-{random_ids.token_hex(6)}"
    fields = ("daily:2026-11-30", "weekly:2026-11-30", "monthly:2026-11-01", "total")
    limiter = RedisLimiter(redis_url, 1.0)
    client = Redis.from_url(redis_url)
    try:
        assert await limiter.seed(subject, dict.fromkeys(fields, 1.0))
        assert not await limiter.seed(subject, dict.fromkeys(fields, 5.0))  # a live count is kept
        limiter.charge([subject], 0.5, fields)
        await limiter.drain()
        assert float(await client.hget(f"{PREFIX}{subject}:spend", "total")) == 1.5  # type: ignore[misc]
        limiter._down_until = time.monotonic() + 60  # Redis failing: the charge may or may not land
        limiter.charge([subject], 0.25, fields)
        await limiter.drain()
        assert await client.exists(f"{PREFIX}{subject}:spend") == 1
        limiter._down_until = 0.0
        await limiter.drain()  # the next call drops the count: it is rebuilt from the database
        assert await client.exists(f"{PREFIX}{subject}:spend") == 0
        limiter.charge([subject], 0.5, fields)  # no count: left to the seed
        await limiter.drain()
        assert await client.exists(f"{PREFIX}{subject}:spend") == 0
    finally:
        await limiter.close()
        await client.delete(f"{PREFIX}{subject}:spend")
        await client.aclose()


async def test_settlements_true_up_give_back_and_undo_and_charges_add_up(redis_url: str) -> None:
    """Each settlement form against Redis itself (the packed arguments the scripts take): a known
    usage trues the reservation up, an unknown one keeps it, a cancel undoes the admission whole;
    charges in one batch to one subject add up."""
    import secrets as random_ids

    from redis.asyncio import Redis

    from router.state.redis_limits import CANCEL, PREFIX, RedisLimiter, Spec

    key, team = f"key:settle-{random_ids.token_hex(6)}", f"team:settle-{random_ids.token_hex(6)}"
    specs: list[Spec] = [(key, 10, 1000, 5, None, "total"), (team, 10, 1000, 5, None, "total")]
    limiter = RedisLimiter(redis_url, 1.0)
    client = Redis.from_url(redis_url)

    async def figures(subject: str) -> tuple[int, int, float]:
        base = PREFIX + subject
        requests, parallel = await client.zcard(f"{base}:req"), await client.zcard(f"{base}:par")
        return requests, parallel, float(await client.get(f"{base}:sum"))

    try:
        answers = [await limiter.admit(specs, 100, member) for member in ("known", "unknown", "undone")]
        assert [a[0] for a in answers] == [1, 1, 1]
        assert [int(a[3]) for a in answers] == [900, 800, 700]  # tokens left after each reservation
        limiter.settle(specs, "known", 30)  # used 130 of its 100
        limiter.settle(specs, "unknown", None)
        limiter._queue(specs, "undone", CANCEL)

        # The settlements go together, a few milliseconds later.
        async def trued_up() -> bool:
            return [await figures(key), await figures(team)] == [(2, 0, 230.0)] * 2

        await settled(trued_up)
        fields = ("daily:2026-12-01", "weekly:2026-11-30", "monthly:2026-12-01", "total")
        assert await limiter.seed(key, dict.fromkeys(fields, 0.0))
        for cost in (0.25, 0.5, 1.0):
            limiter.charge([key, team], cost, fields)  # the team has no count: left to its seed
        await limiter.drain()
        assert float(await client.hget(f"{PREFIX}{key}:spend", "daily:2026-12-01")) == 1.75  # type: ignore[misc]
        assert await client.exists(f"{PREFIX}{team}:spend") == 0
    finally:
        await limiter.close()
        for subject in (key, team):
            await client.delete(*(f"{PREFIX}{subject}:{part}" for part in ("req", "tok", "amt", "sum", "par", "spend")))
        await client.aclose()


async def settled(check: Any, within_s: float = 5.0) -> None:
    """Wait until ``check()`` (a coroutine function) is true: settlements go to Redis a few
    milliseconds after they are made."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "never settled"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def one_good_one_corrupted(
    redis_url: str, part: str, value: str
) -> AsyncIterator[tuple[Any, Any, Any, Any, str]]:
    """A limiter asked at once for two admissions: one for a sound subject (max_parallel 1), one for
    a subject whose ``part`` key holds ``value``. Yields the limiter, a Redis client, the sound
    subject's specs, the two answers (or exceptions) and the other subject's base key; every key
    is deleted afterwards."""
    import secrets as random_ids

    from redis.asyncio import Redis

    from router.state.redis_limits import PREFIX, RedisLimiter, Spec

    good, bad = f"key:good-{random_ids.token_hex(6)}", f"key:bad-{random_ids.token_hex(6)}"
    client = Redis.from_url(redis_url)
    await client.set(f"{PREFIX}{bad}:{part}", value)
    limiter = RedisLimiter(redis_url, 1.0)
    ok: list[Spec] = [(good, 10, 1000, 1, None, "total")]
    failing: list[Spec] = [(bad, 10, 1000, 5, None, "total")]
    try:
        answers = await asyncio.gather(
            limiter.admit(ok, 1, "a"), limiter.admit(failing, 1, "b"), return_exceptions=True
        )
        yield limiter, client, ok, answers, PREFIX + bad
    finally:
        await limiter.close()
        for subject in (good, bad):
            await client.delete(*(f"{PREFIX}{subject}:{kind}" for kind in ("req", "tok", "amt", "sum", "par")))
        await client.aclose()


async def test_a_failing_admission_fails_alone_and_is_undone(redis_url: str) -> None:
    """A key of the wrong type in Redis makes the script fail for the admissions that touch it:
    those get StateUnavailable (the caller's on_state_error decides) and what they wrote is undone;
    the rest of their batch is admitted, and later settlements still go through."""
    from router.state.redis_limits import StateUnavailable

    # The script fails after writing the subject's other keys.
    async with one_good_one_corrupted(redis_url, "amt", "not a hash") as (limiter, client, ok, answers, base):
        good_answer, bad_answer = answers
        assert good_answer[0] == 1
        assert isinstance(bad_answer, StateUnavailable)
        assert limiter.errors == 1
        # In the same settlement call as the failed one's undoing, which fails in Redis at its
        # token amounts (after taking back the rest).
        limiter.settle(ok, "a", 0)

        async def undone() -> bool:
            counts = [await client.zcard(f"{base}:{part}") for part in ("req", "par", "tok")]
            return counts == [0, 0, 0]

        await settled(undone)
        await settled(lambda: limiter_admits(limiter, ok))  # max_parallel 1: the slot came back
        assert limiter.errors == 2


async def test_any_other_error_in_the_script_fails_the_whole_call(redis_url: str) -> None:
    """Only a key of the wrong type fails an admission alone; any other error (READONLY after a
    failover, OOM, here a count that is not a number) fails the call, handled as Redis away."""
    from router.state.redis_limits import StateUnavailable

    async with one_good_one_corrupted(redis_url, "sum", "not a number") as (*_, answers, _):
        assert all(isinstance(a, StateUnavailable) for a in answers)


async def limiter_admits(limiter: Any, specs: Any) -> bool:
    import secrets as random_ids

    return bool((await limiter.admit(specs, 1, random_ids.token_hex(6)))[0] == 1)


async def test_an_answer_that_is_not_the_scripts_fails_its_batch_and_undoes_it(redis_url: str) -> None:
    from router.state.redis_limits import RedisLimiter, Spec, StateUnavailable

    limiter = RedisLimiter(redis_url, 1.0)
    cancelled: list[str] = []
    limiter._queue = lambda specs, member, delta: cancelled.append(f"{member} {delta}")  # type: ignore[method-assign]

    async def strange(script: Any, keys: list[str], argv: list[Any]) -> Any:
        return ["1 5 0 -1 0 ", "1 4 0 -1 0 "]  # text, as a client decoding answers would give

    limiter._call = strange  # type: ignore[method-assign]
    spec: list[Spec] = [("key:strange", 10, None, None, None, "total")]
    try:
        answers = await asyncio.wait_for(
            asyncio.gather(limiter.admit(spec, 1, "m1"), limiter.admit(spec, 1, "m2"), return_exceptions=True), 2
        )
    finally:
        await limiter.close()
    assert all(isinstance(a, StateUnavailable) and "unexpected answer" in str(a) for a in answers)
    assert cancelled == ["m1 x", "m2 x"]


async def test_closing_before_a_batch_is_sent_leaves_nobody_waiting(redis_url: str) -> None:
    from router.state.redis_limits import RedisLimiter, Spec, StateUnavailable

    limiter = RedisLimiter(redis_url, 1.0)
    spec: list[Spec] = [("key:closing", 10, None, None, None, "total")]
    waiting = asyncio.ensure_future(limiter.admit(spec, 1, "m"))
    await asyncio.sleep(0)  # asked for
    await asyncio.sleep(0)  # the batch's task made, not yet run
    assert limiter._settling
    await limiter.close()
    with pytest.raises(StateUnavailable):
        await asyncio.wait_for(waiting, 2)
