"""``POST /v1/messages``: the Anthropic SDK against Switchboard, answered by an OpenAI-format
upstream (translated both ways, streamed and not, with tools) and by an Anthropic upstream (passed
through untouched); Anthropic's error shapes; ``count_tokens``; keys by ``x-api-key``. Answers and
events are held to the anthropic package's own types, strictly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anthropic
import httpx
import httpx2
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from litestar.testing import AsyncTestClient

from providers.anthropic_inbound import MessagesStream, Untranslatable, event, from_chat, to_chat
from providers.base import TokenUsage
from router.app import create_app
from router.config import settings_from_dict
from tests.conftest import fixture_bytes
from tests.test_keys import ADMIN, MASTER

TOOL_ANSWER = {
    "id": "chatcmpl-tools",
    "object": "chat.completion",
    "created": 1763000000,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 50,
        "completion_tokens": 9,
        "total_tokens": 59,
        "prompt_tokens_details": {"cached_tokens": 20},
    },
}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HELLO: list[Any] = [{"role": "user", "content": "Hello"}]


class Upstreams:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        stream = body.get("stream") is True
        if request.url.host == "claude.test":
            if stream:
                name = "stream_error_midway.sse" if body["model"] == "claude-dies" else "stream_tools.sse"
                return httpx.Response(
                    200, headers={"content-type": "text/event-stream"}, content=fixture_bytes("anthropic", name)
                )
            return httpx.Response(200, json=json.loads(fixture_bytes("anthropic", "message_text.json")))
        if stream:
            name = "stream_tools.sse" if body.get("tools") else "stream_text.sse"
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=fixture_bytes("openai", name)
            )
        if body.get("tools"):
            return httpx.Response(200, json=TOOL_ANSWER)
        return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "oai": {"type": "openai", "base_url": "http://oai.test/v1", "api_key": "sk-oai"},
            "claude": {"type": "anthropic", "base_url": "http://claude.test", "api_key": "sk-ant-upstream"},
        },
        "models": {
            "gpt": {"targets": [{"provider": "oai", "model": "gpt-4o"}]},
            "claude": {"targets": [{"provider": "claude", "model": "claude-sonnet-4-5"}]},
            "claude-dies": {"targets": [{"provider": "claude", "model": "claude-dies"}]},
        },
        "resilience": {"retry": {"max_attempts": 1}},
        **extra,
    }


@asynccontextmanager
async def sdk(
    tmp_path: Path, api_key: str = "none", **extra: Any
) -> AsyncIterator[tuple[anthropic.AsyncAnthropic, Upstreams]]:
    upstreams = Upstreams()
    served = create_app(settings_from_dict(config(tmp_path, **extra), {}), transport=httpx.MockTransport(upstreams))
    transport = httpx2.ASGITransport(cast(Any, served))
    async with AsyncTestClient(app=served), httpx2.AsyncClient(transport=transport) as http_client:
        client = anthropic.AsyncAnthropic(
            base_url="http://switchboard", api_key=api_key, http_client=http_client, max_retries=0
        )
        yield client, upstreams


def strict_message(raw: bytes | dict[str, Any]) -> Message:
    data = raw if isinstance(raw, dict) else json.loads(raw)
    return Message.model_validate(data, strict=True)


_events = pydantic.TypeAdapter(RawMessageStreamEvent)


def strict_events(stream: bytes) -> list[dict[str, Any]]:
    """Every frame has its ``event:`` line, the same as its JSON ``type``, and is a valid event."""
    events = []
    for frame in stream.split(b"\n\n"):
        if not frame.strip():
            continue
        lines = frame.split(b"\n")
        assert lines[0].startswith(b"event: "), frame
        name = lines[0].removeprefix(b"event: ").decode()
        data = json.loads(lines[1].removeprefix(b"data: "))
        assert data["type"] == name
        if name not in ("ping", "error"):
            _events.validate_python(data, strict=True)
        events.append(data)
    return events


# ---- pure translation ---------------------------------------------------------------------------


def test_a_messages_request_becomes_chat_completions() -> None:
    request = {
        "model": "gpt",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief."}],
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
        "tools": [WEATHER],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stream": True,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Sunny"}]},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
    }
    assert to_chat(request) == {
        "model": "gpt",
        "max_tokens": 100,
        "temperature": 0.5,
        "stop": ["END"],
        "user": "u-1",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": WEATHER["input_schema"],
                    "description": "The weather in a city",
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
            {"role": "user", "content": "Thanks"},
        ],
    }


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages[0].content[0]"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_what_chat_cannot_express_is_named(change: dict[str, Any], param: str) -> None:
    with pytest.raises(Untranslatable) as refused:
        to_chat({"model": "gpt", "max_tokens": 5, "messages": HELLO, **change})
    assert refused.value.param == param


def test_a_chat_answer_becomes_a_message() -> None:
    body = json.dumps(TOOL_ANSWER).encode()
    message = strict_message(from_chat(body, TokenUsage(prompt=50, completion=9, cached=20), "gpt"))
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "tool_use"
    assert message.content[0].input == {"city": "Paris"}
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        30,
        20,
        9,
    )


def test_chat_chunks_become_anthropic_events_in_order() -> None:
    stream = MessagesStream("gpt", input_estimate=12)
    chunks = [
        line.removeprefix(b"data: ")
        for line in fixture_bytes("openai", "stream_tools.sse").split(b"\n\n")
        if line.startswith(b"data: {")
    ]
    events = strict_events(stream.frames(chunks) + stream.done())
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["message_start", "ping"]
    assert events[0]["message"]["usage"]["input_tokens"] == 12  # never 0 before the real count
    assert kinds[-2:] == ["message_delta", "message_stop"]
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(s["index"], s["content_block"]["name"]) for s in starts] == [(0, "get_weather"), (1, "get_time")]
    arguments = "".join(
        e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta" and e["index"] == 0
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_text_deltas_are_the_bytes_of_their_events_encoded_whole() -> None:
    """Text deltas are put together from prepared bytes and the text's JSON: the same bytes as
    encoding each event, for the first token of a block and the next ones, at index 0 and after
    a tool call's block, with text that JSON must escape."""

    def chunk(**delta: Any) -> bytes:
        return json.dumps({"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta}]}).encode()

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    texts = ['say "hi"\n', "caf\u00e9 \u2603", "\\ </script>", "\u0001"]
    # Text first (block 0), then a tool call (block 1), then text again (block 2).
    chunks = [chunk(role="assistant", content=texts[0]), *(chunk(content=t) for t in texts[1:])]
    chunks += [chunk(tool_calls=[call]), *(chunk(content=t) for t in texts)]
    stream = MessagesStream("gpt", 1)
    body = stream.frames(chunks[:1]) + stream.frames(chunks[1:]) + stream.done()
    for index in (0, 2):
        for text in texts:
            whole = {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}
            assert event("content_block_delta", whole) in body
    deltas = [e for e in strict_events(body) if e["type"] == "content_block_delta"]
    assert ["".join(e["delta"].get("text", "") for e in deltas if e["index"] == i) for i in (0, 2)] == [
        "".join(texts)
    ] * 2


# ---- through Switchboard with the Anthropic SDK ---------------------------------------------------


async def test_an_openai_upstream_answers_the_anthropic_sdk(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, upstreams):
        raw = await client.messages.with_raw_response.create(model="gpt", max_tokens=64, messages=HELLO)
        strict_message(raw.http_response.content)
        message = await raw.parse()
        assert message.content[0].type == "text"
        assert message.stop_reason == "end_turn"
        assert raw.headers["x-switchboard-target"] == "oai/gpt-4o"
        sent = json.loads(upstreams.requests[-1].content)
        assert sent["model"] == "gpt-4o"
        assert sent["max_tokens"] == 64
        tools = await client.messages.create(model="gpt", max_tokens=64, messages=HELLO, tools=[WEATHER])  # type: ignore[list-item]
        assert tools.stop_reason == "tool_use"
        assert tools.content[0].type == "tool_use"
        assert tools.content[0].input == {"city": "Paris"}


async def test_an_openai_upstream_streams_to_the_anthropic_sdk(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, _):
        async with client.messages.stream(model="gpt", max_tokens=64, messages=HELLO) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text
        assert final.content[0].type == "text"
        assert final.content[0].text == text
        assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 2)  # the upstream's count, at the end
        async with client.messages.stream(model="gpt", max_tokens=64, messages=HELLO, tools=[WEATHER]) as stream:  # type: ignore[list-item]
            final = await stream.get_final_message()
        assert [b.type for b in final.content] == ["tool_use", "tool_use"]
        assert final.content[0].type == "tool_use"
        assert final.content[0].input == {"city": "Paris"}
        assert final.stop_reason == "tool_use"


async def test_the_raw_stream_is_anthropics_event_stream(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, _):
        raw = await client.messages.with_raw_response.create(model="gpt", max_tokens=64, messages=HELLO, stream=True)
        body = await raw.http_response.aread()
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = strict_events(body)
    assert [e["type"] for e in events][:3] == ["message_start", "ping", "content_block_start"]


async def test_an_anthropic_upstream_gets_the_request_untouched(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, upstreams):
        messages: list[Any] = [
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
        ]
        raw = await client.messages.with_raw_response.create(
            model="claude",
            max_tokens=64,
            messages=messages,
            thinking={"type": "enabled", "budget_tokens": 1024},
            extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
        )
        assert json.loads(raw.http_response.content) == json.loads(fixture_bytes("anthropic", "message_text.json"))
        sent = upstreams.requests[-1]
        assert str(sent.url) == "http://claude.test/v1/messages"
        assert sent.headers["x-api-key"] == "sk-ant-upstream"
        assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
        body = json.loads(sent.content)
        assert body["model"] == "claude-sonnet-4-5"
        assert body["messages"] == messages  # cache_control survives
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
        async with client.messages.stream(model="claude", max_tokens=64, messages=HELLO, tools=[WEATHER]) as stream:  # type: ignore[list-item]
            final = await stream.get_final_message()
        assert final.content[0].type == "thinking"
        assert final.content[0].signature  # the signature came through
        assert "tool_use" in [b.type for b in final.content]


async def test_a_stream_failing_midway_ends_with_anthropics_error_event(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, _):
        raw = await client.messages.with_raw_response.create(
            model="claude-dies", max_tokens=64, messages=HELLO, stream=True
        )
        body = await raw.http_response.aread()
    events = strict_events(body)
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "api_error"
    assert "message_stop" not in [e["type"] for e in events]


async def test_errors_come_in_anthropics_shape(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, _):
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.messages.create(model="nope", max_tokens=5, messages=HELLO)
        assert missing.value.body == {
            "type": "error",
            "error": {
                "type": "not_found_error",
                "message": "The model 'nope' does not exist or is not configured on this gateway.",
            },
            "request_id": missing.value.response.headers["x-request-id"],
        }
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model="gpt", max_tokens=0, messages=HELLO)
        assert cast(dict[str, Any], bad.value.body)["error"]["type"] == "invalid_request_error"
        with pytest.raises(anthropic.BadRequestError) as server_tool:
            await client.messages.create(
                model="gpt", max_tokens=5, messages=HELLO, tools=[{"type": "web_search_20250305", "name": "web_search"}]
            )
        assert "tools[0]" in str(server_tool.value)


