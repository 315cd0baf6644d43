"""``responses_api: native``: ``/v1/responses`` passed through to a target that serves it (OpenAI's
own API and Azure by default), answers and event streams relayed as they came and stored, and
``previous_response_id`` sent on as it is where the target's provider knows it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.config import settings_from_dict
from router.config_schema import AzureProviderConfig, OpenAIProviderConfig
from tests.conftest import fixture_bytes

NATIVE_ANSWER: dict[str, Any] = {
    "id": "resp_upstream_1",
    "object": "response",
    "created_at": 1763000000,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "model": "gpt-5",
    "output": [
        {"id": "rs_real", "type": "reasoning", "summary": [], "encrypted_content": "opaque"},
        {
            "id": "msg_real",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Native hello", "annotations": []}],
        },
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 14,
    },
}


def native_stream() -> bytes:
    events = [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**NATIVE_ANSWER, "status": "in_progress", "output": []},
        },
        {
            "type": "response.output_item.added",
            "sequence_number": 1,
            "output_index": 0,
            "item": NATIVE_ANSWER["output"][1],
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 2,
            "item_id": "msg_real",
            "output_index": 0,
            "content_index": 0,
            "delta": "Native hello",
            "logprobs": [],
        },
        {"type": "response.completed", "sequence_number": 3, "response": NATIVE_ANSWER},
    ]
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events)


class Upstreams:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        if request.url.host == "down.test":
            return httpx.Response(503, json={"error": {"message": "down", "type": "server_error"}})
        if request.url.host == "flaky.test":  # the stream begins, then fails before any output
            created = {
                "type": "response.created",
                "sequence_number": 0,
                "response": {**NATIVE_ANSWER, "status": "in_progress", "output": []},
            }
            error = {
                "type": "error",
                "sequence_number": 1,
                "code": "server_error",
                "message": "overloaded",
                "param": None,
            }
            frames = [
                b"event: " + str(e["type"]).encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n"
                for e in (created, error)
            ]
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(frames))
        if request.url.path.endswith("/responses"):
            if body.get("stream"):
                return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=native_stream())
            return httpx.Response(200, json=NATIVE_ANSWER)
        if body.get("stream"):
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=fixture_bytes("openai", "stream_text.sse")
            )
        return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


def config(tmp_path: Path) -> dict[str, Any]:
    return {
        "providers": {
            "native": {
                "type": "openai",
                "base_url": "http://native.test/v1",
                "api_key": "sk-n",
                "responses_api": "native",
            },
            "down": {"type": "openai", "base_url": "http://down.test/v1", "responses_api": "native"},
            "flaky": {"type": "openai", "base_url": "http://flaky.test/v1", "responses_api": "native"},
            "compat": {"type": "openai", "base_url": "http://compat.test/v1"},
            "az": {"type": "azure", "base_url": "https://az.test", "api_key": "az-key"},
        },
        "models": {
            "gpt": {"targets": [{"provider": "native", "model": "gpt-5"}]},
            "compat": {"targets": [{"provider": "compat", "model": "llama"}]},
            "azure": {"targets": [{"provider": "az", "model": "my-gpt"}]},
            "fails-over": {
                "targets": [{"provider": "down", "model": "gpt-5"}, {"provider": "compat", "model": "llama"}]
            },
            "flaky": {"targets": [{"provider": "flaky", "model": "gpt-5"}, {"provider": "native", "model": "gpt-5"}]},
        },
        "resilience": {"retry": {"max_attempts": 1}},
    }


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[AsyncTestClient[Any], Upstreams]]:
    upstreams = Upstreams()
    app = create_app(settings_from_dict(config(tmp_path), {}), transport=httpx.MockTransport(upstreams))
    async with AsyncTestClient(app=app) as http:
        yield http, upstreams


def test_which_providers_are_native_by_default() -> None:
    assert OpenAIProviderConfig(api_key="k").responses_native  # OpenAI's own API
    assert not OpenAIProviderConfig(base_url="http://localhost:8000/v1").responses_native  # vLLM and friends
    assert OpenAIProviderConfig(base_url="http://x/v1", responses_api="native").responses_native
    assert not OpenAIProviderConfig(responses_api="translate").responses_native
    assert AzureProviderConfig(base_url="https://a.test").responses_native


async def test_a_native_target_gets_the_request_untouched_and_its_answer_is_relayed(tmp_path: Path) -> None:
    async with served(tmp_path) as (http, upstreams):
        body = {
            "model": "gpt",
            "input": "Hi",
            "tools": [{"type": "web_search"}],  # a hosted tool: translation could not carry it
            "include": ["reasoning.encrypted_content"],
        }
        answer = await http.post("/v1/responses", json=body)
        assert answer.status_code == 200
        assert answer.json() == NATIVE_ANSWER
        sent = upstreams.requests[-1]
        assert str(sent.url) == "http://native.test/v1/responses"
        assert json.loads(sent.content) == {**body, "model": "gpt-5"}
        # kept, and continued on the target that knows it: previous_response_id goes on as it is
        assert (await http.get("/v1/responses/resp_upstream_1")).json() == NATIVE_ANSWER
        follow = {"model": "gpt", "input": "More", "previous_response_id": "resp_upstream_1"}
        assert (await http.post("/v1/responses", json=follow)).status_code == 200
        assert json.loads(upstreams.requests[-1].content) == {**follow, "model": "gpt-5"}


async def test_an_id_switchboard_never_saw_goes_to_native_targets_only(tmp_path: Path) -> None:
    async with served(tmp_path) as (http, upstreams):
        follow = {"model": "gpt", "input": "More", "previous_response_id": "resp_made_elsewhere"}
        assert (await http.post("/v1/responses", json=follow)).status_code == 200
        assert json.loads(upstreams.requests[-1].content)["previous_response_id"] == "resp_made_elsewhere"
        refused = await http.post("/v1/responses", json={**follow, "model": "compat"})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "previous_response_not_found"


async def test_a_translated_conversation_continues_on_a_native_target(tmp_path: Path) -> None:
    async with served(tmp_path) as (http, upstreams):
        first = (await http.post("/v1/responses", json={"model": "compat", "input": "Hello"})).json()
        assert [item["type"] for item in first["output"]] == ["reasoning", "message"]
        follow = {"model": "gpt", "input": "Go on", "previous_response_id": first["id"]}
        assert (await http.post("/v1/responses", json=follow)).status_code == 200
        sent = json.loads(upstreams.requests[-1].content)
        assert "previous_response_id" not in sent  # the native target never saw Switchboard's id
        assert [item.get("role") for item in sent["input"]] == ["user", "assistant", "user"]  # no reasoning
        assert all("id" not in item for item in sent["input"])  # ids only Switchboard knows are left out


async def test_native_streams_are_relayed_and_stored(tmp_path: Path) -> None:
    async with served(tmp_path) as (http, _):
        answer = await http.post("/v1/responses", json={"model": "gpt", "input": "Hi", "stream": True})
        assert answer.status_code == 200
        assert answer.content == native_stream()  # byte for byte
        assert (await http.get("/v1/responses/resp_upstream_1")).json()["output"] == NATIVE_ANSWER["output"]


async def test_azure_is_native_on_its_v1_route(tmp_path: Path) -> None:
    async with served(tmp_path) as (http, upstreams):
        assert (await http.post("/v1/responses", json={"model": "azure", "input": "Hi"})).status_code == 200
        sent = upstreams.requests[-1]
        assert str(sent.url) == "https://az.test/openai/v1/responses"
        assert json.loads(sent.content)["model"] == "my-gpt"
        assert sent.headers["api-key"] == "az-key"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_native_failure_fails_over_to_a_translating_target(tmp_path: Path, stream: bool) -> None:
    async with served(tmp_path) as (http, upstreams):
        answer = await http.post("/v1/responses", json={"model": "fails-over", "input": "Hi", "stream": stream})
        assert answer.status_code == 200
        assert answer.headers["x-switchboard-target"] == "compat/llama"
        assert [r.url.host for r in upstreams.requests] == ["down.test", "compat.test"]
        assert str(upstreams.requests[-1].url) == "http://compat.test/v1/chat/completions"


async def test_a_native_stream_failing_before_its_first_output_fails_over(tmp_path: Path) -> None:
    async with served(tmp_path) as (http, upstreams):
        answer = await http.post("/v1/responses", json={"model": "flaky", "input": "Hi", "stream": True})
        assert answer.status_code == 200
        assert answer.headers["x-switchboard-target"] == "native/gpt-5"
        assert answer.content == native_stream()  # nothing of the failed attempt reached the client
        assert [r.url.host for r in upstreams.requests] == ["flaky.test", "native.test"]


async def test_an_alias_with_parameters_is_never_passed_through(tmp_path: Path) -> None:
    settings = config(tmp_path)
    settings["models"]["gpt"]["params"] = {"max_tokens": 10, "clamp": True}
    upstreams = Upstreams()
    app = create_app(settings_from_dict(settings, {}), transport=httpx.MockTransport(upstreams))
    async with AsyncTestClient(app=app) as http:
        answer = await http.post("/v1/responses", json={"model": "gpt", "input": "Hi", "max_output_tokens": 500})
        assert answer.status_code == 200
        sent = upstreams.requests[-1]
        assert str(sent.url) == "http://native.test/v1/chat/completions"  # translated, so the cap holds
        assert json.loads(sent.content)["max_completion_tokens"] == 10


async def test_another_keys_response_is_never_passed_on_to_a_native_target(tmp_path: Path) -> None:
    """The native target's provider knows every id of the shared upstream account: Switchboard
    must not send one of key A's ids (or a deleted one) upstream on key B's behalf."""
    settings = config(tmp_path) | {
        "auth": {"master_key": "sk-master-native-0123456789"},
        "database": {"url": f"sqlite:///{tmp_path / 'n.db'}"},
    }
    admin = {"authorization": "Bearer sk-master-native-0123456789"}
    upstreams = Upstreams()
    app = create_app(settings_from_dict(settings, {}), transport=httpx.MockTransport(upstreams))
    async with AsyncTestClient(app=app) as http:
        a = (await http.post("/admin/keys", json={"name": "a"}, headers=admin)).json()["key"]
        b = (await http.post("/admin/keys", json={"name": "b"}, headers=admin)).json()["key"]
        made = await http.post(
            "/v1/responses", json={"model": "gpt", "input": "secret"}, headers={"authorization": f"Bearer {a}"}
        )
        assert made.json()["id"] == "resp_upstream_1"
        calls = len(upstreams.requests)
        for body in (
            {"model": "gpt", "input": "x", "previous_response_id": "resp_upstream_1"},
            {"model": "gpt", "input": [{"type": "item_reference", "id": "msg_real"}]},
        ):
            stolen = await http.post("/v1/responses", json=body, headers={"authorization": f"Bearer {b}"})
            assert stolen.status_code == 400, body
        assert len(upstreams.requests) == calls  # nothing went upstream
        assert (
            await http.delete("/v1/responses/resp_upstream_1", headers={"authorization": f"Bearer {a}"})
        ).status_code == 200
        gone = await http.post(
            "/v1/responses",
            json={"model": "gpt", "input": "x", "previous_response_id": "resp_upstream_1"},
            headers={"authorization": f"Bearer {a}"},
        )
        assert gone.status_code == 400
        assert len(upstreams.requests) == calls
