"""The OpenTelemetry SDK's OTLP exporter for traces or metrics, over the protocol the standard
variables name (``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL``, then
``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf``, the default, or ``grpc``). The exporters come
with ``pip install 'switchboard[otlp]'``; the SDK reads their endpoint, headers and timeout."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Literal

from router.config import ConfigError

_TRANSPORTS = {"http/protobuf": "http", "grpc": "grpc"}


def otlp_exporter(signal: Literal["traces", "metrics"], environ: Mapping[str, str]) -> Any:
    own = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    protocol = environ.get(own) or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    transport = _TRANSPORTS.get(protocol)
    if transport is None:
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol '{protocol}' (http/protobuf or grpc)")
    kind = "trace" if signal == "traces" else "metric"
    try:
        module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{transport}.{kind}_exporter")
    except ImportError:
        raise ConfigError(
            f"OTEL_{signal.upper()}_EXPORTER=otlp needs the OTLP exporters: pip install 'switchboard[otlp]'"
        ) from None
    return module.OTLPSpanExporter() if signal == "traces" else module.OTLPMetricExporter()
