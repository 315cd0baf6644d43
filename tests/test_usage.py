"""Exact usage for every answer, from every provider, streamed or not: the Outcome carries what
the upstream reported (None when it reported nothing), and a client that did not ask for a
stream's usage gets the stream it asked for, byte for byte."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from providers.base import TokenUsage
from providers.sse import SSEParser
from router.app import create_app
from router.config import settings_from_dict
from router.gateway.outcome import Outcome
from tests.conftest import fixture_bytes

HELLO = [{"role": "user", "content": "hi"}]
PROVIDERS: dict[str, dict[str, Any]] = {
    "openai": {"type": "openai", "base_url": "http://openai.test/v1", "api_key": "k"},
    "azure": {"type": "azure", "base_url": "http://azure.test", "api_key": "k"},
    "anthropic": {"type": "anthropic", "base_url": "http://anthropic.test", "api_key": "k"},
    "gemini": {"type": "gemini", "base_url": "http://gemini.test", "api_key": "k"},
    "mock": {"type": "mock"},
}
FIXTURES = {
    "openai": ("completion.json", "stream_text.sse"),
    "azure": ("completion.json", "stream_text.sse"),
    "anthropic": ("message_text.json", "stream_text.sse"),
    "gemini": ("generate_text.json", "stream_text.sse"),
}


class Upstreams:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(msgspec.json.decode(request.content))
        kind = request.url.host.split(".")[0]
        vendor = "openai" if kind == "azure" else kind
        answer, stream = FIXTURES[kind]
        if request.headers.get("accept") == "text/event-stream":
            return httpx.Response(
                200, content=fixture_bytes(vendor, stream), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(200, content=fixture_bytes(vendor, answer), headers={"content-type": "application/json"})


def client(seen: list[Outcome], upstreams: Upstreams, **provider_overrides: Any) -> AsyncTestClient[Any]:
    providers = {
        name: {**cfg, **provider_overrides} if cfg["type"] in ("openai", "azure") else cfg
        for name, cfg in PROVIDERS.items()
    }
    settings = settings_from_dict(
        {
            "providers": providers,
            "models": {name: {"targets": [{"provider": name, "model": f"{name}-m"}]} for name in PROVIDERS},
        },
        {},
    )
    app = create_app(settings, transport=httpx.MockTransport(upstreams))
    app.state.outcomes.listeners.append(seen.append)
    return AsyncTestClient(app=app)


def visible_usage(response: httpx.Response, stream: bool) -> TokenUsage:
    """The usage the client itself received (it asked for it)."""
    if stream:
        chunks = [msgspec.json.decode(e.data) for e in SSEParser().feed(response.content) if e.data != b"[DONE]"]
        (usage,) = [c["usage"] for c in chunks if c.get("usage")]
    else:
        usage = response.json()["usage"]
    return TokenUsage(
        prompt=usage["prompt_tokens"],
        completion=usage["completion_tokens"],
        cached=(usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        reasoning=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
    )


@pytest.mark.parametrize("kind", sorted(PROVIDERS))
@pytest.mark.parametrize("stream", [False, True])
async def test_the_outcome_carries_the_usage_the_upstream_reported(kind: str, stream: bool) -> None:
    seen: list[Outcome] = []
    async with client(seen, Upstreams()) as http:
        body: dict[str, Any] = {"model": kind, "messages": HELLO, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        asked = await http.post("/v1/chat/completions", json=body)
        body.pop("stream_options", None)
        unasked = await http.post("/v1/chat/completions", json=body)
    assert asked.status_code == unasked.status_code == 200
    expected = visible_usage(asked, stream)
    assert expected.prompt > 0
    assert [o.usage for o in seen] == [expected, expected]
    assert all(o.finish_reason is not None for o in seen)
    assert all(o.response_model for o in seen)


async def test_known_numbers_from_the_recorded_answers() -> None:
    seen: list[Outcome] = []
    async with client(seen, Upstreams()) as http:
        for kind in ("openai", "anthropic", "gemini"):
            await http.post("/v1/chat/completions", json={"model": kind, "messages": HELLO})
    openai, anthropic, gemini = seen
    assert openai.usage == TokenUsage(prompt=9, completion=7, cached=0, reasoning=0)
    # Anthropic: prompt = input 12 + cache creation 100 + cache read 2000; cached = cache read
    assert anthropic.usage == TokenUsage(prompt=2112, completion=10, cached=2000, reasoning=0)
    assert (anthropic.finish_reason, anthropic.response_model) == ("stop", "claude-sonnet-4-5-20250929")
    assert gemini.usage is not None
    assert gemini.usage.prompt > 0


@pytest.mark.parametrize("kind", ["openai", "azure"])
async def test_usage_is_asked_for_and_hidden_from_a_client_that_did_not_ask(kind: str) -> None:
    upstreams = Upstreams()
    seen: list[Outcome] = []
    async with client(seen, upstreams) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": kind, "messages": HELLO, "stream": True, "stream_options": {"include_obfuscation": False}},
        )
    (sent,) = upstreams.bodies
    assert sent["stream_options"] == {"include_obfuscation": False, "include_usage": True}  # merged, not replaced
    raw = fixture_bytes("openai", "stream_text.sse")
    # what OpenAI sends without include_usage: no usage chunk, and no `"usage":null` in the others
    without_usage = b"".join(
        b"data: " + e.data.replace(b',"usage":null', b"") + b"\n\n"
        for e in SSEParser().feed(raw)
        if b'"choices":[]' not in e.data
    )
    assert b'"usage"' not in response.content
    assert response.content == without_usage  # byte for byte what the client asked for
    assert seen[0].usage is not None


async def test_stream_usage_off_forwards_the_body_as_it_came() -> None:
    upstreams = Upstreams()
    seen: list[Outcome] = []
    async with client(seen, upstreams, stream_usage=False) as http:
        await http.post("/v1/chat/completions", json={"model": "openai", "messages": HELLO, "stream": True})
    assert "stream_options" not in upstreams.bodies[0]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_that_reports_no_usage_is_unknown_not_zero(stream: bool) -> None:
    completion = msgspec.json.decode(fixture_bytes("openai", "completion.json"))
    del completion["usage"]
    chunks = [
        e.data for e in SSEParser().feed(fixture_bytes("openai", "stream_text.sse")) if b'"choices":[]' not in e.data
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        if stream:
            return httpx.Response(200, content=b"".join(b"data: " + c + b"\n\n" for c in chunks))
        return httpx.Response(200, content=msgspec.json.encode(completion))

    settings = settings_from_dict(
        {
            "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1"}},
            "models": {"m": {"targets": [{"provider": "up", "model": "x"}]}},
        },
        {},
    )
    seen: list[Outcome] = []
    app = create_app(settings, transport=httpx.MockTransport(answer))
    app.state.outcomes.listeners.append(seen.append)
    async with AsyncTestClient(app=app) as http:
        response = await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": stream})
    assert response.status_code == 200
    assert seen[0].usage is None
    assert seen[0].finish_reason == "stop"


async def test_an_unreadable_usage_is_unknown_and_the_answer_still_passes() -> None:
    completion = msgspec.json.decode(fixture_bytes("openai", "completion.json"))
    completion["usage"] = {"prompt_tokens": "many"}
    body = msgspec.json.encode(completion)
    settings = settings_from_dict(
        {
            "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1"}},
            "models": {"m": {"targets": [{"provider": "up", "model": "x"}]}},
        },
        {},
    )
    seen: list[Outcome] = []
    app = create_app(settings, transport=httpx.MockTransport(lambda _: httpx.Response(200, content=body)))
    app.state.outcomes.listeners.append(seen.append)
    async with AsyncTestClient(app=app) as http:
        response = await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
    assert response.content == body  # transparent as ever
    assert seen[0].usage is None
