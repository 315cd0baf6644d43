"""``POST /v1/embeddings``: the openai SDK in both encodings, every provider (OpenAI passed through,
Azure by deployment, Gemini translated, the mock's deterministic vectors, Anthropic passed over),
failover only within one embedding model, and keys, limits, usage and metrics as for chat."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any, cast

import httpx
import httpx2
import openai
import pytest
from litestar.testing import AsyncTestClient
from openai.types import CreateEmbeddingResponse

from providers.embeddings import as_base64, from_base64
from providers.mock import mock_vector
from router.app import create_app
from router.cli import main
from router.config import settings_from_dict
from tests.conformance import check_error
from tests.test_keys import ADMIN, MASTER, bearer

OPENAI_ANSWER = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 3, "total_tokens": 3},
}


class Upstreams:
    """OpenAI, Azure and Gemini embedding endpoints on fake hosts; ``down.test`` always fails."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host = request.url.host
        if host == "down.test":
            return httpx.Response(503, json={"error": {"message": "down", "type": "server_error"}})
        if host == "gemini.test":
            asked = json.loads(request.content)["requests"]
            values = [[float(i), 0.5, -0.5] for i in range(len(asked))]
            return httpx.Response(200, json={"embeddings": [{"values": v} for v in values]})
        return httpx.Response(200, json=OPENAI_ANSWER)


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "oai": {"type": "openai", "base_url": "http://oai.test/v1", "api_key": "sk-upstream"},
            "down": {"type": "openai", "base_url": "http://down.test/v1"},
            "az": {
                "type": "azure",
                "base_url": "https://az.test",
                "api_key": "az-key",
                "api_version": "2024-10-21",
            },
            "gem": {"type": "gemini", "base_url": "http://gemini.test", "api_key": "g-key"},
            "claude": {"type": "anthropic", "base_url": "http://claude.test", "api_key": "a-key"},
            "demo": {"type": "mock"},
        },
        "models": {
            "emb": {"targets": [{"provider": "oai", "model": "text-embedding-3-small"}]},
            "emb-failover": {
                "targets": [
                    {"provider": "down", "model": "text-embedding-3-small"},
                    {"provider": "claude", "model": "text-embedding-3-small"},
                    {"provider": "oai", "model": "text-embedding-3-small"},
                ]
            },
            "emb-mixed": {
                "targets": [
                    {"provider": "oai", "model": "text-embedding-3-small"},
                    {"provider": "gem", "model": "text-embedding-004"},
                ]
            },
            "emb-fallback": {
                "targets": [{"provider": "down", "model": "text-embedding-3-large"}],
                "fallbacks": ["emb"],
            },
            "emb-azure": {"targets": [{"provider": "az", "model": "my-embedder"}]},
            "emb-gemini": {"targets": [{"provider": "gem", "model": "text-embedding-004"}]},
            "demo": {"targets": [{"provider": "demo", "model": "echo"}]},
        },
        "resilience": {"retry": {"max_attempts": 1}},
        "pricing": {"text-embedding-3-small": {"input": 20, "output": 0}},
        **extra,
    }


def app(tmp_path: Path, upstreams: Upstreams | None = None, **extra: Any) -> Any:
    transport = httpx.MockTransport(upstreams or Upstreams())
    return create_app(settings_from_dict(config(tmp_path, **extra), {}), transport=transport)


async def test_the_openai_sdk_gets_the_same_vectors_as_floats_and_as_base64(tmp_path: Path) -> None:
    served = app(tmp_path)
    transport = httpx2.ASGITransport(cast(Any, served))
    async with AsyncTestClient(app=served), httpx2.AsyncClient(transport=transport) as http_client:
        client = openai.AsyncOpenAI(base_url="http://switchboard/v1", api_key="none", http_client=http_client)
        floats = await client.embeddings.create(model="demo", input=["a fox", "a dog"], encoding_format="float")
        default = await client.embeddings.create(model="demo", input=["a fox", "a dog"])  # the SDK asks base64
        assert [d.index for d in floats.data] == [0, 1]
        for a, b in zip(floats.data, default.data, strict=True):
            assert len(a.embedding) == len(b.embedding) == 256
            assert a.embedding == pytest.approx(b.embedding, abs=1e-6)  # float32 on the wire
        assert floats.data[0].embedding != floats.data[1].embedding
        assert math.isclose(sum(v * v for v in floats.data[0].embedding), 1.0, rel_tol=1e-6)
        again = await client.embeddings.create(model="demo", input="a fox", encoding_format="float", dimensions=8)
        assert again.data[0].embedding == pytest.approx(mock_vector("a fox", 8))  # deterministic
        assert floats.usage.prompt_tokens == floats.usage.total_tokens == 4


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_answers_match_openais_published_types(tmp_path: Path, encoding: str) -> None:
    async with AsyncTestClient(app=app(tmp_path)) as http:
        for model in ("demo", "emb-gemini", "emb"):
            answer = await http.post(
                "/v1/embeddings", json={"model": model, "input": "hi", "encoding_format": encoding}
            )
            assert answer.status_code == 200, answer.text
            listing = json.loads(answer.content)
            raw = listing["data"][0]["embedding"]
            if model != "emb":  # (the OpenAI fake answers floats whatever it is asked)
                assert isinstance(raw, str) == (encoding == "base64")
            if isinstance(raw, str):  # the SDK's type holds the vector its client decoded from base64
                for item in listing["data"]:
                    item["embedding"] = from_base64(item["embedding"])
            CreateEmbeddingResponse.model_validate_json(json.dumps(listing), strict=True)


