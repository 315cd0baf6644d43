"""What a hostile client can send, through the whole app, to every kind of target: deep nesting
in any field, invalid UTF-8 anywhere, wrong shapes in every field a translation reads, path
tricks in direct routing. Every answer is an OpenAI-shaped 4xx or a 200, never a 500, and nothing
malformed reaches an upstream."""

from __future__ import annotations

import logging
import random
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.config import settings_from_dict
from tests.conftest import fixture_bytes

PROVIDERS: dict[str, dict[str, Any]] = {
    "up": {"type": "openai", "base_url": "http://up.test/v1", "api_key": "k-up"},
    "az": {"type": "azure", "base_url": "https://az.test", "api_key": "k-az"},
    "claude": {"type": "anthropic", "base_url": "https://claude.test", "api_key": "k-claude"},
    "gem": {"type": "gemini", "base_url": "https://gem.test", "api_key": "k-gem"},
}
MODELS = ["up", "az", "claude", "gem"]
DEEP = 1500  # past the decoder's recursion limit (about 1,000 levels)


class Upstreams:
    """Every provider's fake, answering from the recorded fixtures; keeps what reached it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.content)
        vendor = {"claude.test": "anthropic", "gem.test": "gemini"}.get(request.url.host, "openai")
        if request.headers.get("accept") == "text/event-stream":
            raw = fixture_bytes(vendor, "stream_text.sse")
            return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})
        name = {"anthropic": "message_text.json", "gemini": "generate_text.json"}.get(vendor, "completion.json")
        return httpx.Response(200, content=fixture_bytes(vendor, name), headers={"content-type": "application/json"})


def client(upstreams: Upstreams, max_body_bytes: int = 1 << 20) -> AsyncTestClient[Any]:
    settings = settings_from_dict(
        {
            "server": {"max_body_bytes": max_body_bytes},
            "providers": PROVIDERS,
            "models": {name: {"targets": [{"provider": name, "model": f"{name}-model"}]} for name in MODELS},
        },
        {},
    )
    return AsyncTestClient(app=create_app(settings, transport=httpx.MockTransport(upstreams)))


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = msgspec.json.decode(response.content)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    error: dict[str, Any] = body["error"]
    return error


def nested(kind: str) -> str:
    return "[" * DEEP + "]" * DEEP if kind == "array" else '{"a":' * DEEP + "1" + "}" * DEEP


HELLO: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
DEEP_MARK = "__deep__"


def with_deep(body: dict[str, Any], kind: str) -> bytes:
    """``body`` as JSON with the string ``DEEP_MARK`` replaced by JSON nested ``DEEP`` levels."""
    return msgspec.json.encode(body).replace(b'"' + DEEP_MARK.encode() + b'"', nested(kind).encode())


def call(arguments: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}],
    }


DEEP_BODIES: dict[str, tuple[dict[str, Any], str, str]] = {
    # field → (body with the deep value in it, what is nested, the param the 400 must name)
    "content": ({"messages": [{"role": "user", "content": DEEP_MARK}]}, "array", "messages[0].content"),
    "content-part": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "extra": DEEP_MARK}]}]},
        "object",
        "messages[0].content",
    ),
    "pass-through": ({"messages": HELLO, "vendor_field": DEEP_MARK}, "array", "vendor_field"),
    "tool-parameters": (
        {"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": DEEP_MARK}}]},
        "object",
        "tools[0].function.parameters",
    ),
    "response-format": (
        {
            "messages": HELLO,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": DEEP_MARK}},
        },
        "object",
        "response_format.json_schema.schema",
    ),
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("field", sorted(DEEP_BODIES))
async def test_json_nested_too_deeply_is_a_400_naming_the_parameter(
    model: str, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: ~1,000 levels of nesting in any field raised RecursionError: a 500 and a traceback."""
    upstreams = Upstreams()
    template, kind, param = DEEP_BODIES[field]
    async with client(upstreams) as http:
        response = await http.post("/v1/chat/completions", content=with_deep({"model": model, **template}, kind))
    error = error_of(response, 400)
    assert str(error["param"]).startswith(param)  # the field, then at most a few levels into it
    assert "nested too deeply" in error["message"]
    assert upstreams.bodies == []
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("model", ["claude", "gem"])
async def test_tool_call_arguments_nested_too_deeply_are_a_400(model: str) -> None:
    """The arguments are a JSON string the translation must parse for Anthropic and Gemini."""
    body = {"model": model, "messages": [*HELLO, call(nested("object"))]}
    upstreams = Upstreams()
    async with client(upstreams) as http:
        response = await http.post("/v1/chat/completions", json=body)
    error = error_of(response, 400)
    assert error["param"] == "messages[1].tool_calls[0].function.arguments"
    assert upstreams.bodies == []


