"""Everything Switchboard emits, checked against OpenAI's published types in strict mode
(``tests/conformance.py``): every recorded fixture through every provider type that speaks its
format, streamed and not, with and without ``include_usage``; the mock provider; client errors;
upstream failures before and after a stream started; ``/v1/models``; and the exact bytes of each
outbound wire type. The fixtures are globbed: a new file under ``tests/fixtures/<provider>/`` is
picked up by its name and extension.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, cast

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from providers.schema import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    ErrorBody,
    ErrorEnvelope,
    FunctionCallDelta,
    FunctionCallOut,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    ResponseMessage,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)
from router.app import create_app
from router.config import settings_from_dict
from tests.conformance import (
    ConformanceError,
    StreamSummary,
    check_chunk,
    check_completion,
    check_error,
    check_models,
    check_stream,
)
from tests.conftest import FIXTURES, fixture_bytes
from tests.fakes import TOOL_COMPLETION

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]
ALIAS: Final = "m"
UPSTREAM_MODEL: Final = "upstream-model"
MAX_BODY: Final = 4096
HELLO: Final = ({"role": "user", "content": "hi"},)
TRANSLATED: Final = frozenset({"anthropic", "gemini", "mock"})  # answers Switchboard builds itself
STATUS_IN_NAME: Final = re.compile(r"_(\d{3})$")


def provider_config(kind: str, **extra: Any) -> dict[str, Any]:
    """One provider entry of each type, addressed at a host that only the mock transport knows."""
    if kind == "openai":
        return {"type": "openai", "base_url": "https://openai.test/v1", "api_key": "sk-test-key", **extra}
    if kind == "azure":
        return {"type": "azure", "base_url": "https://res.openai.azure.com", "api_key": "az-key", **extra}
    if kind == "anthropic":
        return {"type": "anthropic", "base_url": "https://anthropic.test", "api_key": "ak-key", **extra}
    if kind == "gemini":
        return {"type": "gemini", "base_url": "https://gemini.test", "api_key": "gk-key", **extra}
    if kind == "mock":
        return {"type": "mock", **extra}
    raise ValueError(f"no provider type {kind!r}")


def speakers(fixture_dir: str) -> tuple[str, ...]:
    """The provider types whose upstream speaks the wire format of ``fixtures/<fixture_dir>``."""
    if fixture_dir == "openai":
        return ("openai", "azure")  # Azure speaks OpenAI's format
    if fixture_dir in ("azure", "anthropic", "gemini"):
        return (fixture_dir,)
    return ()


class FakeSleep:
    """Retry waits are skipped."""

    async def __call__(self, seconds: float) -> None:
        return None


@asynccontextmanager
async def app_client(
    kind: str, handler: Handler, *, provider: dict[str, Any] | None = None, **resilience: Any
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The whole app with one alias, ``m``, on one provider of type ``kind`` whose upstream is ``handler``."""
    async with AsyncTestClient(app=make_app(kind, handler, provider=provider, **resilience)) as client:
        yield client


def make_app(kind: str, handler: Handler, *, provider: dict[str, Any] | None = None, **resilience: Any) -> Litestar:
    settings = settings_from_dict(
        {
            "server": {"max_body_bytes": MAX_BODY},
            "providers": {kind: provider or provider_config(kind)},
            "models": {ALIAS: {"targets": [{"provider": kind, "model": UPSTREAM_MODEL}]}},
            "resilience": resilience,
        },
        {},
    )

    async def upstream(request: httpx.Request) -> httpx.Response:
        answer = handler(request)
        return answer if isinstance(answer, httpx.Response) else await answer

    return create_app(settings, transport=httpx.MockTransport(upstream), sleep=FakeSleep())


def chat(*, stream: bool = False, include_usage: bool | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": ALIAS, "messages": list(HELLO), "stream": stream, **extra}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    return body


def tools() -> list[dict[str, Any]]:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "tz": {"type": "string"}}}
    return [
        {"type": "function", "function": {"name": "get_weather", "parameters": schema}},
        {"type": "function", "function": {"name": "get_time", "parameters": schema}},
    ]


