"""Azure OpenAI and Anthropic targets through the whole app (httpx.MockTransport upstreams)."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
import respx
from litestar.testing import AsyncTestClient

from providers.sse import SSEParser
from router.app import create_app
from router.config import settings_from_dict
from tests.conftest import fixture_bytes

HELLO = [{"role": "user", "content": "hi"}]


class Recorder:
    def __init__(self, answer: httpx.Response) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer


def app(recorder: Recorder, **providers: dict[str, Any]) -> AsyncTestClient[Any]:
    models = {name: {"targets": [{"provider": name, "model": f"{name}-model"}]} for name in providers}
    settings = settings_from_dict({"providers": providers, "models": models}, {})
    return AsyncTestClient(app=create_app(settings, transport=httpx.MockTransport(recorder)))


async def test_azure_addresses_the_deployment_with_its_api_key_and_passes_filter_results_through() -> None:
    raw = fixture_bytes("azure", "stream_filtered.sse")
    # respx matches the exact deployment URL and api-version; anything else is a 404 from respx.
    router = respx.Router(assert_all_called=True)
    route = router.post(
        "https://res.openai.azure.com/openai/deployments/az-model/chat/completions",
        params={"api-version": "2024-10-21"},
        headers={"api-key": "az-SECRET"},
    ).respond(200, content=raw, headers={"content-type": "text/event-stream"})
    settings = settings_from_dict(
        {
            "providers": {"az": {"type": "azure", "base_url": "https://res.openai.azure.com/", "api_key": "az-SECRET"}},
            "models": {"az": {"targets": [{"provider": "az", "model": "az-model"}]}},
        },
        {},
    )
    transport = httpx.MockTransport(router.async_handler)
    async with AsyncTestClient(app=create_app(settings, transport=transport)) as client:
        response = await client.post("/v1/chat/completions", json={"model": "az", "messages": HELLO, "stream": True})
    assert route.call_count == 1
    assert "authorization" not in route.calls.last.request.headers
    assert response.status_code == 200
    events = [e.data for e in SSEParser().feed(response.content)]
    assert events == [e.data for e in SSEParser().feed(raw)]  # the empty-choices first chunk included
    assert b"prompt_filter_results" in events[0]


async def test_a_provider_refusing_to_drop_parameters_answers_400_naming_one() -> None:
    recorder = Recorder(httpx.Response(200, content=fixture_bytes("anthropic", "message_text.json")))
    strict = {"type": "anthropic", "base_url": "https://claude.test", "api_key": "k", "drop_unsupported_params": False}
    async with app(recorder, claude=strict) as client:
        response = await client.post("/v1/chat/completions", json={"model": "claude", "messages": HELLO, "seed": 3})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("seed", "unsupported_parameter")
    assert recorder.requests == []


async def test_dropped_parameters_are_named_in_a_header() -> None:
    recorder = Recorder(httpx.Response(200, content=fixture_bytes("anthropic", "message_text.json")))
    lenient = {"type": "anthropic", "base_url": "https://claude.test", "api_key": "k"}
    async with app(recorder, claude=lenient) as client:
        body = {"model": "claude", "messages": HELLO, "seed": 3, "frequency_penalty": 0.1, "logprobs": False}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["x-switchboard-dropped-params"] == "seed, frequency_penalty"
    sent = msgspec.json.decode(recorder.requests[0].content)
    assert "seed" not in sent
    assert "frequency_penalty" not in sent


async def test_no_header_when_nothing_was_dropped() -> None:
    recorder = Recorder(httpx.Response(200, content=fixture_bytes("anthropic", "message_text.json")))
    async with app(recorder, claude={"type": "anthropic", "base_url": "https://claude.test", "api_key": "k"}) as client:
        response = await client.post("/v1/chat/completions", json={"model": "claude", "messages": HELLO})
    assert "x-switchboard-dropped-params" not in response.headers


@pytest.mark.parametrize(
    "content",
    [[{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}], [{"type": "file", "file": {}}]],
)
async def test_content_anthropic_cannot_take_is_a_400_without_an_upstream_call(content: Any) -> None:
    recorder = Recorder(httpx.Response(200, content=fixture_bytes("anthropic", "message_text.json")))
    async with app(recorder, claude={"type": "anthropic", "base_url": "https://claude.test", "api_key": "k"}) as client:
        body = {"model": "claude", "messages": [{"role": "user", "content": content}]}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0]"
    assert recorder.requests == []


async def test_an_anthropic_overload_before_any_content_fails_over_to_the_next_target() -> None:
    class Routed:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def __call__(self, request: httpx.Request) -> httpx.Response:
            self.calls.append(request.url.host)
            if request.url.host == "claude.test":
                raw = fixture_bytes("anthropic", "stream_overloaded_early.sse")
                return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})
            raw = fixture_bytes("openai", "stream_text.sse")
            return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    routed = Routed()
    settings = settings_from_dict(
        {
            "providers": {
                "claude": {"type": "anthropic", "base_url": "https://claude.test", "api_key": "k"},
                "gpt": {"type": "openai", "base_url": "https://gpt.test/v1", "api_key": "k"},
            },
            "models": {"m": {"targets": [{"provider": "claude", "model": "c"}, {"provider": "gpt", "model": "g"}]}},
            "resilience": {"retry": {"max_attempts": 1}},
        },
        {},
    )
    async with AsyncTestClient(app=create_app(settings, transport=httpx.MockTransport(routed))) as client:
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": True})
    assert response.status_code == 200
    assert response.headers["x-switchboard-target"] == "gpt/g"
    assert routed.calls == ["claude.test", "gpt.test"]
    assert b"overloaded" not in response.content