async def test_a_gemini_tool_result_nested_too_deeply_is_a_400() -> None:
    result = '{"r":' + nested("array") + "}"
    body = {"model": "gem", "messages": [*HELLO, call("{}"), {"role": "tool", "tool_call_id": "c1", "content": result}]}
    upstreams = Upstreams()
    async with client(upstreams) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert error_of(response, 400)["param"] == "messages[2].content"
    assert upstreams.bodies == []


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model":"%s","messages":[{"role":"user","content":"hi"}],"vendor":"\xff\xfe"}', "vendor"),
        (b'{"model":"%s","messages":[{"role":"user","content":"hi"}],"metadata2":{"k":["ok","\xc3"]}}', "metadata2"),
        (b'{"model":"%s","messages":[{"role":"user","content":"hi","x":"\xed\xa0\x80"}]}', "messages"),
    ],
    ids=["unknown-field", "nested-unknown", "unknown-in-message"],
)
async def test_invalid_utf8_anywhere_is_a_400_and_never_reaches_an_upstream(
    model: str, body: bytes, param: str
) -> None:
    """Regression: invalid UTF-8 in a field Switchboard does not know was forwarded as it came."""
    upstreams = Upstreams()
    async with client(upstreams) as http:
        response = await http.post("/v1/chat/completions", content=body.replace(b"%s", model.encode()))
    error = error_of(response, 400)
    assert error["param"] == param
    assert "UTF-8" in error["message"]
    assert upstreams.bodies == []


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": "x"},
        {"type": "json_schema", "json_schema": ["x"]},
        {"type": "json_schema", "json_schema": {"name": 3}},
        {"type": "json_schema", "json_schema": {"description": []}},
        {"type": "json_object", "json_schema": 1},
    ],
)
async def test_a_malformed_response_format_is_a_400_naming_it(model: str, response_format: dict[str, Any]) -> None:
    """Regression: `json_schema: "x"` to an Anthropic or Gemini target raised an uncaught msgspec error."""
    upstreams = Upstreams()
    async with client(upstreams) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "response_format": response_format},
        )
    error = error_of(response, 400)
    assert str(error["param"]).startswith("response_format.json_schema")
    assert upstreams.bodies == []


@pytest.mark.parametrize("deployment", ["..", "."])
async def test_azure_dot_segment_deployments_never_reach_another_path(deployment: str) -> None:
    """Regression: `azure/..` was joined into the URL path and resolved to another path on the host."""
    upstreams = Upstreams()
    async with client(upstreams) as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": f"az/{deployment}", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert response.status_code in (400, 404)
    error_of(response, response.status_code)
    assert upstreams.bodies == []


async def test_azure_adapter_refuses_dot_segments_itself() -> None:
    """Direct routing refuses them first; the adapter holds the line whoever calls it."""
    from providers.errors import UntranslatableRequest
    from providers.openai import AzureProvider

    azure = AzureProvider("az", "https://az.test", "k", "2024-10-21")
    for name in ("..", "."):
        with pytest.raises(UntranslatableRequest):
            azure.url_for(name)
    assert azure.url_for("a/../b").raw_path.startswith(b"/openai/deployments/a%2F..%2Fb/chat/completions?")


# ---- the fuzz: every provider, nesting, every field a translation reads -----------------------

SCALARS: list[Any] = [None, True, 0, -1, 3.5, 1e308, "", "x", "\u0000", "a" * 300]


