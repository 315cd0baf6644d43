"""Gemini ↔ OpenAI translation: pure functions against recorded payloads (tests/fixtures/gemini)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import msgspec
import pytest

from providers.base import Inbound
from providers.errors import UntranslatableRequest, UpstreamAuthFailed, UpstreamRateLimited, UpstreamRejected
from providers.gemini import GeminiProvider, finish_reason
from providers.gemini_request import to_gemini
from providers.schema import ChatCompletion, ChatCompletionChunk, ChatRequest
from providers.sse import SSEParser
from tests.conftest import fixture_bytes

KEY = "AIzaSyTEST-SECRET-KEY-0123456789"


def call(**body: Any) -> Inbound:
    body.setdefault("model", "gemini")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    raw = msgspec.json.encode(body)
    return Inbound(msgspec.json.decode(raw, type=ChatRequest), msgspec.json.decode(raw, type=dict[str, msgspec.Raw]))


def gemini_body(**body: Any) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(to_gemini(call(**body).chat)))
    return out


def provider() -> GeminiProvider:
    counter = itertools.count(1)
    return GeminiProvider(
        "gemini", "https://generativelanguage.googleapis.com", KEY, ids=lambda: f"call_{next(counter)}"
    )


def test_conversation_with_tools_results_images_and_config() -> None:
    body = gemini_body(
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 18}'},
            {"role": "tool", "tool_call_id": "c1", "content": "plain text"},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_completion_tokens=256,
        temperature=0.2,
        top_p=0.5,
        stop=["END"],
        n=2,
        seed=9,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [
        {
            "role": "user",
            "parts": [{"text": "Weather here?"}, {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}}],
        },
        {
            "role": "model",
            "parts": [{"text": "Checking."}, {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                {"functionResponse": {"name": "get_weather", "response": {"content": "plain text"}}},
            ],
        },
    ]
    assert body["tools"] == [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "object"}}]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert body["generationConfig"] == {
        "maxOutputTokens": 256,
        "temperature": 0.2,
        "topP": 0.5,
        "stopSequences": ["END"],
        "candidateCount": 2,
        "seed": 9,
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
    }


@pytest.mark.parametrize(("choice", "mode"), [("none", "NONE"), ("auto", "AUTO"), ("required", "ANY")])
def test_tool_choice_modes(choice: str, mode: str) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert gemini_body(tools=tools, tool_choice=choice)["toolConfig"]["functionCallingConfig"] == {"mode": mode}


def test_a_tool_result_without_its_call_is_a_400() -> None:
    with pytest.raises(UntranslatableRequest) as info:
        to_gemini(call(messages=[{"role": "tool", "tool_call_id": "nope", "content": "x"}]).chat)
    assert info.value.param == "messages[0].tool_call_id"


def test_the_key_travels_in_a_header_never_in_the_url() -> None:
    plain = provider().build_request(call(), "gemini-2.5-flash")
    assert str(plain.url) == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert plain.headers["x-goog-api-key"] == KEY
    streamed = provider().build_request(call(stream=True), "gemini-2.5-flash")
    assert str(streamed.url).endswith("/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert KEY not in str(streamed.url)


def test_unsupported_parameters() -> None:
    dropped = provider().unsupported(call(logprobs=True, user="u", logit_bias={"1": 2}, seed=1, n=1))
    assert sorted(dropped) == ["logit_bias", "logprobs", "user"]
    assert provider().unsupported(call(parallel_tool_calls=True)) == []
    assert provider().unsupported(call(parallel_tool_calls=False)) == ["parallel_tool_calls"]


def completion(name: str) -> ChatCompletion:
    return msgspec.json.decode(provider().parse_response(fixture_bytes("gemini", name), "m").body, type=ChatCompletion)


def test_text_answer_with_thoughts_and_usage() -> None:
    answer = completion("generate_text.json")
    message = answer.choices[0].message
    assert (message.content, message.reasoning_content) == ("Hello there! How can I help?", "Thinking about greetings.")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "gemini-2.5-flash"
    assert answer.id == "chatcmpl-Zm9vYmFy"
    usage = answer.usage
    assert usage is not msgspec.UNSET
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (8, 32, 40)
    assert usage.completion_tokens_details is not msgspec.UNSET
    assert usage.completion_tokens_details.reasoning_tokens == 25
    assert usage.prompt_tokens_details is not msgspec.UNSET
    assert usage.prompt_tokens_details.cached_tokens == 4


def test_function_calls_get_ids_and_stop_becomes_tool_calls() -> None:
    answer = completion("generate_function_call.json")
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not msgspec.UNSET
    assert [(c.id, c.function.name, msgspec.json.decode(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("call_1", "get_weather", {"city": "Paris"}),
        ("call_2", "get_time", {"tz": "CET"}),
    ]


def test_a_blocked_prompt_is_content_filter_with_null_content() -> None:
    choice = completion("blocked.json").choices[0]
    assert (choice.message.content, choice.finish_reason) == (None, "content_filter")


@pytest.mark.parametrize(
    ("reason", "called", "finish"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("IMAGE_SAFETY", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("OTHER", False, "stop"),
    ],
)
def test_finish_reasons(reason: str, called: bool, finish: str) -> None:
    assert finish_reason(reason, called) == finish


def chunks(name: str, include_usage: bool = False) -> list[ChatCompletionChunk]:
    translator = provider().stream_translator(call(stream=True, stream_options={"include_usage": include_usage}))
    out: list[bytes] = []
    for event in SSEParser().feed(fixture_bytes("gemini", name)):  # CRLF framing, as Gemini sends
        out.extend(translator.translate(event))
    assert translator.complete
    return [msgspec.json.decode(c, type=ChatCompletionChunk) for c in out]


def test_streamed_text_takes_the_last_cumulative_usage() -> None:
    out = chunks("stream_text.sse", include_usage=True)
    assert out[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in out if c.choices) == "Hello, world!"
    assert [c.choices[0].finish_reason for c in out if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = out[-1].usage
    assert out[-1].choices == []
    assert usage is not None
    assert usage is not msgspec.UNSET
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 14, 19)
    assert {c.id for c in out} == {"chatcmpl-c3RyZWFt"}


def test_streamed_function_calls_arrive_whole_with_indexes_from_zero() -> None:
    out = chunks("stream_function_call.sse")
    calls = [tc for c in out if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.index, tc.id, tc.type) for tc in calls] == [(0, "call_1", "function"), (1, "call_2", "function")]
    assert [tc.function.arguments for tc in calls if tc.function is not msgspec.UNSET] == [
        '{"city": "Paris"}',
        '{"tz": "CET"}',
    ]
    assert out[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("status", "name", "kind", "retry_after"),
    [
        (429, "error_429.json", UpstreamRateLimited, 34.4),
        (400, "error_bad_key.json", UpstreamAuthFailed, None),
        (400, "error_invalid.json", UpstreamRejected, None),
    ],
)
def test_errors(status: int, name: str, kind: type, retry_after: float | None) -> None:
    error = provider().parse_error(status, fixture_bytes("gemini", name), httpx.Headers())
    assert type(error) is kind
    assert error.retry_after == retry_after
    assert KEY not in error.message