async def test_openai_gets_the_body_as_sent_with_the_targets_model(tmp_path: Path) -> None:
    upstreams = Upstreams()
    async with AsyncTestClient(app=app(tmp_path, upstreams)) as http:
        body = {"model": "emb", "input": [[1, 2, 3]], "encoding_format": "base64", "dimensions": 64, "user": "u1"}
        answer = await http.post("/embeddings", json=body)  # without /v1
        assert answer.status_code == 200
        assert json.loads(answer.content) == OPENAI_ANSWER  # passed through
        sent = upstreams.requests[-1]
        assert str(sent.url) == "http://oai.test/v1/embeddings"
        assert sent.headers["authorization"] == "Bearer sk-upstream"
        assert json.loads(sent.content) == {**body, "model": "text-embedding-3-small"}
        assert answer.headers["x-switchboard-target"] == "oai/text-embedding-3-small"


async def test_azure_is_addressed_by_deployment(tmp_path: Path) -> None:
    upstreams = Upstreams()
    async with AsyncTestClient(app=app(tmp_path, upstreams)) as http:
        assert (await http.post("/v1/embeddings", json={"model": "emb-azure", "input": "hi"})).status_code == 200
        sent = upstreams.requests[-1]
        assert str(sent.url) == "https://az.test/openai/deployments/my-embedder/embeddings?api-version=2024-10-21"
        assert sent.headers["api-key"] == "az-key"


async def test_gemini_is_translated_both_ways(tmp_path: Path) -> None:
    upstreams = Upstreams()
    async with AsyncTestClient(app=app(tmp_path, upstreams)) as http:
        body = {"model": "emb-gemini", "input": ["one", "two"], "dimensions": 3}
        answer = await http.post("/v1/embeddings", json=body)
        assert answer.status_code == 200
        sent = upstreams.requests[-1]
        assert str(sent.url) == "http://gemini.test/v1beta/models/text-embedding-004:batchEmbedContents"
        assert sent.headers["x-goog-api-key"] == "g-key"
        assert json.loads(sent.content) == {
            "requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": t}]}, "outputDimensionality": 3}
                for t in ("one", "two")
            ]
        }
        listing = json.loads(answer.content)
        assert [d["embedding"] for d in listing["data"]] == [[0.0, 0.5, -0.5], [1.0, 0.5, -0.5]]
        assert listing["model"] == "text-embedding-004"
        assert listing["usage"]["prompt_tokens"] == listing["usage"]["total_tokens"] == 2  # estimated
        encoded = await http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
        vectors = [from_base64(d["embedding"]) for d in json.loads(encoded.content)["data"]]
        assert vectors == [[0.0, 0.5, -0.5], [1.0, 0.5, -0.5]]
        tokens = await http.post("/v1/embeddings", json={"model": "emb-gemini", "input": [1, 2, 3]})
        assert tokens.status_code == 400
        assert check_error(tokens.content)["error"]["param"] == "input"


async def test_failover_stays_within_one_embedding_model(tmp_path: Path) -> None:
    upstreams = Upstreams()
    async with AsyncTestClient(app=app(tmp_path, upstreams)) as http:
        moved = await http.post("/v1/embeddings", json={"model": "emb-failover", "input": "hi"})
        assert moved.status_code == 200
        assert moved.headers["x-switchboard-target"] == "oai/text-embedding-3-small"  # down failed, claude passed
        assert [r.url.host for r in upstreams.requests] == ["down.test", "oai.test"]
        mixed = await http.post("/v1/embeddings", json={"model": "emb-mixed", "input": "hi"})
        assert mixed.status_code == 400
        error = check_error(mixed.content)["error"]
        assert error["param"] == "model"
        assert "text-embedding-004, text-embedding-3-small" in error["message"]
        # the fallback serves another model: it is not used, the request fails
        fallback = await http.post("/v1/embeddings", json={"model": "emb-fallback", "input": "hi"})
        assert fallback.status_code == 502
        assert "oai.test" not in [r.url.host for r in upstreams.requests[3:]]
        # chat on the same mixed alias is fine: only embeddings need one model
        chat = await http.post(
            "/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "x"}]}
        )
        assert chat.status_code == 200


