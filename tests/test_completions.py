"""``POST /v1/completions``, OpenAI's legacy API: passed through to OpenAI-compatible targets only
(a 400 naming the model for an alias without one), streamed and not, driven with the openai SDK
and checked against its types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import httpx
import httpx2
import openai
import pytest
from litestar.testing import AsyncTestClient
from openai.types import Completion

from router.app import create_app
from router.config import settings_from_dict
from tests.conformance import check_error
from tests.test_keys import ADMIN, MASTER, bearer

ANSWER = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1763000000,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [{"text": " world", "index": 0, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class Upstreams:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json=ANSWER)


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "oai": {"type": "openai", "base_url": "http://oai.test/v1", "api_key": "sk-oai"},
            "az": {"type": "azure", "base_url": "https://az.test", "api_key": "az-key"},
            "claude": {"type": "anthropic", "base_url": "http://claude.test", "api_key": "a"},
            "demo": {"type": "mock"},
        },
        "models": {
            "instruct": {
                "targets": [
                    {"provider": "claude", "model": "x"},
                    {"provider": "oai", "model": "gpt-3.5-turbo-instruct"},
                ]
            },
            "instruct-azure": {"targets": [{"provider": "az", "model": "my-instruct"}]},
            "claude-only": {"targets": [{"provider": "claude", "model": "claude-sonnet-4-5"}]},
            "demo": {"targets": [{"provider": "demo", "model": "echo"}]},
        },
        **extra,
    }


def app(tmp_path: Path, upstreams: Upstreams | None = None, **extra: Any) -> Any:
    transport = httpx.MockTransport(upstreams or Upstreams())
    return create_app(settings_from_dict(config(tmp_path, **extra), {}), transport=transport)


async def test_the_openai_sdk_completes_streamed_and_not(tmp_path: Path) -> None:
    served = app(tmp_path)
    transport = httpx2.ASGITransport(cast(Any, served))
    async with AsyncTestClient(app=served), httpx2.AsyncClient(transport=transport) as http_client:
        client = openai.AsyncOpenAI(base_url="http://switchboard/v1", api_key="none", http_client=http_client)
        raw = await client.completions.with_raw_response.create(model="demo", prompt="hello there fox", max_tokens=2)
        Completion.model_validate_json(raw.http_response.content, strict=True)
        completion = raw.parse()
        assert completion.choices[0].text == "hello there "  # two words, as the mock splits them
        assert completion.choices[0].finish_reason == "length"
        stream = await client.completions.create(model="demo", prompt="hello there fox", stream=True)
        texts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
        assert "".join(texts) == "hello there fox"


async def test_openai_compatible_targets_get_the_body_as_sent(tmp_path: Path) -> None:
    upstreams = Upstreams()
    async with AsyncTestClient(app=app(tmp_path, upstreams)) as http:
        body = {"model": "instruct", "prompt": ["a", "b"], "max_tokens": 5, "echo": True, "suffix": "!"}
        answer = await http.post("/completions", json=body)  # without /v1, too
        assert answer.status_code == 200
        assert json.loads(answer.content) == ANSWER
        assert answer.headers["x-switchboard-target"] == "oai/gpt-3.5-turbo-instruct"  # claude passed over
        sent = upstreams.requests[-1]
        assert str(sent.url) == "http://oai.test/v1/completions"
        assert json.loads(sent.content) == {**body, "model": "gpt-3.5-turbo-instruct"}
        azure = await http.post("/v1/completions", json={"model": "instruct-azure", "prompt": "x"})
        assert azure.status_code == 200
        assert str(upstreams.requests[-1].url) == (
            "https://az.test/openai/deployments/my-instruct/completions?api-version=2024-10-21"
        )


async def test_an_alias_without_an_openai_compatible_target_is_a_400(tmp_path: Path) -> None:
    upstreams = Upstreams()
    async with AsyncTestClient(app=app(tmp_path, upstreams)) as http:
        answer = await http.post("/v1/completions", json={"model": "claude-only", "prompt": "x"})
        assert answer.status_code == 400
        error = check_error(answer.content)["error"]
        assert error["param"] == "model"
        assert "/v1/chat/completions" in error["message"]
        assert upstreams.requests == []
        for body, param in (({"model": "demo"}, "prompt"), ({"prompt": "x"}, "model")):
            bad = await http.post("/v1/completions", json=body)
            assert bad.status_code == 400
            assert check_error(bad.content)["error"]["param"] == param


async def test_keys_and_limits_apply(tmp_path: Path) -> None:
    extra: dict[str, Any] = {"auth": {"master_key": MASTER}, "database": {"url": f"sqlite:///{tmp_path / 'k.db'}"}}
    async with AsyncTestClient(app=app(tmp_path, **extra)) as http:
        key = (await http.post("/admin/keys", json={"name": "c", "rpm": 1, "models": ["demo"]}, headers=ADMIN)).json()[
            "key"
        ]
        body = {"model": "demo", "prompt": "hi"}
        assert (await http.post("/v1/completions", json=body)).status_code == 401
        assert (await http.post("/v1/completions", json=body, headers=bearer(key))).status_code == 200
        assert (await http.post("/v1/completions", json=body, headers=bearer(key))).status_code == 429
        other = await http.post("/v1/completions", json={**body, "model": "instruct"}, headers=bearer(key))
        assert other.status_code == 403


@pytest.mark.parametrize("stream", [False, True])
async def test_the_mock_serves_the_legacy_api_offline(tmp_path: Path, stream: bool) -> None:
    async with AsyncTestClient(app=app(tmp_path)) as http:
        answer = await http.post("/v1/completions", json={"model": "demo", "prompt": "one two", "stream": stream})
        assert answer.status_code == 200
        if stream:
            assert answer.text.endswith("data: [DONE]\n\n")
        else:
            assert Completion.model_validate_json(answer.content, strict=True).choices[0].text == "one two"


async def test_governed_models_are_refused_rather_than_passed_through(tmp_path: Path) -> None:
    settings = config(tmp_path)
    settings["models"]["demo"]["params"] = {"max_tokens": 5}
    async with AsyncTestClient(
        app=create_app(settings_from_dict(settings, {}), transport=httpx.MockTransport(Upstreams()))
    ) as http:
        answer = await http.post("/v1/completions", json={"model": "demo", "prompt": "hi", "max_tokens": 100000})
        assert answer.status_code == 400
        assert check_error(answer.content)["error"]["param"] == "model"


async def test_a_streamed_legacy_completion_asks_for_its_usage(tmp_path: Path) -> None:
    upstreams = Upstreams()
    async with AsyncTestClient(app=app(tmp_path, upstreams)) as http:
        await http.post("/v1/completions", json={"model": "instruct", "prompt": "x", "stream": True})
        assert json.loads(upstreams.requests[-1].content)["stream_options"] == {"include_usage": True}
        await http.post("/v1/completions", json={"model": "instruct", "prompt": "x"})
        assert "stream_options" not in json.loads(upstreams.requests[-1].content)
