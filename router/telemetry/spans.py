"""One request's trace: a SERVER span for the request and a CLIENT span per upstream call, named
``chat {model}`` with the GenAI semantic conventions' attributes; events for retries, failovers,
skipped targets and a client that left. Never a span or an event per chunk. When tracing is off a
request has no ``RequestTrace`` at all, so it costs nothing.

The spans are the OpenTelemetry SDK's own (``ReadableSpan``), sampled by the SDK's sampler and
handed to its span processors and exporters, but they are written once, when the request ends,
from what the request recorded (ids, times, attributes): not kept live through the tracing API,
whose locks, attribute checks and context switches cost about 50 µs a span here against 5 µs for
a finished one. The ids are made when each span starts, so ``traceparent`` goes upstream as usual.

Message content is recorded only when the operator turns it on
(``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``, see ``content``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import httpx
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import DEFAULT_ON, Decision, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from providers.schema import Message
from router.gateway.content import StreamedOutput, input_messages, output_messages
from router.gateway.outcome import GENAI_PROVIDERS, Outcome
from router.gateway.tracing import CallSpan

_ERROR: Final = Status(StatusCode.ERROR)
_UNSET: Final = Status(StatusCode.UNSET)
Attributes = dict[str, AttributeValue]


class Tracing:
    """What the app traces with: the SDK's sampler, span processor (its exporters behind it) and
    resource, and whether message content is recorded."""

    def __init__(
        self,
        processor: SpanProcessor,
        *,
        resource: Resource | None = None,
        sampler: Sampler = DEFAULT_ON,
        capture_content: bool = False,
    ) -> None:
        self.processor = processor
        self.resource = resource or Resource.create({"service.name": "switchboard"})
        self.sampler = sampler
        self.capture_content = capture_content
        self.ids: IdGenerator = RandomIdGenerator()
        # The headers the configured propagators read (OTEL_PROPAGATORS: W3C by default, or b3…).
        self.fields = frozenset(f.lower().encode("latin-1") for f in propagate.get_global_textmap().fields)
        self.scope = InstrumentationScope("switchboard")

    def shutdown(self) -> None:
        self.processor.shutdown()  # exports what is still batched


class _Call:
    """One upstream call's span until the request ends."""

    __slots__ = ("attributes", "context", "end_ns", "name", "start_ns", "status")

    def __init__(self, name: str, context: SpanContext, attributes: Attributes) -> None:
        self.name = name
        self.context = context
        self.attributes = attributes
        self.start_ns = time.time_ns()
        self.end_ns: int | None = None
        self.status = _UNSET


