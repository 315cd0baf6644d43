"""Mid-stream failover with continuation (``models.<alias>.continue_on_failure``): a committed chat
stream whose upstream dies, reports an error in-band or falls silent goes on at the next target
from the text already delivered, spliced into the same stream (same id, same choice), usage and
cost added up; where a continuation cannot be faithful (a tool call under way, ``n`` > 1,
logprobs), the stream ends with its error event as before. The openai SDK, the real server, fake
upstreams on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from router.app import create_app
from router.config import settings_from_dict
from router.gateway.continuation import CONTINUE_PROMPT
from router.gateway.outcome import Outcome
from tests.fakes import FakeAnthropic, running_anthropic, serving_chat
from tests.live import LiveServer

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about foxes."}]
FIRST = ["The quick ", "brown "]  # what the failing upstreams deliver before they fail
REST = ["fox jumps ", "over the dog."]  # what the continuing upstream adds


def _chunk(cid: str, delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    body = {"id": cid, "object": "chat.completion.chunk", "created": 1700000000, "model": "m", "choices": choices}
    if usage:
        body["usage"] = usage
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


@dataclass
class Upstream:
    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)


async def _answer(up: Upstream, request: web.Request) -> web.StreamResponse:
    body = msgspec.json.decode(await request.read())
    up.seen.append(body)
    model = body["model"]
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    usage = (body.get("stream_options") or {}).get("include_usage")
    if model == "rest":
        await response.write(_chunk("chatcmpl-second", {"role": "assistant", "content": ""}))
        for text in REST:
            await response.write(_chunk("chatcmpl-second", {"content": text}))
        await response.write(_chunk("chatcmpl-second", {}, "stop"))
        if usage:
            await response.write(_chunk("chatcmpl-second", {}, usage={"prompt_tokens": 30, "completion_tokens": 4}))
        await response.write(b"data: [DONE]\n\n")
        return response
    await response.write(_chunk("chatcmpl-first", {"role": "assistant", "content": ""}))
    if model == "finish-dies":  # a whole answer, then the connection breaks before [DONE]
        for text in FIRST:
            await response.write(_chunk("chatcmpl-first", {"content": text}))
        await response.write(_chunk("chatcmpl-first", {}, "stop"))
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response
    if model == "tool-dies":
        call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a'}}
        await response.write(_chunk("chatcmpl-first", {"tool_calls": [call]}))
    else:
        for text in FIRST:
            await response.write(_chunk("chatcmpl-first", {"content": text}))
    await asyncio.sleep(0.05)
    if model == "in-band":
        await response.write(b'data: {"error":{"message":"model crashed","code":500}}\n\n')
    elif model == "silent":
        await asyncio.sleep(3)  # past idle_s
        return response
    assert request.transport is not None
    request.transport.close()  # dies (and tool-dies)
    return response


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    with serving_chat(partial(_answer, up)) as port:
        up.port = port
        yield up


@pytest.fixture(scope="module")
def anthropic_upstream() -> Iterator[FakeAnthropic]:
    with running_anthropic() as fake:
        yield fake


def _alias(first: str, then: list[dict[str, str]], continues: bool = True) -> dict[str, Any]:
    return {"targets": [{"provider": "up", "model": first}, *then], "continue_on_failure": continues}


@dataclass
class Proxy:
    client: openai.AsyncOpenAI
    outcomes: list[Outcome]


@pytest.fixture
async def proxy(upstream: Upstream, anthropic_upstream: FakeAnthropic) -> AsyncIterator[Proxy]:
    upstream.seen.clear()
    anthropic_upstream.seen.clear()
    rest = [{"provider": "up", "model": "rest"}]
    config = {
        "providers": {
            "up": {"type": "openai", "base_url": f"http://127.0.0.1:{upstream.port}/v1", "api_key": "sk-up"},
            "claude": {
                "type": "anthropic",
                "base_url": f"http://127.0.0.1:{anthropic_upstream.port}",
                "api_key": "sk-ant-e2e",
            },
        },
        "models": {
            "dies": _alias("dies", rest),
            "in-band": _alias("in-band", rest),
            "silent": _alias("silent", rest),
            "tool-dies": _alias("tool-dies", rest),
            "finish-dies": _alias("finish-dies", rest),
            "to-claude": _alias("dies", [{"provider": "claude", "model": "claude-haiku-4-5"}]),
            "not-opted-in": _alias("dies", rest, continues=False),
        },
        "resilience": {"retry": {"max_attempts": 1}, "timeouts": {"idle_s": 0.5}},
        "pricing": {"m": {"input": 1.0, "output": 2.0}, "rest": {"input": 1.0, "output": 2.0}},
    }
    app = create_app(settings_from_dict(config))
    outcomes: list[Outcome] = []
    app.state.outcomes.listeners.append(outcomes.append)
    async with (
        LiveServer(app) as server,
        openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sk-any", max_retries=0) as client,
    ):
        yield Proxy(client, outcomes)


async def _read(proxy: Proxy, model: str, **extra: Any) -> tuple[str, list[Any]]:
    stream = await proxy.client.chat.completions.create(model=model, messages=HI, stream=True, **extra)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.parametrize("model", ["dies", "in-band", "silent"])
async def test_a_stream_whose_upstream_fails_goes_on_at_the_next_target(
    proxy: Proxy, upstream: Upstream, model: str
) -> None:
    text, chunks = await _read(proxy, model)
    assert text == "".join(FIRST + REST)  # one uninterrupted answer
    assert {c.id for c in chunks} == {"chatcmpl-first"}  # same id throughout
    assert {c.created for c in chunks} == {1700000000}
    assert all(c.choices[0].index == 0 for c in chunks if c.choices)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1  # one role chunk
    assert chunks[-1].choices[0].finish_reason == "stop"
    continuation = upstream.seen[-1]
    assert continuation["model"] == "rest"
    assert continuation["messages"][-2:] == [
        {"role": "assistant", "content": "".join(FIRST)},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    outcome = proxy.outcomes[-1]
    assert outcome.continued == 1
    assert outcome.target == "up/rest"
    assert outcome.status == 200
    assert outcome.code is None


async def test_usage_and_cost_add_up_both_attempts(proxy: Proxy) -> None:
    _, chunks = await _read(proxy, "dies", stream_options={"include_usage": True})
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (30, 4)  # the dead upstream reported none
    outcome = proxy.outcomes[-1]
    assert outcome.usage is not None
    assert (outcome.usage.prompt, outcome.usage.completion) == (30, 4)
    assert outcome.cost_usd == pytest.approx((30 * 1.0 + 4 * 2.0) / 1e6)


async def test_an_anthropic_target_continues_from_a_prefill(proxy: Proxy, anthropic_upstream: FakeAnthropic) -> None:
    text, chunks = await _read(proxy, "to-claude")
    assert text == "The quick brown Hello! How are you?"  # the fixture's answer after the delivered text
    assert {c.id for c in chunks} == {"chatcmpl-first"}
    sent: Any = anthropic_upstream.seen[-1].body
    prefill = {"role": "assistant", "content": [{"type": "text", "text": "The quick brown"}]}  # no trailing space
    assert sent["messages"][-1] == prefill


async def test_a_tool_call_under_way_is_not_continued(proxy: Proxy, upstream: Upstream) -> None:
    calls = len(upstream.seen)
    with pytest.raises(openai.APIError):
        await _read(proxy, "tool-dies")
    assert len(upstream.seen) == calls + 1  # nothing asked of the next target
    assert proxy.outcomes[-1].continued == 0


@pytest.mark.parametrize("extra", [{"n": 2}, {"logprobs": True}], ids=["n", "logprobs"])
async def test_n_or_logprobs_are_not_continued(proxy: Proxy, upstream: Upstream, extra: dict[str, Any]) -> None:
    calls = len(upstream.seen)
    with pytest.raises(openai.APIError):
        await _read(proxy, "dies", **extra)
    assert len(upstream.seen) == calls + 1
    assert proxy.outcomes[-1].continued == 0


async def test_without_the_opt_in_the_stream_ends_with_its_error_event(proxy: Proxy, upstream: Upstream) -> None:
    calls = len(upstream.seen)
    with pytest.raises(openai.APIError):
        await _read(proxy, "not-opted-in")
    assert len(upstream.seen) == calls + 1


async def test_a_translated_responses_stream_is_continued(proxy: Proxy, upstream: Upstream) -> None:
    async with proxy.client.responses.stream(model="dies", input="Tell me about foxes.") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert final.output_text == "".join(FIRST + REST)
    assert final.status == "completed"
    assert kinds.count("response.created") == 1  # one response, not two
    assert "response.failed" not in kinds
    assert upstream.seen[-1]["messages"][-1] == {"role": "user", "content": CONTINUE_PROMPT}
    assert proxy.outcomes[-1].continued == 1


async def test_a_translated_messages_stream_is_continued(proxy: Proxy) -> None:
    base = str(proxy.client.base_url).removesuffix("/v1/")
    async with (
        anthropic.AsyncAnthropic(base_url=base, api_key="sk-any", max_retries=0) as client,
        client.messages.stream(
            model="dies", max_tokens=100, messages=[{"role": "user", "content": "Tell me about foxes."}]
        ) as stream,
    ):
        text = await stream.get_final_text()
        message = await stream.get_final_message()
    assert text == "".join(FIRST + REST)
    assert message.stop_reason == "end_turn"
    assert proxy.outcomes[-1].continued == 1


async def test_an_answer_that_had_finished_is_not_continued(proxy: Proxy, upstream: Upstream) -> None:
    """Regression: a break after the finish_reason got a second answer appended."""
    calls = len(upstream.seen)
    parts: list[str] = []

    async def read() -> None:
        stream = await proxy.client.chat.completions.create(model="finish-dies", messages=HI, stream=True)
        async for chunk in stream:
            parts.extend(c.delta.content or "" for c in chunk.choices)

    with pytest.raises(openai.APIError):
        await read()
    assert "".join(parts) == "".join(FIRST)
    assert len(upstream.seen) == calls + 1  # nothing asked of the next target
    assert proxy.outcomes[-1].continued == 0


async def test_continuations_are_counted_in_the_metrics(proxy: Proxy) -> None:
    await _read(proxy, "dies")
    base = str(proxy.client.base_url).removesuffix("/v1/")
    async with httpx.AsyncClient(base_url=base) as http:
        metrics = (await http.get("/metrics")).text
    assert 'switchboard_continuations_total{alias="dies"} 1.0' in metrics