def garbage(rng: random.Random, depth: int = 0) -> Any:
    if depth > 3 or rng.random() < 0.5:
        return rng.choice(SCALARS)
    if rng.random() < 0.5:
        return [garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["type", "text", "image_url", "url", "name", "arguments", "function", "id", "schema", "content", "a"]
    return {k: garbage(rng, depth + 1) for k in rng.sample(keys, rng.randint(0, 3))}


def message(rng: random.Random) -> dict[str, Any]:
    role = rng.choice(["system", "developer", "user", "assistant", "tool", "function", "x"])
    out: dict[str, Any] = {"role": role, "content": rng.choice(["hi", None, garbage(rng)])}
    if rng.random() < 0.5:
        out["content"] = [
            rng.choice(
                [
                    {"type": "text", "text": garbage(rng)},
                    {
                        "type": "image_url",
                        "image_url": {"url": rng.choice(["data:x", "data:image/png;base64,@@", "x"])},
                    },
                    {"type": "input_audio", "input_audio": garbage(rng)},
                    garbage(rng),
                ]
            )
            for _ in range(rng.randint(1, 3))
        ]
    if role == "assistant" and rng.random() < 0.6:
        arguments = rng.choice(['{"a":1}', "[1]", "{", nested("array"), garbage(rng)])
        out["tool_calls"] = [
            {"id": rng.choice(["c1", 3]), "type": "function", "function": {"name": "f", "arguments": arguments}}
        ]
    if role == "tool":
        out["tool_call_id"] = rng.choice(["c1", "unknown", None])
        out["content"] = rng.choice(['{"ok":true}', nested("object"), "text", garbage(rng)])
    return out


def fuzz_bodies(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    fields: dict[str, Any] = {
        "temperature": lambda: rng.choice([0.5, 3, -1, "x", None]),
        "top_p": lambda: rng.choice([0.5, 2, None]),
        "max_tokens": lambda: rng.choice([1, 0, -5, 10**12, "x"]),
        "max_completion_tokens": lambda: rng.choice([5, 0, None]),
        "stop": lambda: rng.choice(["x", ["a", "b"], [1], 3]),
        "n": lambda: rng.choice([1, 2, 0]),
        "seed": lambda: rng.choice([1, "x"]),
        "user": lambda: rng.choice(["u", 3]),
        "tools": lambda: [
            {
                "type": "function",
                "function": {
                    "name": rng.choice(["f", 3]),
                    "parameters": rng.choice([{}, nested("object"), garbage(rng)]),
                },
            }
        ],
        "tool_choice": lambda: rng.choice(["none", "auto", "required", "bad", {"type": "function"}, garbage(rng)]),
        "parallel_tool_calls": lambda: rng.choice([True, False, "x"]),
        "response_format": lambda: rng.choice(
            [{"type": "json_schema", "json_schema": garbage(rng)}, {"type": "json_object"}, garbage(rng)]
        ),
        "stream": lambda: rng.choice([True, False, "yes"]),
        "stream_options": lambda: rng.choice([{"include_usage": True}, garbage(rng)]),
        "vendor": lambda: rng.choice([garbage(rng), nested("array")]),
    }
    bodies: list[bytes] = []
    for _ in range(count):
        body: dict[str, Any] = {
            "model": rng.choice(MODELS),
            "messages": [{"role": "user", "content": "x"}] + [message(rng) for _ in range(rng.randint(0, 3))],
        }
        for name in rng.sample(sorted(fields), rng.randint(0, 5)):
            body[name] = fields[name]()
        raw = msgspec.json.encode(body)
        if rng.random() < 0.15:
            cut = rng.randint(0, len(raw) - 1)
            raw = raw[:cut] + bytes([rng.randint(128, 255)]) + raw[cut + 1 :]
        bodies.append(raw)
    return bodies


async def test_fuzzed_bodies_to_every_provider_never_give_a_500(caplog: pytest.LogCaptureFixture) -> None:
    upstreams = Upstreams()
    statuses: set[int] = set()
    async with client(upstreams) as http:
        for body in fuzz_bodies(seed=20261130, count=600):
            response = await http.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            statuses.add(response.status_code)
            assert response.status_code < 500, (body[:300], response.text)
            if response.status_code != 200:
                error_of(response, response.status_code)
    assert {200, 400} <= statuses  # the fuzz reaches both sides
    for sent in upstreams.bodies:  # whatever reached an upstream is valid UTF-8 JSON
        msgspec.json.decode(sent.decode("utf-8"))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