def json_answer(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": "application/json"})


def sse_answer(body: bytes, read_size: int | None = None) -> httpx.Response:
    """A stream in one read, or in reads of ``read_size`` bytes (split anywhere, as networks do)."""
    if read_size is None:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    async def reads() -> AsyncIterator[bytes]:
        for start in range(0, len(body), read_size):
            yield body[start : start + read_size]

    return httpx.Response(200, content=reads(), headers={"content-type": "text/event-stream"})


def answering(response: Callable[[], httpx.Response]) -> Handler:
    """Every upstream call gets a fresh response (retries read the body again)."""
    return lambda _: response()


# ---- checked responses ----------------------------------------------------------------------------


def checked_answer(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return check_completion(response.content)


def checked_stream(response: httpx.Response, *, azure: bool = False) -> StreamSummary:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return check_stream(response.content, allow_azure_prelude=azure)


def checked_error(response: httpx.Response, status: int | None = None, code: str | None = None) -> dict[str, Any]:
    assert response.status_code >= 400, response.text
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = check_error(response.content)["error"]
    if code is not None:
        assert error["code"] == code, error
    return error


# ---- every recorded fixture, through every provider type that speaks its format ---------------------


def served_status(path: Path) -> int:
    """How a recorded JSON answer is served: the status its name ends with (``error_auth_401``),
    else for an error the status its body names (``"code": 400``), else 200."""
    if path.suffix != ".json":
        return 200
    if match := STATUS_IN_NAME.search(path.stem):
        return int(match.group(1))
    if "error" not in path.stem:
        return 200
    body = msgspec.json.decode(path.read_bytes())
    for holder in (body.get("error"), body) if isinstance(body, dict) else ():
        if isinstance(holder, dict) and type(holder.get("code")) is int and 400 <= holder["code"] < 600:
            return int(holder["code"])
    return 500


def served(path: Path) -> tuple[int, bytes]:
    return served_status(path), path.read_bytes()


def fixture_cases(extension: str) -> Iterator[Any]:
    for path in sorted(p for p in FIXTURES.glob("*/*") if p.is_file()):
        name = f"{path.parent.name}/{path.name}"
        kinds = speakers(path.parent.name)
        if path.suffix not in (".json", ".sse"):
            if extension == ".json":  # reported once
                yield pytest.param(path, "", id=name, marks=pytest.mark.skip(reason=f"{name}: not a .json or .sse"))
            continue
        if path.suffix != extension:
            continue
        if not kinds:
            reason = f"{name}: no provider type speaks the format of fixtures/{path.parent.name}/"
            yield pytest.param(path, "", id=name, marks=pytest.mark.skip(reason=reason))
        for kind in kinds:
            yield pytest.param(path, kind, id=f"{name}-via-{kind}")


def request_for(path: Path, *, stream: bool, include_usage: bool | None = None) -> dict[str, Any]:
    """What a client would have sent to get this answer: tools for tool calls, a JSON schema for
    the forced-JSON answer."""
    if "json" in path.stem:
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        return chat(stream=stream, include_usage=include_usage, response_format=_json_schema(schema))
    if "tool" in path.stem or "function" in path.stem:
        return chat(stream=stream, include_usage=include_usage, tools=tools())
    return chat(stream=stream, include_usage=include_usage)


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


@pytest.mark.parametrize(("path", "kind"), list(fixture_cases(".json")))
async def test_every_recorded_answer_and_error(path: Path, kind: str) -> None:
    status, body = served(path)
    async with app_client(kind, answering(lambda: json_answer(body, status))) as client:
        response = await client.post("/v1/chat/completions", json=request_for(path, stream=False))
    if status >= 400:
        checked_error(response)
        assert response.status_code != 500, "an upstream error is not an internal error"
        return
    completion = checked_answer(response)
    if "tool" in path.stem or "function" in path.stem:
        calls = completion["choices"][0]["message"]["tool_calls"]
        assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
        assert completion["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("read_size", [None, 7], ids=["one-read", "7-byte-reads"])
@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "usage"])
@pytest.mark.parametrize(("path", "kind"), list(fixture_cases(".sse")))
async def test_every_recorded_stream(path: Path, kind: str, include_usage: bool, read_size: int | None) -> None:
    _, raw = served(path)
    failing = "error" in path.stem or "overloaded" in path.stem
    async with app_client(kind, answering(lambda: sse_answer(raw, read_size))) as client:
        request = request_for(path, stream=True, include_usage=include_usage)
        response = await client.post("/v1/chat/completions", json=request)
    if response.status_code != 200:
        assert failing, f"{path.name} is an answer, got {response.status_code}: {response.text}"
        checked_error(response)
        assert response.status_code != 500, "an upstream error is not an internal error"
        return
    summary = checked_stream(response, azure=kind == "azure")
    assert (summary.error is not None) == failing, summary.error
    if failing:
        return
    if kind in TRANSLATED:
        assert (summary.usage is not None) == include_usage
    if ("tool" in path.stem or "function" in path.stem) and "json" not in path.stem:
        assert [c.name for c in summary.tool_calls[0]] == ["get_weather", "get_time"]
        assert summary.finish_reasons[0] == "tool_calls"


@pytest.mark.parametrize("kind", ["openai", "azure"])
async def test_a_tool_call_answer_from_an_openai_compatible_upstream(kind: str) -> None:
    async with app_client(kind, answering(lambda: json_answer(TOOL_COMPLETION))) as client:
        response = await client.post("/v1/chat/completions", json=chat(tools=tools()))
    assert checked_answer(response)["choices"][0]["message"]["tool_calls"][0]["type"] == "function"


# ---- the mock provider -------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [None, 2], ids=["whole", "length"])
@pytest.mark.parametrize("model", ["echo", "canned"])
@pytest.mark.parametrize(
    ("stream", "include_usage"),
    [(False, None), (True, None), (True, False), (True, True)],
    ids=["answer", "stream", "stream-usage-false", "stream-usage-true"],
)
async def test_mock_provider(stream: bool, include_usage: bool | None, model: str, max_tokens: int | None) -> None:
    settings = settings_from_dict(
        {
            "providers": {"demo": {"type": "mock"}},
            "models": {ALIAS: {"targets": [{"provider": "demo", "model": model}]}},
        },
        {},
    )
    body = chat(stream=stream, include_usage=include_usage, messages=[{"role": "user", "content": "one two three"}])
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.post("/v1/chat/completions", json=body)
    finish = "length" if max_tokens is not None else "stop"
    if not stream:
        assert checked_answer(response)["choices"][0]["finish_reason"] == finish
        return
    summary = checked_stream(response)
    assert summary.done
    assert summary.finish_reasons == {0: finish}
    assert (summary.usage is not None) == bool(include_usage)
    if model == "echo" and max_tokens is None:
        assert summary.content[0] == "one two three"


# ---- client errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"", 400, "invalid_json"),
        (
            "POST",
            "/v1/chat/completions",
            b'{"messages":[{"role":"user","content":"x"}]}',
            400,
            "missing_required_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model":"m","messages":[{"role":"user","content":5}]}',
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}',
            400,
            "invalid_value",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model":"nope","messages":[{"role":"user","content":"x"}]}',
            404,
            "model_not_found",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model":"nope","stream":true,"messages":[{"role":"user","content":"x"}]}',
            404,
            "model_not_found",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * MAX_BODY + b'"}]}',
            413,
            "request_too_large",
        ),
        ("GET", "/v1/nothing", b"", 404, "not_found"),
        ("POST", "/v1/completions", b"{}", 400, "missing_required_parameter"),
        ("GET", "/v1/chat/completions", b"", 405, "method_not_allowed"),
        ("DELETE", "/v1/models", b"", 405, "method_not_allowed"),
    ],
    ids=[
        "bad-json",
        "not-an-object",
        "empty-body",
        "missing-model",
        "wrong-type",
        "bad-value",
        "unknown-model",
        "unknown-model-streamed",
        "body-too-large",
        "unknown-route",
        "legacy-route-empty-body",
        "wrong-method",
        "wrong-method-models",
    ],
)
async def test_client_errors(method: str, path: str, body: bytes, status: int, code: str | None) -> None:
    calls: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return json_answer(fixture_bytes("openai", "completion.json"))

    async with app_client("openai", upstream) as client:
        response = await client.request(method, path, content=body, headers={"content-type": "application/json"})
    checked_error(response, status, code)
    assert calls == []