class RequestTrace:
    """The spans of one request; ``finish`` writes them all, once."""

    __slots__ = (
        "_answering",
        "_calls",
        "_events",
        "_input",
        "_operation",
        "_output",
        "_parent",
        "_parent_context",
        "_path",
        "_server",
        "_start_ns",
        "_tracing",
        "capture",
        "streamed",
    )

    def __init__(
        self,
        tracing: Tracing,
        headers: Iterable[tuple[bytes, bytes]],
        path: str,
        capture: bool = False,
        operation: str = "chat",
    ) -> None:
        self._operation = operation
        fields = tracing.fields
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers if name in fields}
        self._parent_context: Context | None = propagate.extract(carrier) if carrier else None
        parent = trace.get_current_span(self._parent_context).get_span_context() if carrier else None
        self._parent = parent if parent is not None and parent.is_valid else None
        self._tracing = tracing
        self._path = path
        self._start_ns = time.time_ns()
        trace_id = self._parent.trace_id if self._parent is not None else tracing.ids.generate_trace_id()
        name = f"POST {path}"
        sampled = tracing.sampler.should_sample(self._parent_context, trace_id, name, SpanKind.SERVER)
        flags = TraceFlags(TraceFlags.SAMPLED if sampled.decision == Decision.RECORD_AND_SAMPLE else 0)
        state = sampled.trace_state if sampled.trace_state is not None else None
        self._server = SpanContext(trace_id, tracing.ids.generate_span_id(), False, flags, state)
        self._calls: list[_Call] = []
        self._events: list[Event] = []
        self._answering: _Call | None = None  # the call whose answer is still being streamed
        self.capture = capture  # message content on the spans (opt-in)
        self._input: str | None = None
        self._output: str | None = None
        self.streamed: StreamedOutput | None = StreamedOutput() if capture and self.sampled else None

    @property
    def sampled(self) -> bool:
        return self._server.trace_flags.sampled

    def inputs(self, messages: Sequence[Message]) -> None:
        """The conversation, for each call's span (only when capturing content)."""
        if self.capture and self.sampled:
            self._input = input_messages(messages)

    def answer(self, body: bytes) -> None:
        """The whole answer, for the answering call's span (only when capturing content)."""
        if self.capture and self.sampled:
            self._output = output_messages(body)

    def attempt(self, target: str, provider_type: str, model: str, request: httpx.Request) -> _Call:
        """A CLIENT span for one upstream call; its context goes upstream in ``traceparent``."""
        server = self._server
        context = SpanContext(
            server.trace_id, self._tracing.ids.generate_span_id(), False, server.trace_flags, server.trace_state
        )
        attributes: Attributes = {
            "gen_ai.operation.name": self._operation,
            "gen_ai.provider.name": GENAI_PROVIDERS.get(provider_type, provider_type),
            "gen_ai.request.model": model,
            "server.address": request.url.host,
            "server.port": request.url.port or (443 if request.url.scheme == "https" else 80),
            "switchboard.target": target,
        }
        if self._input is not None:
            attributes["gen_ai.input.messages"] = self._input
        call = _Call(f"{self._operation} {model}", context, attributes)
        self._calls.append(call)
        carrier: dict[str, str] = {}
        # On the client's context, so its baggage travels on with the trace.
        propagate.inject(carrier, context=trace.set_span_in_context(NonRecordingSpan(context), self._parent_context))
        for name, value in carrier.items():
            request.headers[name] = value
        return call

    def attempt_failed(self, call: CallSpan, error: str, status: int | None) -> None:
        assert isinstance(call, _Call)
        call.attributes["error.type"] = error
        if status is not None:
            call.attributes["http.response.status_code"] = status
        call.status = _ERROR
        call.end_ns = time.time_ns()

    def attempt_answered(self, call: CallSpan) -> None:
        """The call that answered: its span ends with the request, when its usage and finish
        reason are known (for a stream, at its end)."""
        assert isinstance(call, _Call)
        self._answering = call

    def event(self, name: str, attributes: Mapping[str, str | int | float]) -> None:
        self._events.append(Event(name, dict(attributes), time.time_ns()))

    def finish(self, outcome: Outcome) -> None:
        """Write the request's spans to the SDK's span processor (nothing if not sampled)."""
        calls, self._calls = self._calls, []
        if not self.sampled:
            return
        now = time.time_ns()
        answering, self._answering = self._answering, None
        if answering is not None:
            _answer_attributes(answering, outcome)
            output = self.streamed.messages() if self.streamed is not None and outcome.stream else self._output
            if output is not None:
                answering.attributes["gen_ai.output.messages"] = output
        tracing, server = self._tracing, self._server
        attributes: Attributes = {
            "http.request.method": "POST",
            "url.path": self._path,
            "http.response.status_code": outcome.status,
            "switchboard.request_id": outcome.request_id,
        }
        if outcome.alias:
            attributes["gen_ai.request.model"] = outcome.alias
        status = _UNSET
        if outcome.code is not None:
            attributes["error.type"] = outcome.code
            if outcome.status >= 500:
                status = _ERROR
        if outcome.client_disconnected:
            self._events.append(Event("client_disconnected", {}, now))
        for call in calls:
            tracing.processor.on_end(
                ReadableSpan(
                    call.name,
                    context=call.context,
                    parent=server,
                    resource=tracing.resource,
                    attributes=call.attributes,
                    kind=SpanKind.CLIENT,
                    status=call.status,
                    start_time=call.start_ns,
                    end_time=call.end_ns or now,
                    instrumentation_scope=tracing.scope,
                )
            )
        tracing.processor.on_end(
            ReadableSpan(
                f"POST {self._path}",
                context=server,
                parent=self._parent,
                resource=tracing.resource,
                attributes=attributes,
                events=self._events,
                kind=SpanKind.SERVER,
                status=status,
                start_time=self._start_ns,
                end_time=now,
                instrumentation_scope=tracing.scope,
            )
        )


def _answer_attributes(call: _Call, outcome: Outcome) -> None:
    attributes = call.attributes
    attributes["http.response.status_code"] = 200
    if outcome.response_model:
        attributes["gen_ai.response.model"] = outcome.response_model
    if outcome.response_id:
        attributes["gen_ai.response.id"] = outcome.response_id
    if outcome.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = (outcome.finish_reason,)
    usage = outcome.usage
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt
        attributes["gen_ai.usage.output_tokens"] = usage.completion
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached
        attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning
    if outcome.code is not None and outcome.status == 200:  # the stream failed after it started
        attributes["error.type"] = outcome.code
        call.status = _ERROR
