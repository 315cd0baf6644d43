"""One request's trace, through the OpenTelemetry API (the SDK is set up in ``router.telemetry``):
a SERVER span for the request and a CLIENT span per upstream call, named ``chat {model}`` with
the GenAI semantic conventions' attributes; events for retries, failovers, skipped targets and a
client that left. Never a span or an event per chunk. When tracing is off a request has no
``RequestTrace`` at all, so it costs nothing.

Message content is never recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from router.gateway.outcome import GENAI_PROVIDERS, Outcome

_PROPAGATED: Final = frozenset({b"traceparent", b"tracestate", b"baggage"})


class RequestTrace:
    """The spans of one request; ``finish`` ends them all, once."""

    __slots__ = ("_answering", "_context", "_server", "_tracer")

    def __init__(self, tracer: Tracer, headers: Iterable[tuple[bytes, bytes]], path: str) -> None:
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers if name in _PROPAGATED}
        parent = propagate.extract(carrier)  # the client's W3C traceparent, if it sent one
        self._tracer = tracer
        self._server = tracer.start_span(
            f"POST {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": path, "gen_ai.operation.name": "chat"},
        )
        self._context = trace.set_span_in_context(self._server, parent)
        self._answering: Span | None = None  # the call whose answer is still being streamed

    def attempt(self, target: str, provider_type: str, model: str, request: httpx.Request) -> Span:
        """A CLIENT span for one upstream call; its context goes upstream in ``traceparent``."""
        span = self._tracer.start_span(
            f"chat {model}",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": GENAI_PROVIDERS.get(provider_type, provider_type),
                "gen_ai.request.model": model,
                "server.address": request.url.host,
                "server.port": request.url.port or (443 if request.url.scheme == "https" else 80),
                "switchboard.target": target,
            },
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span, self._context))
        for name, value in carrier.items():
            request.headers[name] = value
        return span

    def attempt_failed(self, span: Span, error: str, status: int | None) -> None:
        if status is not None:
            span.set_attributes({"error.type": error, "http.response.status_code": status})
        else:
            span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR))
        span.end()

    def attempt_answered(self, span: Span) -> None:
        """The call that answered: its span ends with the request, when its usage and finish
        reason are known (for a stream, at its end)."""
        self._answering = span

    def event(self, name: str, attributes: Mapping[str, str | int | float]) -> None:
        self._server.add_event(name, attributes=dict(attributes))

    def finish(self, outcome: Outcome) -> None:
        answering, self._answering = self._answering, None
        if answering is not None:
            _answer_attributes(answering, outcome)
            answering.end()
        server = self._server
        attributes: dict[str, str | int] = {
            "http.response.status_code": outcome.status,
            "switchboard.request_id": outcome.request_id,
        }
        if outcome.alias:
            attributes["gen_ai.request.model"] = outcome.alias
        if outcome.code is not None:
            attributes["error.type"] = outcome.code
            if outcome.status >= 500:
                server.set_status(Status(StatusCode.ERROR))
        server.set_attributes(attributes)  # one lock and one pass, not one per attribute
        if outcome.client_disconnected:
            server.add_event("client_disconnected")
        server.end()


def _answer_attributes(span: Span, outcome: Outcome) -> None:
    attributes: dict[str, str | int | list[str]] = {"http.response.status_code": 200}
    if outcome.response_model:
        attributes["gen_ai.response.model"] = outcome.response_model
    if outcome.response_id:
        attributes["gen_ai.response.id"] = outcome.response_id
    if outcome.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [outcome.finish_reason]
    usage = outcome.usage
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt
        attributes["gen_ai.usage.output_tokens"] = usage.completion
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached
        attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning
    if outcome.code is not None and outcome.status == 200:  # the stream failed after it started
        attributes["error.type"] = outcome.code
        span.set_status(Status(StatusCode.ERROR))
    span.set_attributes(attributes)