@pytest.mark.parametrize(
    ("kind", "provider", "extra", "code"),
    [
        ("anthropic", {"drop_unsupported_params": False}, {"seed": 3}, "unsupported_parameter"),
        ("gemini", {"drop_unsupported_params": False}, {"logit_bias": {"1": 1}}, "unsupported_parameter"),
        (
            "anthropic",
            {},
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}],
                    }
                ]
            },
            "unsupported_for_target",
        ),
    ],
    ids=["anthropic-strict-params", "gemini-strict-params", "untranslatable-content"],
)
async def test_requests_a_target_cannot_express(
    kind: str, provider: dict[str, Any], extra: dict[str, Any], code: str
) -> None:
    async with app_client(
        kind, answering(lambda: json_answer(b"{}")), provider=provider_config(kind, **provider)
    ) as client:
        response = await client.post("/v1/chat/completions", json=chat(**extra))
    checked_error(response, 400, code)


# ---- upstream failures -------------------------------------------------------------------------------


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def _explode(request: httpx.Request) -> httpx.Response:
    raise RuntimeError("a bug")


async def _hang(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(30)
    return json_answer(b"{}")


def _failure_cases() -> Iterator[Any]:
    for kind in ("openai", "azure", "anthropic", "gemini"):
        for stream in (False, True):
            mode = "stream" if stream else "answer"
            yield pytest.param(kind, stream, _refuse, {}, 502, "upstream_failed", id=f"{kind}-{mode}-connect-error")
            yield pytest.param(kind, stream, _read_timeout, {}, 504, "timeout", id=f"{kind}-{mode}-read-timeout")
            yield pytest.param(
                kind,
                stream,
                answering(lambda: json_answer(b"<html>bad gateway</html>", 500)),
                {},
                502,
                "upstream_failed",
                id=f"{kind}-{mode}-500",
            )
            yield pytest.param(
                kind,
                stream,
                answering(lambda: json_answer(b'{"error":{"message":"busy"}}', 503)),
                {},
                502,
                "upstream_failed",
                id=f"{kind}-{mode}-503",
            )
            yield pytest.param(
                kind,
                stream,
                answering(lambda: json_answer(b'{"error":{"message":"slow down"}}', 429)),
                {},
                502,
                "upstream_failed",
                id=f"{kind}-{mode}-429",
            )
            garbage = (lambda: sse_answer(b"data: {truncated\n\n")) if stream else (lambda: json_answer(b"{truncated"))
            yield pytest.param(
                kind, stream, answering(garbage), {}, 502, "upstream_failed", id=f"{kind}-{mode}-malformed"
            )
            yield pytest.param(kind, stream, _explode, {}, 500, "internal_error", id=f"{kind}-{mode}-internal-error")
        hang_timeouts = {"timeouts": {"attempt_s": 0.05, "first_token_s": 0.05}}
        yield pytest.param(kind, True, _hang, hang_timeouts, 504, "timeout", id=f"{kind}-stream-no-first-token")
        yield pytest.param(kind, False, _hang, hang_timeouts, 504, "timeout", id=f"{kind}-answer-attempt-timeout")


@pytest.mark.parametrize(("kind", "stream", "handler", "resilience", "status", "code"), list(_failure_cases()))
async def test_upstream_failures_before_any_chunk_are_http_errors(
    kind: str, stream: bool, handler: Handler, resilience: dict[str, Any], status: int, code: str
) -> None:
    async with app_client(kind, handler, **resilience) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=stream))
    checked_error(response, status, code)


