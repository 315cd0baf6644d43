"""Metrics over OTLP (or to the console), configured by the standard ``OTEL_*`` variables only.

Off unless ``OTEL_METRICS_EXPORTER`` names an exporter: ``otlp`` over
``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the
default, or ``grpc``), or ``console``; ``prometheus`` is accepted and changes nothing, since
``GET /metrics`` always serves them. Every ``OTEL_METRIC_EXPORT_INTERVAL`` milliseconds (default
60000) this worker's figures are turned into the SDK's data model (cumulative, under the
instruments' OpenTelemetry names, units and attributes) and handed to the SDK's exporter on a
thread, off the event loop. The figures themselves are Switchboard's (``metrics``): an SDK
instrument costs more per measurement than a request's whole record. Each worker exports its own
series under its own ``service.instance.id``, so the collector adds the workers up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from router.config import ConfigError
from router.telemetry.metrics import SEP, SPECS, Snapshot, Spec
from router.telemetry.otlp import otlp_exporter

log = logging.getLogger(__name__)

# Prometheus label names → the OpenTelemetry attribute names they render.
ATTRIBUTES: Mapping[str, str] = {
    "gen_ai_operation_name": "gen_ai.operation.name",
    "gen_ai_provider_name": "gen_ai.provider.name",
    "gen_ai_request_model": "gen_ai.request.model",
    "gen_ai_response_model": "gen_ai.response.model",
    "gen_ai_token_type": "gen_ai.token.type",
    "error_type": "error.type",
}
SCOPE = InstrumentationScope("switchboard")


def metric_exporter_from_env(env: Mapping[str, str] | None = None) -> MetricExporter | None:
    environ = os.environ if env is None else env
    names = [n.strip() for n in environ.get("OTEL_METRICS_EXPORTER", "none").split(",") if n.strip()]
    exporters = [name for name in names if name not in ("none", "prometheus")]
    if not exporters:
        return None
    if len(exporters) > 1:
        raise ConfigError("OTEL_METRICS_EXPORTER: name one exporter besides prometheus (otlp or console)")
    if exporters[0] == "console":
        return ConsoleMetricExporter()
    if exporters[0] != "otlp":
        raise ConfigError(
            f"OTEL_METRICS_EXPORTER: unknown exporter '{exporters[0]}' (one of otlp, console, prometheus, none)"
        )
    exporter: MetricExporter = otlp_exporter("metrics", environ)
    return exporter


def export_interval_s(env: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    try:
        millis = float(raw)
    except ValueError:
        raise ConfigError(f"OTEL_METRIC_EXPORT_INTERVAL: expected milliseconds, got '{raw}'") from None
    if millis <= 0:
        raise ConfigError(f"OTEL_METRIC_EXPORT_INTERVAL: expected a positive number of milliseconds, got '{raw}'")
    return millis / 1000


def worker_resource(env: Mapping[str, str] | None = None) -> Resource:
    environ = os.environ if env is None else env
    service = environ.get("OTEL_SERVICE_NAME") or "switchboard"
    return Resource.create({"service.name": service, "service.instance.id": uuid.uuid4().hex})


def metrics_data(snapshot: Snapshot, resource: Resource, start_ns: int, now_ns: int) -> MetricsData:
    """One worker's figures in the OpenTelemetry data model (cumulative since ``start_ns``)."""
    metrics: list[Metric] = []
    for name, series in snapshot.series.items():
        spec = SPECS.get(name)
        if spec is None or not spec.otel:
            continue
        data: Sum | Gauge | Histogram
        if spec.kind == "histogram":
            points = [
                HistogramDataPoint(
                    attributes=_attributes(spec, key),
                    start_time_unix_nano=start_ns,
                    time_unix_nano=now_ns,
                    count=int(counts[-1]),
                    sum=counts[-2],
                    bucket_counts=[int(c) for c in counts[:-2]],
                    explicit_bounds=list(spec.buckets),
                    min=None,  # type: ignore[arg-type]  # not kept; optional in OTLP
                    max=None,  # type: ignore[arg-type]
                )
                for key, counts in series.buckets.items()
            ]
            if not points:
                continue
            data = Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE)
        else:
            numbers = [
                NumberDataPoint(
                    attributes=_attributes(spec, key),
                    start_time_unix_nano=start_ns,
                    time_unix_nano=now_ns,
                    value=value,
                )
                for key, value in series.values.items()
            ]
            if not numbers:
                continue
            if spec.kind == "gauge":
                data = Gauge(data_points=numbers)
            else:
                data = Sum(
                    data_points=numbers,
                    aggregation_temporality=AggregationTemporality.CUMULATIVE,
                    is_monotonic=True,
                )
        metrics.append(Metric(name=spec.otel, description=spec.help, unit=spec.unit, data=data))
    scope = ScopeMetrics(scope=SCOPE, metrics=metrics, schema_url="")
    return MetricsData(resource_metrics=[ResourceMetrics(resource=resource, scope_metrics=[scope], schema_url="")])


def _attributes(spec: Spec, key: str) -> dict[str, str]:
    """An empty label value (no error, no response model) is an absent attribute in OTLP."""
    if not spec.labels:
        return {}
    pairs = zip(spec.labels, key.split(SEP), strict=True)
    return {ATTRIBUTES.get(label, label): value for label, value in pairs if value}


class MetricExport:
    """Hands this worker's figures to an SDK exporter every ``interval_s``, and once more at the
    end; the exporter's network calls run on a thread."""

    def __init__(self, exporter: MetricExporter, interval_s: float, resource: Resource | None = None) -> None:
        self.exporter = exporter
        self.interval_s = interval_s
        self.resource = resource or worker_resource()
        self._start_ns = time.time_ns()
        self._task: asyncio.Task[None] | None = None
        self._read: Callable[[], Snapshot] | None = None
        self._exporting = asyncio.Lock()  # the last export waits for one still running

    def start(self, read: Callable[[], Snapshot]) -> None:
        self._read = read
        self._task = asyncio.get_running_loop().create_task(self._export_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self._export()  # the last figures
        finally:
            await asyncio.to_thread(self.exporter.shutdown)

    async def _export_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._export()

    async def _export(self) -> None:
        if self._read is None:
            return
        async with self._exporting:
            data = metrics_data(self._read(), self.resource, self._start_ns, time.time_ns())  # on the loop
            try:
                result = await asyncio.to_thread(self.exporter.export, data)
            except Exception:  # a collector's trouble must not stop the next export
                log.warning("metrics: the export failed", exc_info=True)
                return
            if result is not MetricExportResult.SUCCESS:
                log.warning("metrics: the exporter could not deliver the figures (%s)", result.name)
