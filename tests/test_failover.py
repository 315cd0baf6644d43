"""The failover loop through the whole app: upstreams on httpx.MockTransport, fake sleep and clock."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from providers.sse import SSEParser
from router.app import create_app
from router.config import settings_from_dict
from router.gateway.failover import Gateway
from tests.conftest import fixture_bytes
from tests.live import LiveServer

COMPLETION = fixture_bytes("openai", "completion.json")
STREAM = fixture_bytes("openai", "stream_text.sse")
FIRST_EVENT = STREAM.split(b"\n\n")[0] + b"\n\n"
Behaviour = Callable[[httpx.Request], Any]


def ok(request: httpx.Request) -> httpx.Response:
    if msgspec.json.decode(request.content).get("stream"):
        return httpx.Response(200, content=STREAM, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, content=COMPLETION, headers={"content-type": "application/json"})


def status(code: int, headers: dict[str, str] | None = None, message: str = "upstream says no") -> Behaviour:
    body = msgspec.json.encode({"error": {"message": message, "type": "x"}})
    return lambda _: httpx.Response(code, content=body, headers=headers or {})


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


async def hang(_: httpx.Request) -> httpx.Response:
    await asyncio.sleep(60)
    raise AssertionError("unreachable")


def garbage(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"{not json", headers={"content-type": "application/json"})


class Upstreams:
    """Dispatches by host (`a`, `b`, `c`), counts the calls each received."""

    def __init__(self, **behaviours: Behaviour) -> None:
        self.behaviours = behaviours
        self.calls: Counter[str] = Counter()
        self._called = asyncio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait for the calls to reach a state, rather than for a fixed time."""
        async with asyncio.timeout(10):
            while not condition():
                self._called.clear()
                await self._called.wait()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls[host] += 1
        self._called.set()
        result = self.behaviours.get(host, ok)(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx.Response)
        return result


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def config(resilience: dict[str, Any] | None = None, **model: Any) -> Any:
    return settings_from_dict(
        {
            "providers": {
                name: {"type": "openai", "base_url": f"http://{name}/v1", "api_key": f"sk-{name}"}
                for name in ("a", "b", "c")
            }
            | {"off": {"type": "openai", "api_key": ""}},
            "models": {
                "m": {"targets": [{"provider": "a", "model": "ma"}, {"provider": "b", "model": "mb"}], **model},
                "backup": {"targets": [{"provider": "c", "model": "mc"}]},
            },
            "resilience": {
                "retry": {"max_attempts": 2, "initial_backoff_s": 0.5, "max_retry_after_s": 10},
                "breaker": {"fail_max": 3, "reset_timeout_s": 30},
                "timeouts": {"attempt_s": 0.2, "first_token_s": 0.2, "total_s": 30},
            }
            | (resilience or {}),
        },
        {},
    )


class Harness:
    """The app with fake upstreams, clock and sleep. Litestar's test client runs one request at a
    time; ``live=True`` serves the app with uvicorn on loopback instead, for concurrent requests."""

    def __init__(
        self, upstreams: Upstreams, resilience: dict[str, Any] | None = None, live: bool = False, **model: Any
    ) -> None:
        self.upstreams = upstreams
        self.clock = Clock()
        self.sleeps = Sleeps()
        self.app = create_app(
            config(resilience, **model),
            transport=httpx.MockTransport(upstreams),
            clock=self.clock,
            sleep=self.sleeps,
            seed=1,
        )
        self.server: LiveServer | None = LiveServer(self.app) if live else None
        self.client: httpx.AsyncClient = AsyncTestClient(app=self.app) if not live else httpx.AsyncClient()

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    async def __aenter__(self) -> Harness:
        if self.server is not None:
            await self.server.__aenter__()
            self.client = httpx.AsyncClient(base_url=self.server.url, timeout=10)
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(None, None, None)
        if self.server is not None:
            await self.server.__aexit__()

    async def chat(self, stream: bool = False, model: str = "m") -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        return await self.client.post("/v1/chat/completions", json=body)

    async def targets(self) -> dict[str, dict[str, Any]]:
        body = (await self.client.get("/admin/targets")).json()
        return {t["target"]: t for t in body["data"]}


def answered_by(response: httpx.Response, target: str, calls: int) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-switchboard-target"] == target
    assert response.headers["x-switchboard-attempts"] == str(calls)


