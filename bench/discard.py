"""A span exporter that drops every batch: the traced subject measures tracing's own cost (spans
made, batched and handed over), not an exporter's. Registered for the subject's process as
``OTEL_TRACES_EXPORTER=discard`` through an entry point the benchmark writes (``entry_point_dir``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class DiscardSpanExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def entry_point_dir(root: Path) -> Path:
    """A directory that, on ``sys.path``, registers ``discard`` as a traces exporter."""
    info = root / "bench_discard-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-discard\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[opentelemetry_traces_exporter]\ndiscard = bench.discard:DiscardSpanExporter\n"
    )
    return root
