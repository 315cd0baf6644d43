"""Keep-alive that keeps failover (``streams.keepalive_s``): SSE comments while a stream waits for
its first event or sits silent, so a load balancer's idle time-out does not cut it, with failover
still going on behind them; if every target fails, one error event in the client API's shape.

The real server, driven by the official SDKs, behind an idle-cutting TCP proxy standing in for the
load balancer, in front of a fake upstream that thinks (answers late) or pauses mid-answer."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial

import anthropic
import httpx
import msgspec
import openai
import pytest
from aiohttp import web

from router.app import create_app
from router.config import ConfigError, settings_from_dict
from tests.conftest import fixture_bytes
from tests.fakes import serving_chat
from tests.idle_proxy import IdleCuttingProxy
from tests.live import LiveServer

LB_IDLE_S = 0.6  # the stand-in load balancer's idle time-out
THINK_S = 1.5  # how long the thinking model takes to its first event: longer than LB_IDLE_S
KEEPALIVE_S = 0.2
HI = b'[{"role":"user","content":"hi"}]'


def _body(model: str) -> bytes:
    return b'{"model":"%s","stream":true,"messages":%s}' % (model.encode(), HI)


EVENTS = [e + b"\n\n" for e in fixture_bytes("openai", "stream_text.sse").split(b"\n\n") if e]
TEXT = "".join(
    c["delta"].get("content") or ""
    for e in EVENTS
    if e.startswith(b"data: {")
    for c in msgspec.json.decode(e[6:])["choices"]
)


@dataclass
class Upstream:
    port: int
    calls: Counter[str]
    gone: list[str]  # models whose request the proxy abandoned


async def _answer(calls: Counter[str], gone: list[str], request: web.Request) -> web.StreamResponse:
    body = msgspec.json.decode(await request.read())
    model = body["model"]
    calls[model] += 1
    if model == "fail-late":  # a provider that thinks, then fails: failover must go on unseen
        await asyncio.sleep(THINK_S / 2)
        return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=503)
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    try:
        if model == "think":
            await asyncio.sleep(THINK_S)
        for n, event in enumerate(EVENTS):
            await response.write(event)
            if model == "pause" and n == 1:
                await asyncio.sleep(THINK_S)
    except asyncio.CancelledError:
        gone.append(model)
        raise
    await response.write_eof()
    return response


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    calls: Counter[str] = Counter()
    gone: list[str] = []
    with serving_chat(partial(_answer, calls, gone)) as port:
        yield Upstream(port, calls, gone)


def _config(port: int, keepalive: str) -> dict[str, object]:
    up = {"type": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "api_key": "sk-up", "responses_api": "translate"}
    return {
        "providers": {"up": up},
        "models": {
            "think": {"targets": [{"provider": "up", "model": "think"}]},
            "pause": {"targets": [{"provider": "up", "model": "pause"}]},
            "fast": {"targets": [{"provider": "up", "model": "fast"}]},
            "late-failover": {
                "targets": [{"provider": "up", "model": "fail-late"}, {"provider": "up", "model": "fast"}]
            },
            "all-fail": {"targets": [{"provider": "up", "model": "fail-late"}]},
        },
        "streams": {"keepalive_s": None if keepalive == "off" else float(keepalive)},
        "resilience": {
            "retry": {"max_attempts": 1},
            "timeouts": {"first_token_s": 10, "idle_s": 10, "total_s": 30},
        },
    }


@pytest.fixture
async def proxy(upstream: Upstream, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Switchboard with ``keepalive_s`` (the test's param, or 0.3), behind the idle-cutting proxy."""
    keepalive = getattr(request, "param", str(KEEPALIVE_S))
    app = create_app(settings_from_dict(_config(upstream.port, keepalive)))
    async with LiveServer(app) as server, IdleCuttingProxy(server.port, LB_IDLE_S) as lb:
        yield lb.url


def _client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-any", max_retries=0, timeout=30)


async def _chat_text(base: str, model: str) -> str:
    async with _client(base) as client:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        parts: list[str] = []
        async for chunk in stream:
            parts.extend(choice.delta.content or "" for choice in chunk.choices)
    return "".join(parts)


@pytest.mark.parametrize("proxy", ["off"], indirect=True)
async def test_without_keep_alive_the_load_balancer_cuts_a_model_that_thinks(proxy: str) -> None:
    """The control: the stand-in load balancer really does cut a silent stream."""
    with pytest.raises(openai.APIConnectionError):
        await _chat_text(proxy, "think")


