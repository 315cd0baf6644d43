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
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bench.discard import DiscardSpanExporter, entry_point_dir
from router.app import create_app
from router.config import ConfigError, settings_from_dict
from router.telemetry.export import metric_exporter_from_env
from router.telemetry.tracing import tracer_provider_from_env
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


def traced(upstream: Upstream, exporter: InMemorySpanExporter | None) -> AsyncTestClient[Any]:
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
    provider = None
    if exporter is not None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return AsyncTestClient(app=create_app(settings, transport=httpx.MockTransport(upstream), tracer_provider=provider))


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
            headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"},
        )
    assert response.status_code == 200
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
    assert tracer_provider_from_env({}) is None
    assert tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "gw"})
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "gw"
    default = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert default is not None
    assert default.resource.attributes["service.name"] == "switchboard"
    with pytest.raises(ConfigError, match="unknown exporter"):
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "zipkin-ish"})
    with pytest.raises(ConfigError, match="unknown protocol"):
        tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_otlp_without_its_exporters_says_how_to_get_them(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # As on an install without the otlp extra: the exporter modules cannot be imported.
    for kind in ("http", "grpc"):
        monkeypatch.setitem(sys.modules, f"opentelemetry.exporter.otlp.proto.{kind}.trace_exporter", None)
        monkeypatch.setitem(sys.modules, f"opentelemetry.exporter.otlp.proto.{kind}.metric_exporter", None)
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    with pytest.raises(ConfigError, match=r"switchboard\[otlp\]"):
        tracer_provider_from_env(env)
    with pytest.raises(ConfigError, match=r"switchboard\[otlp\]"):
        metric_exporter_from_env({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol})


def test_an_exporter_registered_by_an_installed_package_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the SDK's own configuration does: OTEL_TRACES_EXPORTER names an entry point in the
    `opentelemetry_traces_exporter` group (here the benchmark's exporter that drops spans)."""
    monkeypatch.syspath_prepend(str(entry_point_dir(tmp_path)))
    provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "discard"})
    assert provider is not None
    try:
        processor = provider._active_span_processor._span_processors[0]
        assert isinstance(processor._batch_processor._exporter, DiscardSpanExporter)  # type: ignore[attr-defined]
    finally:
        provider.shutdown()
