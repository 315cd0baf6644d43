"""The OpenAI-compatible adapter: transparent requests, answers, streams and errors."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from providers.base import Inbound
from providers.errors import (
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
)
from providers.openai import OpenAIProvider
from providers.schema import ChatRequest
from providers.sse import SSEParser
from tests.conftest import fixture_bytes

KEY = "sk-test-SECRET-0123456789"
BASE = "https://llm.internal.example:8443/v1"


def inbound(body: bytes) -> Inbound:
    return Inbound(msgspec.json.decode(body, type=ChatRequest), msgspec.json.decode(body, type=dict[str, msgspec.Raw]))


def provider() -> OpenAIProvider:
    return OpenAIProvider("openai", BASE, KEY, {"OpenAI-Organization": "org-1"})


BODY = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi","x_vendor":{"keep":true}}],'
    b'"reasoning_effort":"low","top_k":40,"service_tier":"flex","temperature":0.25,"metadata":{"a":"b"}}'
)


def test_request_rewrites_model_and_keeps_every_other_field_byte_for_byte() -> None:
    request = provider().build_request(inbound(BODY), "gpt-4o-mini-2024-07-18")
    sent = msgspec.json.decode(request.content, type=dict[str, msgspec.Raw])
    original = msgspec.json.decode(BODY, type=dict[str, msgspec.Raw])
    assert bytes(sent.pop("model")) == b'"gpt-4o-mini-2024-07-18"'
    original.pop("model")
    assert {k: bytes(v) for k, v in sent.items()} == {k: bytes(v) for k, v in original.items()}


def test_request_with_same_model_is_the_client_body_unchanged() -> None:
    request = provider().build_request(inbound(BODY), "gpt-4o-mini")
    assert request.content == BODY


def test_request_targets_chat_completions_with_the_provider_key() -> None:
    request = provider().build_request(inbound(BODY), "m")
    assert str(request.url) == "https://llm.internal.example:8443/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["openai-organization"] == "org-1"
    assert request.headers["content-type"] == "application/json"
    assert "text/event-stream" not in request.headers.get("accept", "")


def test_stream_request_accepts_event_stream() -> None:
    body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}'
    assert provider().build_request(inbound(body), "m").headers["accept"] == "text/event-stream"


def test_keyless_provider_sends_no_authorization() -> None:
    request = OpenAIProvider("local", "http://127.0.0.1:8000/v1", None).build_request(inbound(BODY), "m")
    assert "authorization" not in request.headers


def test_completion_passes_through_unchanged() -> None:
    body = fixture_bytes("openai", "completion.json")
    assert provider().parse_response(body, "m").body is body


@pytest.mark.parametrize("body", [b"<html>502</html>", b'{"id":"x"}', b'{"object":"error","message":"boom"}'])
def test_malformed_or_erroneous_completion_is_an_upstream_failure(body: bytes) -> None:
    with pytest.raises((UpstreamProtocolError, UpstreamServerError)):
        provider().parse_response(body, "m")


def translate_all(raw: bytes) -> tuple[list[bytes], bool, bool]:
    translator = provider().stream_translator(inbound(BODY))
    out: list[bytes] = []
    for event in SSEParser().feed(raw):
        out.extend(translator.translate(event))
    return out, translator.finished, translator.complete


def test_stream_events_pass_through_byte_for_byte() -> None:
    raw = fixture_bytes("openai", "stream_text.sse")
    out, finished, complete = translate_all(raw)
    expected = [e.data for e in SSEParser().feed(raw) if e.data != b"[DONE]"]
    assert out == expected
    assert b'"obfuscation":"qV3x"' in out[0]
    assert b'"reasoning_content":"thinking"' in out[1]
    assert finished
    assert complete


def test_stream_with_tool_calls_passes_through() -> None:
    out, finished, _ = translate_all(fixture_bytes("openai", "stream_tools.sse"))
    assert len(out) == 6
    assert finished


def test_finish_reason_without_done_is_complete_but_not_finished() -> None:
    raw = fixture_bytes("openai", "stream_tools.sse").replace(b"data: [DONE]\n\n", b"")
    _, finished, complete = translate_all(raw)
    assert (finished, complete) == (False, True)


def test_keepalive_events_are_dropped() -> None:
    out, _, _ = translate_all(b"data: :\n\ndata:  \n\n")
    assert out == []


def test_error_inside_a_stream_raises_without_leaking() -> None:
    with pytest.raises(UpstreamServerError, match="Provider disconnected"):
        translate_all(fixture_bytes("openai", "stream_openrouter_error.sse"))


def test_vllm_error_object_in_stream_raises() -> None:
    with pytest.raises(UpstreamServerError, match="maximum context length"):
        translate_all(b"data: " + fixture_bytes("openai", "vllm_error.json").strip() + b"\n\n")


def test_non_json_event_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError):
        translate_all(b"data: {not json\n\n")


def test_client_error_keeps_status_message_code_and_param() -> None:
    error = provider().parse_error(400, fixture_bytes("openai", "context_length_400.json"), httpx.Headers())
    assert isinstance(error, UpstreamRejected)
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages")
    assert "maximum context length" in error.message
    assert not error.retryable
    assert not error.trips_breaker


def test_bad_provider_key_is_not_blamed_on_the_client_and_is_redacted() -> None:
    error = provider().parse_error(401, fixture_bytes("openai", "invalid_key_401.json"), httpx.Headers())
    assert isinstance(error, UpstreamAuthFailed)
    assert error.status == 502
    assert "sk-proj" not in error.message
    assert error.trips_breaker


def test_key_and_base_url_echoed_by_upstream_are_redacted() -> None:
    body = f'{{"error":{{"message":"key {KEY} refused by {BASE}/chat/completions"}}}}'.encode()
    error = provider().parse_error(404, body, httpx.Headers())
    assert KEY not in error.message
    assert "llm.internal.example" not in error.message
    assert error.status == 404


def test_rate_limit_with_retry_after() -> None:
    body = fixture_bytes("openai", "azure_429.json")
    error = provider().parse_error(429, body, httpx.Headers({"retry-after-ms": "6000"}))
    assert isinstance(error, UpstreamRateLimited)
    assert (error.status, error.retry_after, error.code) == (429, 6.0, "429")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529, 408])
def test_server_errors_are_retryable_failures(status: int) -> None:
    error = provider().parse_error(status, b"upstream exploded", httpx.Headers())
    assert isinstance(error, UpstreamServerError)
    assert error.status == 502
    assert error.retryable
    assert error.trips_breaker
    assert "upstream exploded" in error.message


def test_vllm_error_body_is_understood() -> None:
    error = provider().parse_error(400, fixture_bytes("openai", "vllm_error.json"), httpx.Headers())
    assert isinstance(error, UpstreamRejected)
    assert "maximum context length" in error.message
    assert error.code == "400"
