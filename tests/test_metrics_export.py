"""Metrics over OTLP: the standard OTEL_* variables choose the exporter; the figures reach it in
the OpenTelemetry data model under the instruments' names, units and attributes; and the SDK's
real OTLP/HTTP exporter carries them to a collector."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GRPCExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HTTPExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    Histogram,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.resources import Resource

from router.app import create_app
from router.config import ConfigError, settings_from_dict
from router.telemetry.export import MetricExport, export_interval_s, metric_exporter_from_env, metrics_data
from router.telemetry.metrics import DURATION_BUCKETS, TOKEN_BUCKETS, Figures, Snapshot
from tests.conftest import fixture_bytes

HELLO = [{"role": "user", "content": "hi"}]


class Captured(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[MetricsData] = []
        self.shut = False

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.shut = True


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({}, None),
        ({"OTEL_METRICS_EXPORTER": "none"}, None),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, None),  # /metrics serves them anyway
        ({"OTEL_METRICS_EXPORTER": "console"}, ConsoleMetricExporter),
        ({"OTEL_METRICS_EXPORTER": "otlp"}, HTTPExporter),
        ({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, GRPCExporter),
        (
            {
                "OTEL_METRICS_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
            },
            HTTPExporter,
        ),
    ],
)
def test_the_exporter_comes_from_the_standard_variables(env: dict[str, str], kind: type | None) -> None:
    exporter = metric_exporter_from_env(env)
    if kind is None:
        assert exporter is None
    else:
        assert type(exporter) is kind


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_METRICS_EXPORTER": "zipkin"}, "OTEL_METRICS_EXPORTER"),
        ({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_METRICS_EXPORTER": "otlp,console"}, "OTEL_METRICS_EXPORTER"),
    ],
)
def test_a_wrong_variable_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        metric_exporter_from_env(env)


def test_the_interval_is_in_milliseconds() -> None:
    assert export_interval_s({}) == 60.0
    assert export_interval_s({"OTEL_METRIC_EXPORT_INTERVAL": "1500"}) == 1.5
    for bad in ("soon", "0", "-5"):
        with pytest.raises(ConfigError, match="OTEL_METRIC_EXPORT_INTERVAL"):
            export_interval_s({"OTEL_METRIC_EXPORT_INTERVAL": bad})


def upstream(request: httpx.Request) -> httpx.Response:
    if request.url.host == "down.test":
        return httpx.Response(503, json={"error": {"message": "down"}})
    if request.headers.get("accept") == "text/event-stream":
        return httpx.Response(200, content=fixture_bytes("openai", "stream_text.sse"))
    return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


def attrs(point: Any) -> dict[str, Any]:
    return dict(point.attributes or {})


def by_name(data: MetricsData) -> dict[str, Any]:
    (resource,) = data.resource_metrics
    (scope,) = resource.scope_metrics
    return {m.name: m for m in scope.metrics}


async def test_the_app_exports_its_figures_in_the_opentelemetry_model() -> None:
    settings = settings_from_dict(
        {
            "providers": {
                "up": {"type": "openai", "base_url": "http://up.test/v1"},
                "down": {"type": "openai", "base_url": "http://down.test/v1"},
            },
            "models": {
                "m": {"targets": [{"provider": "down", "model": "x"}, {"provider": "up", "model": "gpt-4o-mini"}]}
            },
            "resilience": {"retry": {"max_attempts": 1}, "breaker": {"fail_max": 100}},
        },
        {},
    )
    exporter = Captured()
    export = MetricExport(exporter, 0.05, Resource.create({"service.name": "sb-test", "service.instance.id": "w1"}))
    app = create_app(settings, transport=httpx.MockTransport(upstream), metric_export=export)
    async with AsyncTestClient(app=app) as http:
        for _ in range(3):
            await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
        await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": True})
        for _ in range(100):
            if exporter.batches and "switchboard.requests" in by_name(exporter.batches[-1]):
                break
            await asyncio.sleep(0.02)
        periodic = len(exporter.batches)
    assert periodic >= 1
    assert exporter.shut  # shut down with the app, after a last export
    last = exporter.batches[-1]
    assert last.resource_metrics[0].resource.attributes["service.instance.id"] == "w1"
    metrics = by_name(last)
    requests = metrics["switchboard.requests"]
    assert requests.unit == "{request}"
    assert isinstance(requests.data, Sum)
    assert requests.data.is_monotonic
    (ok,) = [p for p in requests.data.data_points if attrs(p)["status"] == "200"]
    assert ok.value == 4
    assert attrs(ok) == {"alias": "m", "target": "up/gpt-4o-mini", "status": "200"}  # no code: absent, not ""
    duration = metrics["gen_ai.client.operation.duration"]
    assert duration.unit == "s"
    assert isinstance(duration.data, Histogram)
    points = duration.data.data_points
    assert {attrs(p)["gen_ai.provider.name"] for p in points} == {"openai"}
    failed = [p for p in points if "error.type" in attrs(p)]  # absent on success, never ""
    assert sum(p.count for p in failed) == 4
    assert all(list(p.explicit_bounds) == list(DURATION_BUCKETS) for p in points)
    assert all(sum(p.bucket_counts) == p.count and len(p.bucket_counts) == len(DURATION_BUCKETS) + 1 for p in points)
    usage = metrics["gen_ai.client.token.usage"]
    assert usage.unit == "{token}"
    types = {attrs(p)["gen_ai.token.type"] for p in usage.data.data_points}
    assert types == {"input", "output"}
    assert all(list(p.explicit_bounds) == list(TOKEN_BUCKETS) for p in usage.data.data_points)
    assert set(usage.data.data_points[0].attributes) == {
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.token.type",
    }
    assert "gen_ai.client.operation.time_to_first_chunk" in metrics
    assert metrics["switchboard.breaker.state"].data.data_points[0].value == 0
    assert "switchboard.cost_usd" in metrics
    assert "switchboard.overhead" in metrics


class Collector(BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    bodies: list[tuple[str, bytes]] = []
    handler = type("Handler", (Collector,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_the_sdks_otlp_exporter_carries_the_figures_to_a_collector(
    collector: tuple[str, Sequence[tuple[str, bytes]]],
) -> None:
    base, bodies = collector
    figures = Figures()
    genai = ("chat", "openai", "gpt-4o-mini", "gpt-4o-mini-2024", "")
    for seconds in (0.015, 0.3, 0.3):
        figures.observe("gen_ai_client_operation_duration_seconds", genai, seconds)
    figures.add("switchboard_requests", ("m", "up/gpt-4o-mini", "200", ""), 3)
    snapshot: Snapshot = figures.snapshot({"switchboard_active_streams": {(): 2.0}})
    data = metrics_data(snapshot, Resource.create({"service.name": "sb-test"}), 1, 2)
    exporter = HTTPExporter(endpoint=f"{base}/v1/metrics")
    try:
        assert exporter.export(data) == MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    ((path, body),) = bodies
    assert path == "/v1/metrics"
    request = ExportMetricsServiceRequest.FromString(body)
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    (point,) = metrics["gen_ai.client.operation.duration"].histogram.data_points
    assert point.count == 3
    assert point.sum == pytest.approx(0.615)
    assert list(point.explicit_bounds) == list(DURATION_BUCKETS)
    assert list(point.bucket_counts)[:6] == [0, 1, 0, 0, 0, 2]
    assert not point.HasField("min")  # not kept, so not made up
    attributes = {a.key: a.value.string_value for a in point.attributes}
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini-2024"
    (count,) = metrics["switchboard.requests"].sum.data_points
    assert count.as_double == 3
    assert metrics["switchboard.requests"].sum.is_monotonic
    assert metrics["switchboard.active_streams"].gauge.data_points[0].as_double == 2
