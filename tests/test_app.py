"""The whole app in process: Litestar's AsyncTestClient, upstreams on httpx.MockTransport."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from providers.sse import SSEParser
from router.app import create_app
from router.config import settings_from_dict
from tests.conftest import fixture_bytes

UPSTREAM_KEY = "sk-upstream-SECRET-9f8e7d"
UPSTREAM_URL = "http://llm.internal.test:8000/v1"
Handler = Callable[[httpx.Request], Any]


def settings(**resilience: Any) -> Any:
    return settings_from_dict(
        {
            "server": {"max_body_bytes": 4096},
            "providers": {
                "up": {"type": "openai", "base_url": UPSTREAM_URL, "api_key": "${UP_KEY}"},
                "nokey": {"type": "openai", "api_key": "${NOKEY_API_KEY:-}"},
                "claude": {"type": "gemini", "api_key": "${GEMINI_KEY_FOR_TESTS:-}"},
                "demo": {"type": "mock"},
            },
            "models": {
                "gpt": {"targets": [{"provider": "up", "model": "gpt-4o-mini-2024-07-18"}]},
                "dark": {"targets": [{"provider": "nokey", "model": "m"}, {"provider": "claude", "model": "c"}]},
                "demo": {"targets": [{"provider": "demo", "model": "echo"}]},
            },
            "resilience": resilience,
        },
        {"UP_KEY": UPSTREAM_KEY},
    )


class Upstream:
    """Records what reached the fake upstream and answers with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        result = self.handler(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx.Response)
        return result


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": "application/json", **(headers or {})})