async def test_bad_requests_are_400s_naming_the_parameter(tmp_path: Path) -> None:
    async with AsyncTestClient(app=app(tmp_path)) as http:
        for body, param in (
            ({"model": "demo"}, "input"),
            ({"input": "x"}, "model"),
            ({"model": "demo", "input": []}, "input"),
            ({"model": "demo", "input": ""}, "input"),
            ({"model": "demo", "input": ["a", ""]}, "input[1]"),
            ({"model": "demo", "input": ["a", 1]}, "input"),
            ({"model": "demo", "input": "a", "encoding_format": "int8"}, "encoding_format"),
            ({"model": "demo", "input": "a", "dimensions": 0}, "dimensions"),
            ({"model": "nope", "input": "a"}, "model"),
        ):
            answer = await http.post("/v1/embeddings", json=body)
            assert answer.status_code in (400, 404), (body, answer.text)
            assert check_error(answer.content)["error"]["param"] == param, body


async def test_keys_limits_usage_and_metrics_apply(tmp_path: Path) -> None:
    extra: dict[str, Any] = {"auth": {"master_key": MASTER}, "database": {"url": f"sqlite:///{tmp_path / 'k.db'}"}}
    async with AsyncTestClient(app=app(tmp_path, **extra)) as http:
        created = await http.post("/admin/keys", json={"name": "e", "models": ["emb"], "rpm": 2}, headers=ADMIN)
        key = created.json()["key"]
        assert (await http.post("/v1/embeddings", json={"model": "emb", "input": "hi"})).status_code == 401
        first = await http.post("/v1/embeddings", json={"model": "emb", "input": "hi"}, headers=bearer(key))
        assert first.status_code == 200
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        other = await http.post("/v1/embeddings", json={"model": "demo", "input": "hi"}, headers=bearer(key))
        assert other.status_code == 403
        assert (
            await http.post("/v1/embeddings", json={"model": "emb", "input": "hi"}, headers=bearer(key))
        ).status_code == 200
        limited = await http.post("/v1/embeddings", json={"model": "emb", "input": "hi"}, headers=bearer(key))
        assert limited.status_code == 429
        metrics = (await http.get("/metrics", headers=ADMIN)).text
        assert 'gen_ai_operation_name="embeddings"' in metrics
        usage: list[dict[str, Any]] = []
        for _ in range(30):  # spend reaches the database within a second
            usage = (await http.get("/admin/usage", params={"group_by": "model"}, headers=ADMIN)).json()["data"]
            if usage:
                break
            await asyncio.sleep(0.1)
        assert usage[0]["group"] == "emb"
        assert usage[0]["requests"] == 2
        assert usage[0]["prompt_tokens"] == 6
        assert usage[0]["cost_usd"] == pytest.approx(6 * 20 / 1e6)


def test_check_says_which_aliases_cannot_serve_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)))
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "not for /v1/embeddings: its targets serve different models (text-embedding-004, text-embedding-3-small)" in out
    )
    assert out.count("not for /v1/embeddings") == 1


def test_base64_is_little_endian_float32() -> None:
    assert as_base64([1.0, -2.0]) == "AACAPwAAAMA="
    assert from_base64("AACAPwAAAMA=") == [1.0, -2.0]


async def test_spans_name_the_embeddings_operation(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from router.telemetry.spans import Tracing

    exporter = InMemorySpanExporter()
    settings = settings_from_dict(config(tmp_path), {})
    served = create_app(
        settings, transport=httpx.MockTransport(Upstreams()), tracing=Tracing(SimpleSpanProcessor(exporter))
    )
    async with AsyncTestClient(app=served) as http:
        assert (await http.post("/v1/embeddings", json={"model": "emb", "input": "hi"})).status_code == 200
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    (client,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert server.name == "POST /v1/embeddings"
    assert client.name == "embeddings text-embedding-3-small"
    assert client.attributes is not None
    assert client.attributes["gen_ai.operation.name"] == "embeddings"