@pytest.mark.parametrize("stream", [False, True])
async def test_no_target_available_is_a_503(stream: bool) -> None:
    provider = provider_config("openai", api_key="${CONFORMANCE_UNSET_KEY:-}")
    async with app_client("openai", answering(lambda: json_answer(b"{}")), provider=provider) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=stream))
    checked_error(response, 503, "no_target_available")


@pytest.mark.parametrize("stream", [False, True])
async def test_mock_failure_injection_is_a_502(stream: bool) -> None:
    provider = provider_config("mock", failure_rate=1.0, failure_status=503)
    async with app_client("mock", answering(lambda: json_answer(b"{}")), provider=provider) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=stream))
    checked_error(response, 502, "upstream_failed")


async def test_a_full_gateway_is_a_429() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        entered.set()
        await release.wait()
        return json_answer(fixture_bytes("openai", "completion.json"))

    app = make_app("openai", slow, max_concurrent=1)
    # The test client runs the lifespan (which builds the gateway) but serves one request at a
    # time, on its own loop: two at once go straight to the ASGI app, on this loop.
    async with (
        AsyncTestClient(app=app),
        httpx.AsyncClient(transport=httpx.ASGITransport(cast(Any, app)), base_url="http://t") as client,
    ):
        first = asyncio.create_task(client.post("/v1/chat/completions", json=chat()))
        await asyncio.wait_for(entered.wait(), 5)
        refused = await client.post("/v1/chat/completions", json=chat())
        release.set()
        answered = await first
    checked_error(refused, 429, "gateway_overloaded")
    checked_answer(answered)


def _first_event(provider_dir: str, name: str, count: int = 1) -> bytes:
    raw = fixture_bytes(provider_dir, name).replace(b"\r\n", b"\n")
    return b"".join(event + b"\n\n" for event in raw.split(b"\n\n")[:count])


def _midstream_cases() -> Iterator[Any]:
    openai_first = _first_event("openai", "stream_text.sse", 2)
    anthropic_first = _first_event("anthropic", "stream_text.sse", 4)
    gemini_first = _first_event("gemini", "stream_text.sse")
    for kind in ("openai", "azure"):
        yield pytest.param(
            kind, openai_first + b'data: {"error":{"message":"boom","code":500}}\n\n', id=f"{kind}-error-event"
        )
        yield pytest.param(kind, openai_first + b"data: {garbage\n\n", id=f"{kind}-garbage")
        yield pytest.param(kind, openai_first, id=f"{kind}-cut-short")
    error = b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"Internal"}}\n\n'
    yield pytest.param("anthropic", anthropic_first + error, id="anthropic-error-event")
    yield pytest.param("anthropic", anthropic_first, id="anthropic-cut-short")
    yield pytest.param(
        "anthropic", anthropic_first + b"event: content_block_delta\ndata: {x\n\n", id="anthropic-garbage"
    )
    gemini_error = b'data: {"error":{"code":500,"message":"Internal error","status":"INTERNAL"}}\n\n'
    yield pytest.param("gemini", gemini_first + gemini_error, id="gemini-error-event")
    yield pytest.param("gemini", gemini_first, id="gemini-cut-short")
    yield pytest.param("gemini", gemini_first + b"data: {x\n\n", id="gemini-garbage")