async def test_keys_come_as_x_api_key_and_limits_answer_in_anthropics_shape(tmp_path: Path) -> None:
    extra = {"auth": {"master_key": MASTER}, "database": {"url": f"sqlite:///{tmp_path / 'k.db'}"}}
    upstreams = Upstreams()
    served = create_app(settings_from_dict(config(tmp_path, **extra), {}), transport=httpx.MockTransport(upstreams))
    async with AsyncTestClient(app=served) as http:
        key = (await http.post("/admin/keys", json={"name": "a", "rpm": 1}, headers=ADMIN)).json()["key"]
        body = {"model": "gpt", "max_tokens": 5, "messages": HELLO}
        denied = await http.post("/v1/messages", json=body, headers={"x-api-key": "sk-wrong"})
        assert denied.status_code == 401
        assert denied.json()["error"]["type"] == "authentication_error"
        ok = await http.post("/v1/messages", json=body, headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
        assert ok.status_code == 200
        strict_message(ok.content)
        limited = await http.post("/v1/messages", json=body, headers={"x-api-key": key})
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert int(limited.headers["retry-after"]) >= 1
        counted = await http.post(
            "/v1/messages/count_tokens", json={"model": "gpt", "messages": HELLO}, headers={"x-api-key": key}
        )
        assert counted.status_code == 200
        assert counted.json()["input_tokens"] > 0


async def test_count_tokens_with_the_sdk(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, upstreams):
        counted = await client.messages.count_tokens(model="gpt", messages=[{"role": "user", "content": "x" * 400}])
        assert 100 <= counted.input_tokens <= 120
        assert upstreams.requests == []  # answered by Switchboard itself


async def test_server_controlled_parameters_apply_to_translated_messages(tmp_path: Path) -> None:
    models = {
        "gpt": {
            "targets": [{"provider": "oai", "model": "gpt-4o"}],
            "params": {"max_tokens": 10, "clamp": True, "force": {"temperature": 0}},
        }
    }
    async with sdk(tmp_path, models={**config(tmp_path)["models"], **models}) as (client, upstreams):
        await client.messages.create(model="gpt", max_tokens=500, messages=HELLO, extra_body={"temperature": 0.9})
        sent = json.loads(upstreams.requests[-1].content)
        assert (sent["max_tokens"], sent["temperature"]) == (10, 0)


async def test_an_alias_with_parameters_is_never_passed_through(tmp_path: Path) -> None:
    """An Anthropic target would get the body untouched: with server-controlled parameters the
    request goes through Chat Completions instead, so the rules hold (streamed too)."""
    models = {
        "claude": {
            "targets": [{"provider": "claude", "model": "claude-sonnet-4-5"}],
            "params": {"max_tokens": 10, "clamp": True},
        }
    }
    async with sdk(tmp_path, models={**config(tmp_path)["models"], **models}) as (client, upstreams):
        message = await client.messages.create(model="claude", max_tokens=500, messages=HELLO)
        assert json.loads(upstreams.requests[-1].content)["max_tokens"] == 10
        assert message.content[0].type == "text"
        async with client.messages.stream(model="claude", max_tokens=500, messages=HELLO, tools=[WEATHER]) as stream:  # type: ignore[list-item]
            final = await stream.get_final_message()
        assert json.loads(upstreams.requests[-1].content)["max_tokens"] == 10
        assert "tool_use" in [block.type for block in final.content]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"stop_sequences": 5}, "stop_sequences"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"tools": 5}, "tools"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}]},
            "messages[0].content[0].content",
        ),
    ],
)
async def test_malformed_messages_are_400s_in_anthropics_shape(
    tmp_path: Path, change: dict[str, Any], param: str
) -> None:
    upstreams = Upstreams()
    served = create_app(settings_from_dict(config(tmp_path), {}), transport=httpx.MockTransport(upstreams))
    async with AsyncTestClient(app=served) as http:
        answer = await http.post("/v1/messages", json={"model": "gpt", "max_tokens": 5, "messages": HELLO, **change})
        assert answer.status_code == 400
        body = answer.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert param in body["error"]["message"]
        assert upstreams.requests == []