# ---- one failure mode at a time, streamed and not ---------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("behaviour", "calls_on_a", "waits"),
    [
        (status(500), 2, "backoff"),
        (status(503), 2, "backoff"),
        (status(529), 2, "backoff"),
        (status(429, {"retry-after-ms": "1500"}), 2, [1.5]),
        (status(429, {"retry-after": "120"}), 1, []),  # longer than max_retry_after_s: go elsewhere now
        (status(401), 1, []),
        (status(403), 1, []),
        (refuse, 2, "backoff"),
        (hang, 1, []),  # a timeout is not retried on the same target
        (garbage, 1, []),
    ],
)
async def test_a_failing_first_target_fails_over_to_the_second(
    behaviour: Behaviour, calls_on_a: int, waits: Any, stream: bool
) -> None:
    if stream and behaviour is garbage:
        behaviour = lambda _: httpx.Response(200, content=b"data: {garbage\n\n")  # noqa: E731
    async with Harness(Upstreams(a=behaviour)) as h:
        response = await h.chat(stream)
    answered_by(response, "b/mb", calls_on_a + 1)
    assert h.upstreams.calls == {"a": calls_on_a, "b": 1}
    if waits == "backoff":
        assert len(h.sleeps.waits) == 1
        assert 0.5 <= h.sleeps.waits[0] <= 1.0
    else:
        assert h.sleeps.waits == waits
    if stream:
        assert response.content.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("code", [400, 404, 413, 422])
async def test_the_clients_bad_request_goes_straight_back(code: int, stream: bool) -> None:
    async with Harness(Upstreams(a=status(code, message="bad param"))) as h:
        response = await h.chat(stream)
        targets = await h.targets()
    assert response.status_code == code
    # the upstream's message, and the request id, as every error body carries it
    assert response.json()["error"]["message"] == f"bad param (request id {response.headers['x-request-id']})"
    assert h.upstreams.calls == {"a": 1}
    assert targets["a/ma"]["consecutive_failures"] == 0


async def test_an_error_event_before_the_first_chunk_fails_over() -> None:
    early_error = b'data: {"error":{"message":"overloaded"}}\n\n'
    async with Harness(Upstreams(a=lambda _: httpx.Response(200, content=early_error))) as h:
        response = await h.chat(stream=True)
    answered_by(response, "b/mb", 3)  # an in-band error before the first chunk is retryable, like a 5xx