@pytest.mark.parametrize(("kind", "raw"), list(_midstream_cases()))
async def test_failures_after_the_first_chunk_are_one_error_event(kind: str, raw: bytes) -> None:
    async with app_client(kind, answering(lambda: sse_answer(raw))) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=True, include_usage=True))
    summary = checked_stream(response)
    assert summary.error is not None
    assert not summary.done


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_an_idle_stream_ends_with_a_timeout_event(kind: str) -> None:
    first = _first_event(kind, "stream_text.sse", 4 if kind == "anthropic" else 1)  # up to the first text

    async def trickle() -> AsyncIterator[bytes]:
        yield first
        await asyncio.sleep(30)

    handler = answering(lambda: httpx.Response(200, content=trickle(), headers={"content-type": "text/event-stream"}))
    async with app_client(kind, handler, timeouts={"idle_s": 0.05}) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
    summary = checked_stream(response)
    assert summary.error is not None
    assert summary.error["code"] == "timeout"


# ---- /v1/models ----------------------------------------------------------------------------------------


async def test_models() -> None:
    async with app_client("openai", answering(lambda: json_answer(b"{}"))) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert [m["id"] for m in check_models(response.content)["data"]] == [ALIAS]


# ---- product bugs found by this suite (fixed) --------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "azure"])
async def test_a_multi_line_data_event_is_relayed_as_one_data_line(kind: str) -> None:
    # SSE lets an event's data span several `data:` lines, joined with "\n": here the JSON of
    # every chunk breaks between two keys (whitespace, so still the same JSON).
    raw = fixture_bytes("openai", "stream_text.sse").replace(b',"object"', b',\ndata: "object"')
    async with app_client(kind, answering(lambda: sse_answer(raw))) as client:
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert checked_stream(response).content[0] == "Hello!"


async def test_a_gemini_answer_without_model_version_still_names_a_model() -> None:
    body = fixture_bytes("gemini", "generate_text.json").replace(b',"modelVersion":"gemini-2.5-flash"', b"")
    assert b"modelVersion" not in body
    async with app_client("gemini", answering(lambda: json_answer(body))) as client:
        response = await client.post("/v1/chat/completions", json=chat())
    checked_answer(response)


# ---- the exact bytes of each outbound wire type --------------------------------------------------------

_encode = msgspec.json.encode
USAGE: Final = Usage(
    prompt_tokens=9,
    completion_tokens=3,
    total_tokens=12,
    prompt_tokens_details=PromptTokensDetails(cached_tokens=4),
    completion_tokens_details=CompletionTokensDetails(reasoning_tokens=1),
)
USAGE_BYTES: Final = (
    b'{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,'
    b'"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}'
)
CHUNK_HEAD: Final = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1763000000,"model":"m","choices":'


def _chunk(delta: Delta, finish: str | None = None) -> ChatCompletionChunk:
    choice = ChunkChoice(index=0, delta=delta, finish_reason=finish)
    return ChatCompletionChunk(id="chatcmpl-1", created=1763000000, model="m", choices=[choice])