@pytest.mark.parametrize("model", ["think", "pause"])
async def test_keep_alive_carries_a_silent_stream_past_the_load_balancer(proxy: str, model: str) -> None:
    """A model that thinks longer than the load balancer's idle time-out before its first event,
    or pauses that long mid-answer: the whole answer arrives."""
    assert await _chat_text(proxy, model) == TEXT


async def test_the_comments_are_sse_comments_and_only_during_silences(proxy: str) -> None:
    body = _body("pause")
    async with httpx.AsyncClient(base_url=proxy, timeout=30) as client:
        answer = await client.post("/v1/chat/completions", content=body)
        fast = await client.post("/v1/chat/completions", content=body.replace(b"pause", b"fast"))
    raw = answer.content
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert raw.count(b": keep-alive\n\n") >= int(THINK_S / KEEPALIVE_S) - 2
    assert raw.startswith(b"data: {")  # the pause came after the first event
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b": keep-alive" not in fast.content  # nothing added to a stream that never waited


async def test_failover_goes_on_behind_the_comments(proxy: str, upstream: Upstream) -> None:
    """The first target thinks past the keep-alive interval and then fails: the client, already
    holding a 200 and comments, gets the second target's answer as if nothing happened."""
    before = upstream.calls["fail-late"]
    async with httpx.AsyncClient(base_url=proxy, timeout=30) as client:
        raw = await client.post("/v1/chat/completions", content=_body("late-failover"))
    assert raw.status_code == 200
    assert raw.content.startswith(b": keep-alive\n\n")  # committed before any target answered
    assert raw.content.endswith(b"data: [DONE]\n\n")
    assert upstream.calls["fail-late"] == before + 1
    assert await _chat_text(proxy, "late-failover") == TEXT


async def test_when_every_target_fails_behind_the_comments_the_sdk_raises(proxy: str) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIError) as raised:
        await _chat_text(proxy, "all-fail")
    assert "failed" in str(raised.value.message).lower() or "overloaded" in str(raised.value.message)
    assert time.monotonic() - started > LB_IDLE_S  # it really went through the load balancer's silence
    async with httpx.AsyncClient(base_url=proxy, timeout=30) as client:
        raw = await client.post("/v1/chat/completions", content=_body("all-fail"))
    events = [e for e in raw.content.split(b"\n\n") if e and not e.startswith(b":")]
    assert len(events) == 1  # one error event, no [DONE]
    assert msgspec.json.decode(events[0][6:])["error"]["code"]


async def test_responses_stream_fails_with_response_failed_behind_the_comments(proxy: str) -> None:
    """The Responses API's stream helper needs ``response.created`` first: it gets it, then
    ``response.failed``."""
    async with _client(proxy) as client:
        async with client.responses.stream(model="all-fail", input="hi") as stream:
            kinds = [event.type async for event in stream]
        assert kinds == ["response.created", "response.in_progress", "response.failed"]
        thinking = await client.responses.create(model="think", input="hi", stream=True)
        text = "".join([e.delta async for e in thinking if e.type == "response.output_text.delta"])
    assert text == TEXT


async def test_messages_stream_fails_with_anthropics_error_event_behind_the_comments(proxy: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=proxy, api_key="sk-any", max_retries=0) as client:
        failing = client.messages.stream(model="all-fail", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.APIStatusError):
            async with failing as stream:
                await stream.get_final_text()
        async with client.messages.stream(
            model="think", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            assert await stream.get_final_text() == TEXT


async def test_a_client_that_leaves_behind_the_comments_cancels_the_upstream(proxy: str, upstream: Upstream) -> None:
    async with (
        httpx.AsyncClient(base_url=proxy, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", content=_body("think")) as response,
    ):
        async for line in response.aiter_lines():
            assert line == ": keep-alive"
            break  # the first comment: the response is committed; now leave
    for _ in range(100):
        if "think" in upstream.gone:
            break
        await asyncio.sleep(0.05)
    assert "think" in upstream.gone


def test_keepalive_s_must_be_positive_or_null() -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_dict({"streams": {"keepalive_s": 0}})
    assert "streams.keepalive_s" in str(raised.value)
    assert settings_from_dict({"streams": {"keepalive_s": None}}).config.streams.keepalive_s is None
    assert settings_from_dict({}).config.streams.keepalive_s == 10.0
