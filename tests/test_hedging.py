"""Hedged requests (``models.<alias>.hedge``): when the first target is slow to answer, the next
starts beside it and the first to answer wins; the other is cancelled at once, its connection
closed and its breaker not charged; a budget caps the share of hedged requests. The real server,
the openai SDK, a fake upstream on loopback whose models answer after a set delay."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import msgspec
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from router.api.decode import decode_call
from router.app import create_app
from router.config import ConfigError, HedgeConfig, settings_from_dict
from router.gateway import hedging
from router.gateway.hedging import HedgeBudget, hedge_after
from router.gateway.outcome import Exchange
from router.resilience.breaker import Breaker
from router.resilience.targets import TargetState
from router.telemetry.spans import Tracing
from tests.conftest import fixture_bytes
from tests.fakes import serving_chat
from tests.live import LiveServer

DELAYS = {"slow": 3.0, "medium": 0.4, "fast": 0.0, "steady": 0.3}
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@dataclass
class Upstream:
    port: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    cancelled: dict[str, float] = field(default_factory=dict)  # model → when its client went away


async def _answer(up: Upstream, request: web.Request) -> web.StreamResponse:
    body = msgspec.json.decode(await request.read())
    model = body["model"]
    up.calls[model] += 1
    if model == "bad":
        return web.json_response({"error": {"message": "down", "type": "server_error"}}, status=503)
    try:
        await asyncio.sleep(DELAYS[model])
    except asyncio.CancelledError:
        up.cancelled[model] = time.monotonic()
        raise
    if not body.get("stream"):
        return web.Response(body=fixture_bytes("openai", "completion.json"), content_type="application/json")
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(fixture_bytes("openai", "stream_text.sse"))
    await response.write_eof()
    return response


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    with serving_chat(partial(_answer, up)) as port:
        up.port = port
        yield up


def _config(port: int, budget_pct: float = 100) -> dict[str, Any]:
    hedge = {"after_s": 0.15, "max_extra": 1, "budget_pct": budget_pct}
    return {
        "providers": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "api_key": "sk-up"}},
        "models": {
            "hedged": {
                "targets": [{"provider": "up", "model": "slow"}, {"provider": "up", "model": "fast"}],
                "hedge": hedge,
            },
            "first-wins": {
                "targets": [{"provider": "up", "model": "medium"}, {"provider": "up", "model": "slow"}],
                "hedge": hedge,
            },
            "fails-over": {
                "targets": [{"provider": "up", "model": "bad"}, {"provider": "up", "model": "fast"}],
                "hedge": hedge,
            },
            "budgeted": {
                "targets": [{"provider": "up", "model": "steady"}, {"provider": "up", "model": "fast"}],
                "hedge": hedge | {"budget_pct": 10},
            },
        },
        "resilience": {"retry": {"max_attempts": 1}, "breaker": {"fail_max": 1}},
    }


@dataclass
class Proxy:
    client: openai.AsyncOpenAI
    http: httpx.AsyncClient
    spans: InMemorySpanExporter


@pytest.fixture
async def proxy(upstream: Upstream) -> AsyncIterator[Proxy]:
    upstream.calls.clear()
    upstream.cancelled.clear()
    spans = InMemorySpanExporter()
    app = create_app(settings_from_dict(_config(upstream.port)), tracing=Tracing(SimpleSpanProcessor(spans)))
    async with (
        LiveServer(app) as server,
        openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sk-any", max_retries=0) as client,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        yield Proxy(client, http, spans)


async def _ask(proxy: Proxy, model: str, stream: bool) -> tuple[Mapping[str, str], str]:
    raw = await proxy.client.chat.completions.with_raw_response.create(model=model, messages=HI, stream=stream)
    parsed: Any = raw.parse()
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
    else:
        text = parsed.choices[0].message.content or ""
    return raw.headers, text


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_a_slow_first_target_is_overtaken_by_the_hedge(proxy: Proxy, upstream: Upstream, stream: bool) -> None:
    started = time.monotonic()
    headers, text = await _ask(proxy, "hedged", stream)
    answered = time.monotonic()
    assert text
    assert answered - started < 1.0  # the slow target would have taken 3 s
    assert headers["x-switchboard-target"] == "up/fast"
    assert headers["x-switchboard-attempts"] == "2"
    for _ in range(50):  # the loser's connection closed at once
        if "slow" in upstream.cancelled:
            break
        await asyncio.sleep(0.02)
    assert upstream.cancelled["slow"] - answered < 0.5
    targets = {t["target"]: t for t in (await proxy.http.get("/admin/targets")).json()["data"]}
    assert targets["up/slow"]["state"] == "closed"  # not charged (fail_max is 1)
    assert targets["up/slow"]["consecutive_failures"] == 0
    metrics = (await proxy.http.get("/metrics")).text
    assert _metric(metrics, "switchboard_hedges_total", alias="hedged", winner="hedge") == 1
    calls = [
        line
        for line in metrics.splitlines()
        if line.startswith("gen_ai_client_operation_duration_seconds_count") and 'error_type="overtaken"' in line
    ]
    assert len(calls) == 1  # the overtaken attempt is in the metrics, as overtaken
    clients = [s for s in proxy.spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert len(clients) == 2  # both attempts are in the trace
    assert {s.attributes.get("error.type") for s in clients if s.attributes} >= {"overtaken"}


async def test_the_first_target_wins_when_it_answers_before_the_hedge(proxy: Proxy, upstream: Upstream) -> None:
    headers, _ = await _ask(proxy, "first-wins", True)
    assert headers["x-switchboard-target"] == "up/medium"  # 0.4 s, the hedge (3 s) started at 0.15 s
    assert headers["x-switchboard-attempts"] == "2"
    await asyncio.sleep(0.2)
    assert "slow" in upstream.cancelled
    metrics = (await proxy.http.get("/metrics")).text
    assert _metric(metrics, "switchboard_hedges_total", alias="first-wins", winner="first") == 1


async def test_a_failure_in_a_hedged_alias_fails_over_as_without_hedging(proxy: Proxy) -> None:
    headers, text = await _ask(proxy, "fails-over", True)
    assert text
    assert headers["x-switchboard-target"] == "up/fast"
    assert headers["x-switchboard-attempts"] == "2"
    metrics = (await proxy.http.get("/metrics")).text
    assert _metric(metrics, "switchboard_hedges_total", alias="fails-over", winner="first") == 0  # no hedge


async def test_the_hedge_budget_caps_the_share_of_hedged_requests(proxy: Proxy, upstream: Upstream) -> None:
    """budget_pct 10: one hedge to start with, then one per ten requests; the rest wait."""
    targets = [(await _ask(proxy, "budgeted", False))[0]["x-switchboard-target"] for _ in range(5)]
    assert targets.count("up/fast") == 1
    assert upstream.calls["fast"] == 1
    assert upstream.calls["steady"] == 5
    metrics = (await proxy.http.get("/metrics")).text
    assert _metric(metrics, "switchboard_hedges_total", alias="budgeted", winner="hedge") == 1


def test_a_hedge_needs_a_delay() -> None:
    def config(hedge: dict[str, float]) -> dict[str, Any]:
        return {
            "providers": {"up": {"type": "mock"}},
            "models": {"m": {"targets": [{"provider": "up", "model": "x"}], "hedge": hedge}},
        }

    with pytest.raises(ConfigError, match=re.escape("models.m.hedge: needs after_s, after_percentile")):
        settings_from_dict(config({"max_extra": 1}))
    with pytest.raises(ConfigError, match=re.escape("models.m.hedge.after_percentile")):
        settings_from_dict(config({"after_percentile": 100}))


def test_after_percentile_uses_the_targets_observed_times_once_there_are_enough() -> None:
    state = TargetState("p/m", Breaker("p/m", settings_from_dict({}).config.resilience.breaker))
    hedge = HedgeConfig(after_percentile=90, after_s=5.0)
    for seconds in [0.1] * 10:
        state.observe_latency(seconds)
    assert hedge_after(hedge, state) == 5.0  # too few samples: after_s
    for n in range(100):
        state.observe_latency(n / 100)
    assert hedge_after(hedge, state) == pytest.approx(0.89)  # 110 samples (the latest 128): the 99th in order
    assert hedge_after(HedgeConfig(after_percentile=50), TargetState("p/n", state.breaker)) is None


def test_the_budget_earns_a_share_of_a_hedge_per_request() -> None:
    budget = HedgeBudget(25)
    budget.earn()
    assert budget.spend()  # the one it starts with
    spent = 0
    for _ in range(100):
        budget.earn()
        spent += budget.spend()
    assert spent == 25


async def test_a_client_that_leaves_as_the_race_is_settled_leaks_no_winner(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the client left while the loser unwound; the winner's lease (a slot, a probe)
    and its upstream stream were held for good."""
    settle = hedging.Race.cancel_rest

    async def leave_meanwhile(self: hedging.Race[Any, Any], discard: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self):  # a winner is in, a loser still runs: the client leaves now
            asyncio.get_running_loop().call_soon(task.cancel)
        await settle(self, discard)

    monkeypatch.setattr(hedging.Race, "cancel_rest", leave_meanwhile)
    app = create_app(settings_from_dict(_config(upstream.port)))
    async with app.lifespan():
        gateway = app.state.gateway
        call = decode_call(msgspec.json.encode({"model": "hedged", "stream": True, "messages": HI}))
        exchange = Exchange(app.state.outcomes, "req-1", stream=True)
        with pytest.raises(asyncio.CancelledError):
            await gateway.open_stream(call, exchange)
        await asyncio.sleep(0.2)
        assert {state.label: state.in_flight for state in gateway.targets._declared.values()} == {
            "up/slow": 0,
            "up/fast": 0,
            "up/medium": 0,
            "up/steady": 0,
            "up/bad": 0,
        }