def _pinned() -> Iterator[Any]:
    calls = [
        ToolCallOut(id="call_1", function=FunctionCallOut(name="get_weather", arguments='{"city":"Paris"}')),
        ToolCallOut(id="call_2", function=FunctionCallOut(name="get_time", arguments="{}")),
    ]
    message = ResponseMessage(content=None, tool_calls=calls, reasoning_content="two lookups")
    completion = ChatCompletion(
        id="chatcmpl-1",
        created=1763000000,
        model="m",
        choices=[Choice(index=0, message=message, finish_reason="tool_calls")],
        usage=USAGE,
    )
    yield pytest.param(
        completion,
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1763000000,"model":"m","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":null,"refusal":null,"tool_calls":['
        b'{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\":\\"Paris\\"}"}},'
        b'{"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{}"}}],'
        b'"reasoning_content":"two lookups"},"finish_reason":"tool_calls","logprobs":null}],"usage":'
        + USAGE_BYTES
        + b"}",
        id="completion-with-tool-calls",
    )
    text = ChatCompletion(
        id="chatcmpl-1",
        created=1763000000,
        model="m",
        choices=[Choice(index=0, message=ResponseMessage(content="Hi"), finish_reason="stop")],
        usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
    )
    yield pytest.param(
        text,
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1763000000,"model":"m","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"Hi","refusal":null},"finish_reason":"stop","logprobs":null}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}',
        id="completion-with-text",
    )
    tail = b',"finish_reason":null,"logprobs":null}]}'
    yield pytest.param(
        _chunk(Delta(role="assistant", content="")),
        CHUNK_HEAD + b'[{"index":0,"delta":{"role":"assistant","content":""}' + tail,
        id="chunk-role",
    )
    yield pytest.param(
        _chunk(Delta(content="Hel")), CHUNK_HEAD + b'[{"index":0,"delta":{"content":"Hel"}' + tail, id="chunk-content"
    )
    yield pytest.param(
        _chunk(Delta(reasoning_content="hm")),
        CHUNK_HEAD + b'[{"index":0,"delta":{"reasoning_content":"hm"}' + tail,
        id="chunk-reasoning",
    )
    first = ToolCallDelta(
        index=0, id="call_1", type="function", function=FunctionCallDelta(name="get_weather", arguments="")
    )
    yield pytest.param(
        _chunk(Delta(tool_calls=[first])),
        CHUNK_HEAD + b'[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function",'
        b'"function":{"name":"get_weather","arguments":""}}]}' + tail,
        id="chunk-tool-call-first-fragment",
    )
    more = ToolCallDelta(index=0, function=FunctionCallDelta(arguments='{"city"'))
    yield pytest.param(
        _chunk(Delta(tool_calls=[more])),
        CHUNK_HEAD + b'[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\""}}]}' + tail,
        id="chunk-tool-call-arguments",
    )
    yield pytest.param(
        _chunk(Delta(), "stop"),
        CHUNK_HEAD + b'[{"index":0,"delta":{},"finish_reason":"stop","logprobs":null}]}',
        id="chunk-finish",
    )
    yield pytest.param(
        ChatCompletionChunk(id="chatcmpl-1", created=1763000000, model="m", choices=[], usage=USAGE),
        CHUNK_HEAD + b'[],"usage":' + USAGE_BYTES + b"}",
        id="chunk-usage-only",
    )
    yield pytest.param(
        ModelList(data=[ModelCard(id="gpt"), ModelCard(id="demo")]),
        b'{"object":"list","data":[{"id":"gpt","object":"model","created":0,"owned_by":"switchboard"},'
        b'{"id":"demo","object":"model","created":0,"owned_by":"switchboard"}]}',
        id="model-list",
    )
    yield pytest.param(
        ErrorEnvelope(ErrorBody(message="No such model", type="invalid_request_error")),
        b'{"error":{"message":"No such model","type":"invalid_request_error","param":null,"code":null}}',
        id="error-envelope",
    )
    yield pytest.param(
        ErrorEnvelope(ErrorBody(message="bad", type="invalid_request_error", param="model", code="invalid_value")),
        b'{"error":{"message":"bad","type":"invalid_request_error","param":"model","code":"invalid_value"}}',
        id="error-envelope-with-param-and-code",
    )


@pytest.mark.parametrize(("value", "expected"), list(_pinned()))
def test_the_encoded_bytes_of_each_wire_type(value: msgspec.Struct, expected: bytes) -> None:
    encoded = _encode(value)
    assert encoded == expected
    if isinstance(value, ChatCompletion):
        check_completion(encoded)
    elif isinstance(value, ChatCompletionChunk):
        check_chunk(encoded)
    elif isinstance(value, ModelList):
        check_models(encoded)
    else:
        check_error(encoded)


# ---- the checker refuses what OpenAI would not send ------------------------------------------------------

GOOD_COMPLETION: Final = TOOL_COMPLETION
GOOD_STREAM: Final = fixture_bytes("openai", "stream_tools.sse")
GOOD_USAGE_STREAM: Final = fixture_bytes("openai", "stream_text.sse")


def _bad_completions() -> Iterator[Any]:
    call = "choices", 0, "message", "tool_calls", 0

    def drop(*path: str | int) -> Callable[[dict[str, Any]], object]:
        def mutate(obj: dict[str, Any]) -> object:
            target: Any = obj
            for step in path[:-1]:
                target = target[step]
            return target.pop(path[-1])

        return mutate

    def set_(value: object, *path: str | int) -> Callable[[dict[str, Any]], object]:
        def mutate(obj: dict[str, Any]) -> object:
            target: Any = obj
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value
            return None

        return mutate

    strict = "not a strict openai ChatCompletion"
    cases: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
        ("tool-call-without-type", drop(*call, "type"), strict),  # the regression ToolCallOut fixed
        ("tool-call-without-id", drop(*call, "id"), strict),
        ("arguments-not-json", set_("nope", *call, "function", "arguments"), "arguments are not JSON"),
        ("arguments-not-an-object", set_("[1]", *call, "function", "arguments"), "must encode a JSON object"),
        ("empty-function-name", set_("", *call, "function", "name"), r"function\.name: expected a non-empty"),
        ("message-without-content", drop("choices", 0, "message", "content"), r"missing key\(s\) \['content'\]"),
        ("message-without-role", drop("choices", 0, "message", "role"), strict),
        ("null-finish-reason", set_(None, "choices", 0, "finish_reason"), strict),
        ("unknown-finish-reason", set_("error", "choices", 0, "finish_reason"), strict),
        ("usage-not-adding-up", set_(11, "usage", "total_tokens"), "total_tokens 11 != prompt_tokens 5"),
        ("more-cached-than-prompt", set_({"cached_tokens": 6}, "usage", "prompt_tokens_details"), "cached_tokens"),
        ("no-usage", drop("usage"), r"missing key \['usage'\]"),
        ("float-created", set_(1.5, "created"), strict),
        ("zero-created", set_(0, "created"), "created: expected a Unix timestamp"),
        ("empty-id", set_("", "id"), "id: expected a non-empty string"),
        ("empty-model", set_("", "model"), "model: expected a non-empty string"),
        ("wrong-object", set_("chat.completion.chunk", "object"), strict),
        ("no-choices", set_([], "choices"), "at least one choice"),
        ("wrong-choice-index", set_(1, "choices", 0, "index"), "index: expected 0, got 1"),
    ]
    for name, mutate, match in cases:
        completion = msgspec.json.decode(GOOD_COMPLETION)
        mutate(completion)
        yield pytest.param(_encode(completion), match, id=name)


