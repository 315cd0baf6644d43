"""Anthropic ↔ OpenAI translation: pure functions against recorded payloads (tests/fixtures/anthropic)."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from providers import anthropic_wire as wire
from providers.anthropic import AnthropicProvider, from_anthropic
from providers.anthropic_request import JSON_TOOL, to_anthropic
from providers.base import Inbound
from providers.errors import (
    UntranslatableRequest,
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamServerError,
)
from providers.schema import ChatCompletion, ChatCompletionChunk, ChatRequest, ChunkChoice, Delta
from providers.sse import SSEParser
from tests.conftest import fixture_bytes

KEY = "sk-ant-SECRET-123456"


def inbound(**body: Any) -> Inbound:
    body.setdefault("model", "claude")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    raw = msgspec.json.encode(body)
    return Inbound(msgspec.json.decode(raw, type=ChatRequest), msgspec.json.decode(raw, type=dict[str, msgspec.Raw]))


def chat(**body: Any) -> ChatRequest:
    return inbound(**body).chat


def as_dict(request: wire.MessagesRequest) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(request))
    return out


def provider() -> AnthropicProvider:
    return AnthropicProvider("anthropic", "https://api.anthropic.com", KEY, 4096)


# ---- request ------------------------------------------------------------------------------------


def test_a_multi_turn_conversation_with_tools_and_results() -> None:
    req = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": "Weather in Paris and the time?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:00"}]},
            {"role": "user", "content": "Thanks"},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            },
            {"type": "function", "function": {"name": "get_time"}},
        ],
        tool_choice="required",
        parallel_tool_calls=False,
        max_completion_tokens=300,
        stop="END",
        temperature=1.7,
        top_p=0.9,
        user="user-42",
    )
    out = as_dict(to_anthropic(req, "claude-haiku-4-5", 4096))
    assert out["system"] == "Be brief.\n\nUse tools."
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
    ]
    # both tool results and the next user message share one user turn
    assert out["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "14:00"},
        {"type": "text", "text": "Thanks"},
    ]
    assert out["tools"][0] == {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    assert out["tools"][1]["input_schema"] == {"type": "object", "properties": {}}
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["max_tokens"] == 300
    assert out["stop_sequences"] == ["END"]
    assert out["temperature"] == 1.0  # clamped to Anthropic's maximum
    assert out["top_p"] == 0.9
    assert out["metadata"] == {"user_id": "user-42"}
    assert out["model"] == "claude-haiku-4-5"
    assert "stream" not in out


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("none", {"type": "none"}),
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert as_dict(to_anthropic(chat(tools=tools, tool_choice=choice), "m", 1))["tool_choice"] == expected


def test_consecutive_user_turns_merge_and_max_tokens_defaults() -> None:
    req = chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], max_tokens=7)
    out = as_dict(to_anthropic(req, "m", 4096))
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert out["max_tokens"] == 7
    assert as_dict(to_anthropic(chat(), "m", 4096))["max_tokens"] == 4096


def test_images_data_urls_become_base64_and_http_urls_stay_urls() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]
    out = as_dict(to_anthropic(chat(messages=[{"role": "user", "content": content}]), "m", 1))
    assert out["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}],
            "messages[0].content[0]",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}]}],
            "messages[0].content[0].image_url",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_what_cannot_be_translated_is_a_400_naming_the_param(messages: Any, param: str) -> None:
    with pytest.raises(UntranslatableRequest) as info:
        to_anthropic(chat(messages=messages), "m", 1)
    assert info.value.status == 400
    assert info.value.param == param


def test_json_schema_response_format_becomes_a_forced_tool() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    out = as_dict(to_anthropic(chat(response_format=fmt), "m", 1))
    assert out["tools"] == [
        {"name": JSON_TOOL, "description": "Give the answer as this JSON object.", "input_schema": schema}
    ]
    assert out["tool_choice"] == {"type": "tool", "name": JSON_TOOL}


def test_request_headers_and_url() -> None:
    request = provider().build_request(inbound(stream=True), "claude-sonnet-4-5")
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["accept"] == "text/event-stream"
    assert "authorization" not in request.headers
    assert msgspec.json.decode(request.content)["stream"] is True


def test_unsupported_parameters_are_named() -> None:
    call = inbound(logprobs=True, top_logprobs=3, seed=1, n=2, presence_penalty=0.5, top_k=4, logit_bias=None)
    assert sorted(provider().unsupported(call)) == [
        "logprobs",
        "n",
        "presence_penalty",
        "seed",
        "top_k",
        "top_logprobs",
    ]
    assert provider().unsupported(inbound(temperature=0.2, stop=["x"], n=1)) == []


# ---- answers ------------------------------------------------------------------------------------


def decode_completion(body: bytes) -> ChatCompletion:
    return msgspec.json.decode(body, type=ChatCompletion)


def test_text_answer_with_cache_usage() -> None:
    completion = decode_completion(provider().parse_response(fixture_bytes("anthropic", "message_text.json"), "m").body)
    assert completion.id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert completion.model == "claude-sonnet-4-5-20250929"
    choice = completion.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("Hello! How can I help you today?", "stop")
    usage = completion.usage
    assert usage is not msgspec.UNSET
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2112, 10, 2122)
    assert usage.prompt_tokens_details is not msgspec.UNSET
    assert usage.prompt_tokens_details.cached_tokens == 2000


def test_tool_use_answer() -> None:
    completion = decode_completion(
        provider().parse_response(fixture_bytes("anthropic", "message_tool_use.json"), "m").body
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content == "Let me check both."
    assert message.reasoning_content == "The user wants the weather."
    assert message.tool_calls is not msgspec.UNSET
    assert [(c.id, c.function.name, msgspec.json.decode(c.function.arguments)) for c in message.tool_calls] == [
        ("toolu_01A09q90qw90lq917835lq9", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ("toolu_01B88x", "get_time", {"tz": "CET"}),
    ]


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_every_stop_reason(stop_reason: str, finish: str) -> None:
    msg = wire.MessageInfo(
        id="m", model="c", content=[wire.ContentBlock(type="text", text="x")], stop_reason=stop_reason
    )
    assert from_anthropic(msg, 0).choices[0].finish_reason == finish


def test_forced_json_tool_answer_becomes_content() -> None:
    block = wire.ContentBlock(type="tool_use", id="t", name=JSON_TOOL, input=msgspec.Raw(b'{"answer":"42"}'))
    completion = from_anthropic(wire.MessageInfo(id="m", model="c", content=[block], stop_reason="tool_use"), 0)
    assert completion.choices[0].message.content == '{"answer":"42"}'
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls is msgspec.UNSET


def test_malformed_answer_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError):
        provider().parse_response(b"<html>", "m")


# ---- streams ------------------------------------------------------------------------------------


def stream(name: str, include_usage: bool = False) -> list[ChatCompletionChunk]:
    translator = provider().stream_translator(inbound(stream=True, stream_options={"include_usage": include_usage}))
    out: list[bytes] = []
    for event in SSEParser().feed(fixture_bytes("anthropic", name)):
        out.extend(translator.translate(event))
    assert translator.finished
    return [msgspec.json.decode(chunk, type=ChatCompletionChunk) for chunk in out]


def test_streamed_text_with_usage() -> None:
    chunks = stream("stream_text.sse", include_usage=True)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! How are you?"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage is not msgspec.UNSET
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1025, 15, 1040)
    assert {c.id for c in chunks} == {"msg_stream_text"}
    assert {c.model for c in chunks} == {"claude-sonnet-4-5-20250929"}
    assert len({c.created for c in chunks}) == 1


def test_no_usage_chunk_unless_asked() -> None:
    assert all(c.choices for c in stream("stream_text.sse"))


def test_parallel_tool_calls_stream_as_openai_tool_call_deltas() -> None:
    chunks = stream("stream_tools.sse")
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    firsts = [tc for tc in calls if tc.id is not msgspec.UNSET]
    assert [(tc.index, tc.id, tc.type) for tc in firsts] == [
        (0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "function"),
        (1, "toolu_02B", "function"),
    ]
    assert all(tc.function is not msgspec.UNSET and tc.function.arguments == "" for tc in firsts)
    later = [tc for tc in calls if tc.id is msgspec.UNSET]
    assert all(tc.function is not msgspec.UNSET and tc.function.name is msgspec.UNSET for tc in later)
    arguments = {0: "", 1: ""}
    for tc in calls:
        assert tc.function is not msgspec.UNSET
        arguments[tc.index] += tc.function.arguments or ""
    assert arguments == {0: '{"city": "Paris"}', 1: '{"tz": "CET"}'}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    reasoning = "".join(c.choices[0].delta.reasoning_content or "" for c in chunks if c.choices)
    assert reasoning == "Two lookups."


def test_an_error_before_any_content_leaves_nothing_sent_and_is_retryable() -> None:
    translator = provider().stream_translator(inbound(stream=True))
    events = SSEParser().feed(fixture_bytes("anthropic", "stream_overloaded_early.sse"))
    assert translator.translate(events[0]) == ()  # message_start alone commits nothing
    with pytest.raises(UpstreamServerError, match="overloaded_error") as info:
        translator.translate(events[1])
    assert info.value.retryable


def test_an_error_after_content_raises_after_the_content() -> None:
    translator = provider().stream_translator(inbound(stream=True))
    *events, error = SSEParser().feed(fixture_bytes("anthropic", "stream_error_midway.sse"))
    sent = [chunk for event in events for chunk in translator.translate(event)]
    with pytest.raises(UpstreamServerError, match="Overloaded"):
        translator.translate(error)
    chunks = [msgspec.json.decode(c, type=ChatCompletionChunk) for c in sent]
    assert [c.choices[0].delta.content for c in chunks] == ["", "Partial"]
    assert chunks[0].choices[0].delta.role == "assistant"


def test_the_json_tool_streams_as_content() -> None:
    chunks = stream("stream_json_tool.sse")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == '{"a": 1}'
    assert all(c.choices[0].delta.tool_calls is msgspec.UNSET for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "name", "kind", "client_status"),
    [
        (400, "error_invalid_400.json", UpstreamRejected, 400),
        (401, "error_auth_401.json", UpstreamAuthFailed, 502),
        (529, "error_overloaded_529.json", UpstreamServerError, 502),
    ],
)
def test_errors(status: int, name: str, kind: type, client_status: int) -> None:
    error = provider().parse_error(status, fixture_bytes("anthropic", name), httpx.Headers({"retry-after": "2"}))
    assert type(error) is kind
    assert error.status == client_status
    assert KEY not in error.message
    if status == 529:
        assert error.retryable
        assert error.retry_after == 2
    if status == 400:
        assert "roles must alternate" in error.message


def test_spliced_text_chunks_are_the_bytes_a_struct_would_encode() -> None:
    text = 'quote " backslash \\ newline \n unicode é 😀 nul \u0000'
    start = b'event: message_start\ndata: {"type":"message_start","message":{"id":"m\\"1","model":"c"}}\n\n'
    delta = msgspec.json.encode(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    )
    translator = provider().stream_translator(inbound(stream=True))
    events = SSEParser().feed(start + b"event: content_block_delta\ndata: " + delta + b"\n\n")
    out = [chunk for event in events for chunk in translator.translate(event)]
    created = msgspec.json.decode(out[0], type=ChatCompletionChunk).created
    expected = msgspec.json.encode(
        ChatCompletionChunk(
            id='m"1', created=created, model="c", choices=[ChunkChoice(index=0, delta=Delta(content=text))]
        )
    )
    assert out[1] == expected
