"""Tracing with the OpenTelemetry SDK (in-memory exporter): a SERVER span per request, a CLIENT
span per upstream call with the GenAI conventions' attributes, events for retries, failovers and
skips, W3C traceparent in from the client and out to the upstream; off by default."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_ON, Sampler
from opentelemetry.trace import SpanKind, StatusCode

from bench.discard import DiscardSpanExporter, entry_point_dir
from router.app import create_app
from router.config import ConfigError, settings_from_dict
from router.telemetry.export import metric_exporter_from_env
from router.telemetry.spans import Tracing
from router.telemetry.tracing import tracing_from_env
from tests.conftest import fixture_bytes

HELLO = [{"role": "user", "content": "hi"}]
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"


class Upstream:
    def __init__(self) -> None:
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        if request.url.host == "down.test":
            return httpx.Response(503, json={"error": {"message": "down"}})
        if request.headers.get("accept") == "text/event-stream":
            return httpx.Response(200, content=fixture_bytes("openai", "stream_text.sse"))
        return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


def traced(upstream: Upstream, exporter: InMemorySpanExporter | None, capture: bool = False) -> AsyncTestClient[Any]:
    settings = settings_from_dict(
        {
            "providers": {
                "up": {"type": "openai", "base_url": "https://up.test:8443/v1"},
                "down": {"type": "openai", "base_url": "http://down.test/v1"},
                "dark": {"type": "openai", "api_key": "${NOPE:-}"},
            },
            "models": {
                "m": {
                    "targets": [
                        {"provider": "dark", "model": "x"},
                        {"provider": "down", "model": "x"},
                        {"provider": "up", "model": "gpt-4o-mini"},
                    ]
                }
            },
            "resilience": {"retry": {"max_attempts": 2, "initial_backoff_s": 0}, "breaker": {"fail_max": 100}},
        },
        {},
    )
    tracing = Tracing(SimpleSpanProcessor(exporter), capture_content=capture) if exporter is not None else None
    app = create_app(settings, transport=httpx.MockTransport(upstream), tracing=tracing)
    return AsyncTestClient(app=app)


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == kind]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_is_a_server_span_with_a_client_span_per_upstream_call(stream: bool) -> None:
    exporter = InMemorySpanExporter()
    upstream = Upstream()
    async with traced(upstream, exporter) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": HELLO, "stream": stream},
            headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01", "baggage": "tenant=acme"},
        )
    assert response.status_code == 200
    assert all(h["baggage"] == "tenant=acme" for h in upstream.headers)  # the client's baggage goes on
    spans = exporter.get_finished_spans()
    (server,) = by_kind(spans, SpanKind.SERVER)
    clients = by_kind(spans, SpanKind.CLIENT)
    assert len(spans) == 4  # the server span and three upstream calls: two to `down`, one to `up`
    # the client's trace continues here, and every upstream call is a child of the request
    assert f"{server.context.trace_id:032x}" == CLIENT_TRACE
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CLIENT_PARENT
    assert all(c.parent is not None and c.parent.span_id == server.context.span_id for c in clients)
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["switchboard.request_id"] == response.headers["x-request-id"]
    assert [e.name for e in server.events] == ["target_skipped", "retry", "failover"]

    failed, _, answered = sorted(clients, key=lambda s: s.start_time or 0)
    assert failed.name == "chat x"
    assert failed.attributes is not None
    assert (failed.attributes["error.type"], failed.attributes["http.response.status_code"]) == (
        "UpstreamServerError",
        503,
    )
    assert failed.status.status_code == StatusCode.ERROR
    assert answered.name == "chat gpt-4o-mini"
    attributes = dict(answered.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert attributes["gen_ai.response.id"]
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert isinstance(attributes["gen_ai.usage.input_tokens"], int)
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert "gen_ai.usage.output_tokens" in attributes
    assert "gen_ai.usage.cache_read.input_tokens" in attributes
    assert "gen_ai.usage.reasoning.output_tokens" in attributes
    assert (attributes["server.address"], attributes["server.port"]) == ("up.test", 8443)
    assert "gen_ai.system" not in attributes  # the deprecated name
    # each upstream call carried its own span as the parent in W3C traceparent
    sent = [h["traceparent"] for h in upstream.headers]
    assert [p.split("-")[1] for p in sent] == [CLIENT_TRACE] * 3
    assert sent[-1].split("-")[2] == f"{answered.context.span_id:016x}"
    # no message content in any span
    for span in spans:
        assert "hi" not in str(span.attributes.values() if span.attributes else ())


async def test_a_failed_request_ends_its_spans_with_the_error() -> None:
    exporter = InMemorySpanExporter()
    async with traced(Upstream(), exporter) as http:
        response = await http.post("/v1/chat/completions", json={"model": "nope", "messages": HELLO})
    assert response.status_code == 404
    (server,) = exporter.get_finished_spans()
    assert server.attributes is not None
    assert (server.attributes["http.response.status_code"], server.attributes["error.type"]) == (404, "model_not_found")


async def test_tracing_is_off_by_default() -> None:
    upstream = Upstream()
    async with traced(upstream, None) as http:
        await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
    assert all("traceparent" not in h for h in upstream.headers)


def test_the_provider_comes_from_the_standard_variables() -> None:
    assert tracing_from_env({}) is None
    assert tracing_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    tracing = tracing_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "gw"})
    assert tracing is not None
    assert tracing.resource.attributes["service.name"] == "gw"
    assert not tracing.capture_content
    tracing.shutdown()
    default = tracing_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert default is not None
    assert default.resource.attributes["service.name"] == "switchboard"
    default.shutdown()
    with pytest.raises(ConfigError, match="unknown exporter"):
        tracing_from_env({"OTEL_TRACES_EXPORTER": "zipkin-ish"})
    with pytest.raises(ConfigError, match="unknown protocol"):
        tracing_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_otlp_without_its_exporters_says_how_to_get_them(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # As on an install without the otlp extra: the exporter modules cannot be imported.
    for kind in ("http", "grpc"):
        monkeypatch.setitem(sys.modules, f"opentelemetry.exporter.otlp.proto.{kind}.trace_exporter", None)
        monkeypatch.setitem(sys.modules, f"opentelemetry.exporter.otlp.proto.{kind}.metric_exporter", None)
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    with pytest.raises(ConfigError, match=r"switchboard\[otlp\]"):
        tracing_from_env(env)
    with pytest.raises(ConfigError, match=r"switchboard\[otlp\]"):
        metric_exporter_from_env({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol})


def test_an_exporter_registered_by_an_installed_package_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the SDK's own configuration does: OTEL_TRACES_EXPORTER names an entry point in the
    `opentelemetry_traces_exporter` group (here the benchmark's exporter that drops spans)."""
    monkeypatch.syspath_prepend(str(entry_point_dir(tmp_path)))
    tracing = tracing_from_env({"OTEL_TRACES_EXPORTER": "discard"})
    assert tracing is not None
    try:
        processor = tracing.processor._span_processors[0]  # type: ignore[attr-defined]
        assert isinstance(processor._batch_processor._exporter, DiscardSpanExporter)
    finally:
        tracing.shutdown()