@pytest.mark.parametrize(("body", "match"), list(_bad_completions()))
def test_the_checker_refuses_bad_completions(body: bytes, match: str) -> None:
    check_completion(GOOD_COMPLETION)
    with pytest.raises(ConformanceError, match=match):
        check_completion(body)


def _events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e]


def _stream(events: list[bytes]) -> bytes:
    return b"".join(e + b"\n\n" for e in events)


def _bad_streams() -> Iterator[Any]:
    tools, text = _events(GOOD_STREAM), _events(GOOD_USAGE_STREAM)
    first_call, more_args = tools[0], tools[1]
    strict = "not a strict openai ChatCompletionChunk"
    cases: list[tuple[str, bytes, str]] = [
        ("no-done", _stream(tools[:-1]), r"ends neither with `data: \[DONE\]` nor with an error event"),
        ("done-twice", _stream([*tools, tools[-1]]), r"\[DONE\] before the end"),
        ("crlf", GOOD_STREAM.replace(b"\n\n", b"\r\n\r\n"), "contains CR"),
        ("comment-line", b": comment\n\n" + GOOD_STREAM, "is not a single `data: ` line"),
        ("event-line", b"event: message\n" + GOOD_STREAM, "is not a single `data: ` line"),
        ("no-space", GOOD_STREAM.replace(b"data: ", b"data:"), "is not a single `data: ` line"),
        ("no-blank-line-at-end", GOOD_STREAM[:-1], "does not end with a blank line"),
        ("empty", b"", "empty"),
        (
            "first-fragment-no-type",
            _stream([first_call.replace(b'"type":"function",', b""), *tools[1:]]),
            "first fragment has type 'function'",
        ),
        (
            "first-fragment-no-id",
            _stream([first_call.replace(b'"id":"call_abc",', b""), *tools[1:]]),
            "first fragment has its id",
        ),
        (
            "first-fragment-no-name",
            _stream([first_call.replace(b'"name":"get_weather",', b""), *tools[1:]]),
            "first fragment has its name",
        ),
        ("fragment-no-index", _stream([first_call.replace(b'"index":0,"id"', b'"id"'), *tools[1:]]), strict),
        (
            "call-index-skips",
            _stream([*tools[:3], tools[3].replace(b'"index":1', b'"index":2'), *tools[4:]]),
            "count from 0 in order, got 2 after 1",
        ),
        (
            "later-fragment-with-id",
            _stream([first_call, more_args.replace(b'"function":{', b'"id":"x","function":{'), *tools[2:]]),
            "only a call's first fragment carries it",
        ),
        (
            "later-fragment-with-name",
            _stream([first_call, more_args.replace(b'"function":{', b'"function":{"name":"f",'), *tools[2:]]),
            "only a call's first fragment carries it",
        ),
        (
            "arguments-not-json",
            _stream([*tools[:2], tools[2].replace(b'\\"Paris\\"}', b'\\"Paris\\"'), *tools[3:]]),
            "arguments are not JSON",
        ),
        (
            "no-finish-key",
            _stream([first_call.replace(b',"finish_reason":null', b""), *tools[1:]]),
            r"missing key\(s\) \['finish_reason'\]",
        ),
        ("unknown-finish-reason", _stream([*text[:3], text[3].replace(b'"stop"', b'"done"'), *text[4:]]), strict),
        ("never-finishes", _stream([*tools[:-2], tools[-1]]), "have no finish_reason"),
        (
            "role-twice",
            _stream([first_call, more_args.replace(b'"delta":{', b'"delta":{"role":"assistant",'), *tools[2:]]),
            "the role comes once per choice",
        ),
        ("no-role", _stream(tools[1:]), "first chunk has role 'assistant'"),
        (
            "two-ids",
            _stream([first_call.replace(b"chatcmpl-CbX3", b"chatcmpl-other"), *tools[1:]]),
            r"\(id, created, model\)",
        ),
        ("two-created", _stream([first_call.replace(b"1763000002", b"1763000003"), *tools[1:]]), "created, model"),
        ("two-models", _stream([first_call.replace(b"gpt-4o-2024-08-06", b"gpt-4o"), *tools[1:]]), "created, model"),
        ("string-created", _stream([text[0], text[1].replace(b"1763000001", b'"1763000001"'), *text[2:]]), strict),
        ("wrong-object", _stream([text[0], text[1].replace(b".chunk", b""), *text[2:]]), strict),
        (
            "usage-not-adding-up",
            _stream([*text[:-2], text[-2].replace(b'"total_tokens":11', b'"total_tokens":12'), text[-1]]),
            "total_tokens 12 != prompt_tokens 9",
        ),
        (
            "usage-with-choices",
            _stream(
                [
                    *text[:-2],
                    text[-2].replace(b'"choices":[]', b'"choices":[{"index":0,"delta":{},"finish_reason":null}]'),
                    text[-1],
                ]
            ),
            "has `choices: \\[\\]`",
        ),
        (
            "no-choices-no-usage",
            _stream([*text[:-2], text[-2].replace(b'"usage":{', b'"usage":null,"u":{'), text[-1]]),
            "only the usage chunk has no choices",
        ),
        ("chunk-after-usage", _stream([*text[:-1], text[-2], text[-1]]), r"nothing but \[DONE\] follows the usage"),
        ("chunk-after-finish", _stream([text[0], text[1], text[3], text[2], text[-1]]), "after the choice finished"),
        (
            "error-event-missing-keys",
            _stream([first_call, b'data: {"error":{"message":"x","type":"server_error"}}']),
            "expected exactly the keys",
        ),
        (
            "error-event-then-done",
            _stream([first_call, b'data: {"error":{"message":"x","type":"t","param":null,"code":null}}', tools[-1]]),
            strict,
        ),
        (
            "error-before-any-chunk",
            _stream([b'data: {"error":{"message":"x","type":"t","param":null,"code":null}}']),
            "no chunk before the end",
        ),
        ("garbage-last-event", _stream([first_call, b'data: {"id":']), "not JSON"),
    ]
    for name, raw, match in cases:
        yield pytest.param(raw, match, id=name)