def sse_response(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


class FakeSleep:
    """Retry waits are recorded, never slept."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def client_for(upstream: Upstream, sleep: FakeSleep | None = None, **resilience: Any) -> AsyncTestClient[Any]:
    app = create_app(settings(**resilience), transport=httpx.MockTransport(upstream), sleep=sleep or FakeSleep())
    return AsyncTestClient(app=app)


CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


# ---- success paths ---------------------------------------------------------------------------


async def test_completion_passes_through_with_provider_key_and_target_header() -> None:
    completion = fixture_bytes("openai", "completion.json")
    upstream = Upstream(lambda _: json_response(completion))
    async with await client_for(upstream) as client:
        body = {**CHAT, "top_k": 5, "reasoning_effort": "low", "vendor": {"x": [1, 2]}}
        response = await client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-client-key", "X-Custom": "1"}
        )
    assert response.status_code == 200
    assert response.content == completion  # byte-for-byte: service_tier, reasoning_content survive
    assert response.headers["x-switchboard-target"] == "up/gpt-4o-mini-2024-07-18"
    (sent,) = upstream.requests
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "sk-client-key" not in str(sent.headers.raw)
    assert "x-custom" not in sent.headers
    forwarded = msgspec.json.decode(sent.content)
    assert forwarded == {**body, "model": "gpt-4o-mini-2024-07-18"}


async def test_stream_passes_every_event_through_and_ends_with_done() -> None:
    raw = fixture_bytes("openai", "stream_text.sse")
    upstream = Upstream(lambda _: sse_response(raw))
    async with await client_for(upstream) as client:
        response = await client.post(
            "/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-switchboard-target"] == "up/gpt-4o-mini-2024-07-18"
    assert upstream.requests[0].headers["accept"] == "text/event-stream"
    expected = b"".join(b"data: " + e.data + b"\n\n" for e in SSEParser().feed(raw))
    assert response.content == expected
    assert response.content.endswith(b"data: [DONE]\n\n")


async def test_stream_only_emits_data_lines() -> None:
    raw = b": comment\n\nevent: message\nid: 4\ndata: " + fixture_bytes("openai", "stream_tools.sse")[6:]
    upstream = Upstream(lambda _: sse_response(raw))
    async with await client_for(upstream) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    lines = [line for line in response.content.split(b"\n") if line]
    assert lines
    assert all(line.startswith(b"data: ") for line in lines)
    assert not response.content.startswith(b"\xef\xbb\xbf")


async def test_stream_of_crlf_framed_upstream_is_reframed() -> None:
    raw = fixture_bytes("openai", "stream_text.sse").replace(b"\n", b"\r\n")
    async with await client_for(Upstream(lambda _: sse_response(raw))) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert b"\r" not in response.content
    assert response.content.count(b"\n\n") == 5  # 6 events less the usage chunk the client did not ask for


async def test_demo_model_needs_no_key() -> None:
    async with await client_for(Upstream(lambda _: json_response(b"{}"))) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "demo"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "hi"
    assert response.headers["x-switchboard-target"] == "demo/echo"


async def test_provider_slash_model_routes_directly() -> None:
    upstream = Upstream(lambda _: json_response(fixture_bytes("openai", "completion.json")))
    async with await client_for(upstream) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "up/gpt-4.1"})
    assert response.status_code == 200
    assert msgspec.json.decode(upstream.requests[0].content)["model"] == "gpt-4.1"
    assert response.headers["x-switchboard-target"] == "up/gpt-4.1"


async def test_models_lists_every_alias_even_unavailable_ones() -> None:
    async with await client_for(Upstream(lambda _: json_response(b"{}"))) as client:
        response = await client.get("/v1/models")
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["gpt", "dark", "demo"]
    assert all(m["object"] == "model" for m in body["data"])


async def test_health_endpoints() -> None:
    async with await client_for(Upstream(lambda _: json_response(b"{}"))) as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
    assert live.status_code == 200
    assert ready.status_code == 200
    assert ready.json()["available"] == ["demo", "up"]
    assert "NOKEY_API_KEY" in ready.json()["unavailable"]["nokey"]


# ---- bad input: 400 naming the param, and no upstream call -----------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'"text"', None),
        (b'{"\xf5":1,"model":"gpt","messages":[{"role":"user","content":"x"}]}', None),  # bad UTF-8 in a key
        (b"", None),
        (b'{"messages":[{"role":"user","content":"x"}]}', "model"),
        (b'{"model":"gpt"}', "messages"),
        (b'{"model":"gpt","messages":"hi"}', "messages"),
        (b'{"model":"gpt","messages":[]}', "messages"),
        (b'{"model":42,"messages":[{"role":"user","content":"x"}]}', "model"),
        (b'{"model":"up/x\\r\\nSet-Cookie: a=b","messages":[{"role":"user","content":"x"}]}', "model"),
        (b'{"model":"","messages":[{"role":"user","content":"x"}]}', "model"),
        (b'{"model":"gpt","messages":[{"role":"user","content":"x"}],"temperature":"hot"}', "temperature"),
        (b'{"model":"gpt","messages":[{"role":"user","content":"x"}],"temperature":3}', "temperature"),
        (b'{"model":"gpt","messages":[{"role":"user","content":"x"}],"stream":"yes"}', "stream"),
        (b'{"model":"gpt","messages":[{"role":"user","content":"x"}],"n":0}', "n"),
        (b'{"model":"gpt","messages":[{"role":"wizard","content":"x"}]}', "messages[0].role"),
        (b'{"model":"gpt","messages":[{"content":"x"}]}', "messages[0].role"),
        (b'{"model":"gpt","messages":[{"role":"tool","content":"x"}]}', "messages[0]"),
        (b'{"model":"gpt","messages":[{"role":"user","content":5}]}', "messages[0].content"),
        (
            b'{"model":"gpt","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}',
            "tools[0]",
        ),
        (b'{"model":"gpt","messages":[{"role":"user","content":"x"}],"tool_choice":"sometimes"}', "tool_choice"),
        (
            b'{"model":"gpt","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":1}}',
            "stream_options.include_usage",
        ),
    ],
)
async def test_malformed_requests_are_400_naming_the_param_without_calling_upstream(
    body: bytes, param: str | None
) -> None:
    upstream = Upstream(lambda _: json_response(b"{}"))
    async with await client_for(upstream) as client:
        response = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
        assert param in error["message"]
    assert upstream.requests == []


async def test_body_over_the_limit_is_413() -> None:
    upstream = Upstream(lambda _: json_response(b"{}"))
    async with await client_for(upstream) as client:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        response = await client.post("/v1/chat/completions", json=big)
    error = assert_openai_error(response, 413)
    assert "4096" in error["message"]
    assert upstream.requests == []


async def test_unknown_model_is_404_model_not_found() -> None:
    async with await client_for(Upstream(lambda _: json_response(b"{}"))) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
    error = assert_openai_error(response, 404)
    assert error["code"] == "model_not_found"
    assert "gpt-9" in error["message"]


async def test_only_unavailable_targets_is_503_naming_the_variable_and_reason() -> None:
    async with await client_for(Upstream(lambda _: json_response(b"{}"))) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "dark"})
    error = assert_openai_error(response, 503)
    assert "NOKEY_API_KEY" in error["message"]
    assert "GEMINI_KEY_FOR_TESTS" in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405), ("DELETE", "/v1/models", 405)],
)
async def test_unknown_routes_and_methods_are_openai_shaped(method: str, path: str, status: int) -> None:
    async with await client_for(Upstream(lambda _: json_response(b"{}"))) as client:
        response = await client.request(method, path)
    assert_openai_error(response, status)


# ---- upstream failures -----------------------------------------------------------------------


async def test_upstream_client_error_keeps_status_and_message() -> None:
    body = fixture_bytes("openai", "context_length_400.json")
    upstream = Upstream(lambda _: json_response(body, 400))
    async with await client_for(upstream) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 400)
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length" in error["message"]
    assert len(upstream.requests) == 1


async def test_upstream_auth_failure_is_502_and_leaks_neither_key_nor_url() -> None:
    echo = f'{{"error":{{"message":"bad key {UPSTREAM_KEY} at {UPSTREAM_URL}","type":"invalid_request_error"}}}}'
    upstream = Upstream(lambda _: json_response(echo.encode(), 401))
    async with await client_for(upstream) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 502)
    assert UPSTREAM_KEY not in response.text
    assert "llm.internal.test" not in response.text
    assert "rejected Switchboard's credentials (401)" in error["message"]
    assert len(upstream.requests) == 1  # a bad key is not retried


async def test_upstream_rate_limit_is_retried_then_502_with_its_retry_after() -> None:
    upstream = Upstream(lambda _: json_response(b'{"error":{"message":"slow down"}}', 429, {"retry-after": "3"}))
    sleep = FakeSleep()
    async with await client_for(upstream, sleep) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 502)
    assert "slow down" in error["message"]
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-switchboard-attempts"] == "2"
    assert sleep.waits == [3.0]


async def test_upstream_5xx_is_502() -> None:
    upstream = Upstream(lambda _: json_response(b"<html>oops</html>", 500))
    async with await client_for(upstream) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 502)
    assert error["type"] == "server_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_connection_failure_is_502(stream: bool) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused to llm.internal.test", request=request)

    async with await client_for(Upstream(refuse)) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    error = assert_openai_error(response, 502)
    assert "llm.internal.test" not in error["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_timeout_is_504(stream: bool) -> None:
    async def hang(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return json_response(b"{}")

    async with await client_for(Upstream(hang), timeouts={"attempt_s": 0.2, "first_token_s": 0.2}) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    error = assert_openai_error(response, 504)
    assert error["code"] == "timeout"


async def test_transport_timeout_exception_is_504() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with await client_for(Upstream(slow)) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(response, 504)


async def test_malformed_upstream_json_is_502() -> None:
    async with await client_for(Upstream(lambda _: json_response(b"{truncated"))) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(response, 502)


async def test_error_before_the_first_chunk_is_an_http_error_not_a_200() -> None:
    raw = b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
    async with await client_for(Upstream(lambda _: sse_response(raw))) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    error = assert_openai_error(response, 502)
    assert "overloaded" in error["message"]


async def test_stream_upstream_error_status_is_returned_before_streaming() -> None:
    body = fixture_bytes("openai", "context_length_400.json")
    async with await client_for(Upstream(lambda _: json_response(body, 400))) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert_openai_error(response, 400)


def mid_stream_failure(tail: bytes) -> bytes:
    first = fixture_bytes("openai", "stream_text.sse").split(b"\n\n")[0] + b"\n\n"
    return first + tail


@pytest.mark.parametrize(
    ("tail", "needle"),
    [
        (b'data: {"error":{"message":"Provider disconnected","code":502}}\n\n', "Provider disconnected"),
        (b"data: {garbage\n\n", "not JSON"),
        (b"", "ended the stream before the answer was complete"),
    ],
)
async def test_error_after_the_first_chunk_is_one_error_event_and_no_done(tail: bytes, needle: str) -> None:
    async with await client_for(Upstream(lambda _: sse_response(mid_stream_failure(tail)))) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    events = SSEParser().feed(response.content)
    assert len(events) == 2
    assert b"[DONE]" not in response.content
    error = msgspec.json.decode(events[-1].data)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle in error["message"]


async def test_idle_upstream_stream_ends_with_a_timeout_event() -> None:
    first = fixture_bytes("openai", "stream_text.sse").split(b"\n\n")[0] + b"\n\n"

    async def trickle() -> AsyncIterator[bytes]:
        yield first
        await asyncio.sleep(30)
        yield b"data: [DONE]\n\n"

    async with await client_for(
        Upstream(lambda _: httpx.Response(200, content=trickle())), timeouts={"idle_s": 0.2}
    ) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = SSEParser().feed(response.content)
    error = msgspec.json.decode(events[-1].data)["error"]
    assert error["code"] == "timeout"
    assert "sent nothing for 0.2s" in error["message"]


async def test_unexpected_internal_error_is_500_without_traceback() -> None:
    def explode(_: httpx.Request) -> httpx.Response:
        raise RuntimeError("secret internals /etc/passwd")

    async with await client_for(Upstream(explode)) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 500)
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text
    assert error["code"] == "internal_error"


async def test_ready_is_503_when_no_provider_can_be_called() -> None:
    dark = settings_from_dict(
        {"providers": {"o": {"type": "openai", "api_key": "${NO_KEY:-}"}}, "models": {}},
        {},
    )
    async with AsyncTestClient(app=create_app(dark)) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert "NO_KEY" in response.json()["unavailable"]["o"]


def fuzz_bodies(seed: int, count: int) -> list[bytes]:
    """Seeded garbage shaped like chat requests: every field gets values of every JSON type."""
    rng = random.Random(seed)
    values: list[Any] = [None, True, 0, -1, 3.5, 1e308, "", "x", "\u0000", [], {}, [None], {"a": []}, "a" * 300]
    fields = ["model", "messages", "stream", "stream_options", "temperature", "tools", "tool_choice", "n", "stop"]
    bodies: list[bytes] = []
    for _ in range(count):
        body: dict[str, Any] = {"model": "gpt", "messages": [{"role": "user", "content": "x"}]}
        for name in rng.sample(fields, rng.randint(1, 4)):
            body[name] = rng.choice(values)
        if rng.random() < 0.3:
            body["messages"] = [{k: rng.choice(values) for k in rng.sample(["role", "content", "tool_calls"], 2)}]
        raw = msgspec.json.encode(body)
        if rng.random() < 0.2:
            cut = rng.randint(0, len(raw))
            raw = raw[:cut] + bytes([rng.randint(0, 255)]) + raw[cut + 1 :]
        bodies.append(raw)
    return bodies


async def test_no_client_input_produces_a_500() -> None:
    upstream = Upstream(lambda _: json_response(fixture_bytes("openai", "completion.json")))
    async with await client_for(upstream) as client:
        for body in fuzz_bodies(seed=20261122, count=400):
            response = await client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code != 500, (body, response.text)
            if response.status_code != 200:
                assert_openai_error(response, response.status_code)


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [{"type": "custom", "custom": {"name": "grammar"}}]},
        {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}},
        {"response_format": {"type": "regex", "pattern": "a+"}},
        {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}]},
    ],
)
async def test_valid_features_switchboard_does_not_model_still_pass_through(extra: dict[str, Any]) -> None:
    upstream = Upstream(lambda _: json_response(fixture_bytes("openai", "completion.json")))
    async with await client_for(upstream) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, **extra})
    assert response.status_code == 200, response.text
    forwarded = msgspec.json.decode(upstream.requests[0].content)
    for key, value in extra.items():
        assert forwarded[key] == value


async def test_body_reading_enforces_the_limit_and_survives_an_early_disconnect() -> None:
    from router.api.handling import read_body
    from router.errors import InvalidRequest, PayloadTooLarge

    def receiver(*messages: dict[str, Any]) -> Any:
        queue = list(messages)

        async def receive() -> dict[str, Any]:
            return queue.pop(0)

        return receive

    scope: Any = {"headers": []}
    parts = receiver({"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"})
    assert await read_body(scope, parts, 10) == b"abc"
    with pytest.raises(PayloadTooLarge):
        await read_body(scope, receiver({"type": "http.request", "body": b"x" * 11}), 10)
    announced: Any = {"headers": [(b"content-length", b"11")]}
    with pytest.raises(PayloadTooLarge):  # refused on the announced length, before reading
        await read_body(announced, receiver(), 10)
    with pytest.raises(InvalidRequest, match="disconnected"):
        await read_body(
            scope, receiver({"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.disconnect"}), 10
        )