async def test_a_stream_that_dies_after_its_first_chunk_is_not_retried_and_charges_the_breaker() -> None:
    async def dies(_: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            yield FIRST_EVENT
            raise httpx.ReadError("connection reset")

        return httpx.Response(200, content=body())

    async with Harness(Upstreams(a=dies)) as h:
        response = await h.chat(stream=True)
        targets = await h.targets()
    assert response.status_code == 200
    events = SSEParser().feed(response.content)
    assert len(events) == 2
    assert b'"error"' in events[1].data
    assert b"[DONE]" not in response.content
    assert h.upstreams.calls == {"a": 1}
    assert targets["a/ma"]["consecutive_failures"] == 1
    assert targets["a/ma"]["in_flight"] == 0


async def test_fallback_models_follow_the_targets() -> None:
    async with Harness(Upstreams(a=status(500), b=refuse), fallbacks=["backup"]) as h:
        response = await h.chat()
    answered_by(response, "c/mc", 5)
    assert h.upstreams.calls == {"a": 2, "b": 2, "c": 1}


# ---- when everything fails --------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_all_failing_is_502_naming_every_target_and_why(stream: bool) -> None:
    async with Harness(Upstreams(a=status(503, message="a is down"), b=status(401, message="bad key sk-b"))) as h:
        response = await h.chat(stream)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_failed"
    assert "a/ma" in error["message"]
    assert "a is down" in error["message"]
    assert "b/mb" in error["message"]
    assert "rejected Switchboard's credentials (401)" in error["message"]
    assert "sk-b" not in response.text
    assert response.headers["x-switchboard-attempts"] == "3"


async def test_all_timing_out_is_504() -> None:
    async with Harness(Upstreams(a=hang, b=hang)) as h:
        response = await h.chat()
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert h.upstreams.calls == {"a": 1, "b": 1}


async def test_no_available_target_is_503_and_calls_nothing() -> None:
    async with Harness(Upstreams(a=status(500), b=status(500)), resilience={"breaker": {"fail_max": 1}}) as h:
        await h.chat()  # opens both breakers
        calls = dict(h.upstreams.calls)
        response = await h.chat()
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "no_target_available"
    assert "a/ma: skipped, circuit open" in error["message"]
    assert dict(h.upstreams.calls) == calls


async def test_rate_limits_everywhere_pass_the_retry_after_on() -> None:
    async with Harness(Upstreams(a=status(429, {"retry-after": "120"}), b=status(429, {"retry-after": "90"}))) as h:
        response = await h.chat()
    assert response.status_code == 502  # never blame the client with a 429 meant for our key
    assert response.headers["retry-after"] == "90"


async def test_an_attempt_that_cannot_start_before_the_deadline_is_not_started() -> None:
    async with Harness(Upstreams(a=hang), resilience={"timeouts": {"attempt_s": 5, "total_s": 0.2}}) as h:
        response = await h.chat()
    assert response.status_code == 504
    assert h.upstreams.calls == {"a": 1}  # b would start after the deadline


async def test_a_retry_that_would_wait_past_the_deadline_is_not_made() -> None:
    slow_retry = status(503, {"retry-after": "5"})
    async with Harness(Upstreams(a=slow_retry, b=slow_retry), resilience={"timeouts": {"total_s": 3}}) as h:
        response = await h.chat()
    assert response.status_code == 502
    assert h.upstreams.calls == {"a": 1, "b": 1}
    assert h.sleeps.waits == []


# ---- breakers through the gateway ---------------------------------------------------------------


async def test_an_open_breaker_is_skipped_until_its_probe_succeeds() -> None:
    failing = {"on": True}

    def a(request: httpx.Request) -> httpx.Response:
        return status(500)(request) if failing["on"] else ok(request)

    async with Harness(Upstreams(a=a), resilience={"retry": {"max_attempts": 1}}) as h:
        for _ in range(3):
            answered_by(await h.chat(), "b/mb", 2)
        assert (await h.targets())["a/ma"]["state"] == "open"
        answered_by(await h.chat(), "b/mb", 1)  # a skipped: no call
        assert h.upstreams.calls["a"] == 3
        failing["on"] = False
        h.clock.now += timedelta(seconds=30)
        answered_by(await h.chat(), "a/ma", 1)  # the probe
        targets = await h.targets()
    assert targets["a/ma"]["state"] == "closed"
    assert targets["a/ma"]["successes"] == 1
    assert targets["a/ma"]["failures"] == 3


async def test_half_open_lets_one_probe_through_while_others_fail_over() -> None:
    release = asyncio.Event()

    async def slow_ok(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return ok(request)

    behaviour: dict[str, Behaviour] = {"a": status(500)}
    upstreams = Upstreams(a=lambda r: behaviour["a"](r))
    res = {"retry": {"max_attempts": 1}, "breaker": {"fail_max": 1}, "timeouts": {"attempt_s": 5}}
    async with Harness(upstreams, resilience=res, live=True) as h:
        await h.chat()
        behaviour["a"] = slow_ok
        h.clock.now += timedelta(seconds=30)
        probe = asyncio.create_task(h.chat())
        await upstreams.until(lambda: upstreams.calls["a"] == 2)  # the probe is at the upstream
        others = await asyncio.gather(*(h.chat() for _ in range(20)))
        release.set()
        answered_by(await probe, "a/ma", 1)
    assert all(r.headers["x-switchboard-target"] == "b/mb" for r in others)
    assert upstreams.calls["a"] == 2  # the failure, then exactly one probe


# ---- limits ---------------------------------------------------------------------------------------


async def test_a_full_target_is_skipped_like_an_open_one() -> None:
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return ok(request)

    upstreams = Upstreams(a=slow)
    async with Harness(upstreams, resilience={"timeouts": {"attempt_s": 5}}, live=True) as h:
        h.gateway.targets.get("a", "ma").max_concurrent = 1
        first = asyncio.create_task(h.chat())
        await upstreams.until(lambda: upstreams.calls["a"] == 1)
        answered_by(await h.chat(), "b/mb", 1)
        release.set()
        answered_by(await first, "a/ma", 1)


async def test_a_full_proxy_answers_429_with_retry_after() -> None:
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return ok(request)

    res = {"max_concurrent": 2, "timeouts": {"attempt_s": 5}}
    upstreams = Upstreams(a=slow)
    async with Harness(upstreams, resilience=res, live=True) as h:
        busy = [asyncio.create_task(h.chat()) for _ in range(2)]
        await upstreams.until(lambda: upstreams.calls["a"] == 2)
        refused = await h.chat()
        release.set()
        await asyncio.gather(*busy)
        after = await h.chat()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "gateway_overloaded"
    assert after.status_code == 200


# ---- balancing ------------------------------------------------------------------------------------


async def test_weighted_strategy_spreads_requests_by_weight() -> None:
    upstreams = Upstreams()
    async with Harness(upstreams, strategy="weighted") as h:
        for _ in range(200):  # weights 1:1
            await h.chat()
    assert 70 <= upstreams.calls["a"] <= 130
    assert upstreams.calls["a"] + upstreams.calls["b"] == 200


async def test_admin_targets_reports_each_target() -> None:
    async with Harness(Upstreams(a=status(500))) as h:
        await h.chat()
        body = (await h.client.get("/admin/targets")).json()
    a = next(t for t in body["data"] if t["target"] == "a/ma")
    recent = a.pop("recent")
    assert (recent["calls"], recent["success_rate"]) == (2, 0.0)
    assert a == {
        "target": "a/ma",
        "state": "closed",
        "breaker_scope": "worker",
        "consecutive_failures": 2,
        "opened_at": None,
        "in_flight": 0,
        "ewma_latency_ms": None,
        "successes": 0,
        "failures": 2,
    }
    b = next(t for t in body["data"] if t["target"] == "b/mb")
    assert b["successes"] == 1
    assert b["ewma_latency_ms"] is not None
    assert body["in_flight"] == 0