@pytest.mark.parametrize(("raw", "match"), list(_bad_streams()))
def test_the_checker_refuses_bad_streams(raw: bytes, match: str) -> None:
    check_stream(GOOD_STREAM)
    check_stream(GOOD_USAGE_STREAM)
    with pytest.raises(ConformanceError, match=match):
        check_stream(raw)


@pytest.mark.parametrize(
    "body",
    [
        b'{"error":{"message":"x","type":"t","param":null}}',
        b'{"error":{"message":"x","type":"t","param":null,"code":null,"extra":1}}',
        b'{"error":{"message":"","type":"t","param":null,"code":null}}',
        b'{"error":{"message":"x","type":"t","param":null,"code":400}}',
        b'{"error":{"message":"x","type":null,"param":null,"code":null}}',
        b'{"error":{"message":"x","type":"t","param":null,"code":null},"object":"error"}',
        b'{"message":"x","type":"t","param":null,"code":null}',
        b'{"error":"x"}',
    ],
    ids=["three-keys", "five-keys", "empty-message", "int-code", "null-type", "extra-top-level", "unwrapped", "string"],
)
def test_the_checker_refuses_bad_errors(body: bytes) -> None:
    with pytest.raises(ConformanceError):
        check_error(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data":[]}',
        b'{"object":"list","data":[{"id":"m","object":"model","owned_by":"s"}]}',
        b'{"object":"list","data":[{"id":"m","object":"models","created":0,"owned_by":"s"}]}',
        b'{"object":"list","data":[{"id":"","object":"model","created":0,"owned_by":"s"}]}',
    ],
    ids=["no-object", "no-created", "wrong-object", "empty-id"],
)
def test_the_checker_refuses_bad_model_lists(body: bytes) -> None:
    with pytest.raises(ConformanceError):
        check_models(body)
