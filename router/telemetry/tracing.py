"""The OpenTelemetry SDK's tracer provider, from the standard ``OTEL_*`` variables only.

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter: ``console`` (stderr), or ``otlp`` over
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the
default, or ``grpc``; the exporters come with ``pip install 'switchboard[otlp]'``), or any other
that an installed package registers under the ``opentelemetry_traces_exporter`` entry point. The SDK reads
the rest itself: ``OTEL_SERVICE_NAME`` (default here ``switchboard``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` and its argument, and the exporters' endpoint, headers and timeout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from router.config import ConfigError
from router.gateway.content import capture_from_env
from router.telemetry.otlp import otlp_exporter
from router.telemetry.spans import Tracing


def tracing_from_env(env: Mapping[str, str] | None = None) -> Tracing | None:
    """Tracing with the exporters the environment names, or None: tracing is off."""
    environ = os.environ if env is None else env
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    exporters = [_exporter(name, environ) for name in names if name != "none"]
    if not exporters:
        return None
    service = environ.get("OTEL_SERVICE_NAME") or "switchboard"
    # The SDK's provider reads the sampler (OTEL_TRACES_SAMPLER, _ARG) and the resource
    # (OTEL_RESOURCE_ATTRIBUTES) from the environment; Switchboard takes both from it.
    provider = TracerProvider(resource=Resource.create({"service.name": service}), shutdown_on_exit=False)
    processor = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
    for exporter in exporters:
        processor.add_span_processor(BatchSpanProcessor(exporter))  # exported off the request path
    return Tracing(
        processor,
        resource=provider.resource,
        sampler=provider.sampler,
        capture_content=capture_from_env(environ),
    )


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        # Any other exporter an installed package registers, as the SDK's own configuration finds them.
        for entry in entry_points(group="opentelemetry_traces_exporter", name=name):
            exporter: SpanExporter = entry.load()()
            return exporter
        raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter '{name}' (one of otlp, console, none)")
    otlp: SpanExporter = otlp_exporter("traces", environ)
    return otlp