def _answer_text(stream: bool) -> str:
    import msgspec

    if not stream:
        return str(msgspec.json.decode(fixture_bytes("openai", "completion.json"))["choices"][0]["message"]["content"])
    text = ""
    for line in fixture_bytes("openai", "stream_text.sse").splitlines():
        if line.startswith(b"data: {"):
            for choice in msgspec.json.decode(line[6:])["choices"]:
                text += choice.get("delta", {}).get("content") or ""
    return text


@pytest.mark.parametrize("stream", [False, True])
async def test_message_content_is_recorded_only_when_turned_on(stream: bool) -> None:
    import msgspec

    asked = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "secret-prompt-7731"}]
    for capture in (False, True):
        exporter = InMemorySpanExporter()
        async with traced(Upstream(), exporter, capture) as http:
            answer = await http.post("/v1/chat/completions", json={"model": "m", "messages": asked, "stream": stream})
            assert answer.status_code == 200
        spans = exporter.get_finished_spans()
        values = [str(v) for s in spans for v in (s.attributes or {}).values()]
        values += [str(v) for s in spans for e in s.events for v in (e.attributes or {}).values()]
        if not capture:
            assert not any("secret-prompt-7731" in v for v in values)
            assert not any("gen_ai.input.messages" in (s.attributes or {}) for s in spans)
            continue
        calls = by_kind(spans, SpanKind.CLIENT)
        assert len(calls) == 3  # down twice, then up
        for call in calls:
            sent = msgspec.json.decode(str((call.attributes or {})["gen_ai.input.messages"]))
            assert sent == [
                {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
                {"role": "user", "parts": [{"type": "text", "content": "secret-prompt-7731"}]},
            ]
        answered = [c for c in calls if "gen_ai.output.messages" in (c.attributes or {})]
        assert answered == [calls[-1]]  # only the call that answered has an answer
        (output,) = msgspec.json.decode(str((calls[-1].attributes or {})["gen_ai.output.messages"]))
        assert output["role"] == "assistant"
        assert output["finish_reason"] == "stop"
        assert output["parts"] == [{"type": "text", "content": _answer_text(stream)}]


def test_streamed_tool_calls_are_put_together() -> None:
    import msgspec

    from router.gateway.content import StreamedOutput

    chunks = [
        b'{"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}',
        b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":"}}]}}]}',
        b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"Oslo\\"}"}}]}}]}',
        b'{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}',
        b"not json",
    ]
    content = StreamedOutput()
    content.add(chunks[:2])
    content.add(chunks[2:])
    (message,) = msgspec.json.decode(content.messages())
    assert message == {
        "role": "assistant",
        "parts": [{"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'}],
        "finish_reason": "tool_calls",
    }


@pytest.mark.parametrize(
    ("sampler", "client_flags", "recorded"),
    [
        (ALWAYS_OFF, None, False),
        (DEFAULT_ON, "00", False),  # parent-based: the client's unsampled trace stays unsampled
        (DEFAULT_ON, "01", True),
        (DEFAULT_ON, None, True),
    ],
)
async def test_the_sdks_sampler_decides(sampler: Sampler, client_flags: str | None, recorded: bool) -> None:
    """An unsampled request writes no span, but its upstream calls still carry the trace, flagged
    unsampled, so the rest of the system agrees."""
    exporter = InMemorySpanExporter()
    upstream = Upstream()
    settings = settings_from_dict(
        {
            "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1"}},
            "models": {"m": {"targets": [{"provider": "up", "model": "x"}]}},
        },
        {},
    )
    tracing = Tracing(SimpleSpanProcessor(exporter), sampler=sampler)
    headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-{client_flags}"} if client_flags else {}
    async with AsyncTestClient(
        app=create_app(settings, transport=httpx.MockTransport(upstream), tracing=tracing)
    ) as http:
        answer = await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO}, headers=headers)
        assert answer.status_code == 200
    assert bool(exporter.get_finished_spans()) is recorded
    (sent,) = [h["traceparent"] for h in upstream.headers]
    assert sent.endswith("-01" if recorded else "-00")
