"""What the gateway tells a request's trace, as a protocol: the spans themselves are written by
``router.telemetry.spans`` (the OpenTelemetry SDK is configured only in ``telemetry``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import httpx

if TYPE_CHECKING:
    from providers.schema import Message
    from router.gateway.content import StreamedOutput
    from router.gateway.outcome import Outcome


class CallSpan(Protocol):
    """One upstream call's span, as the trace hands it out."""


class Trace(Protocol):
    @property
    def streamed(self) -> StreamedOutput | None:
        """Where a stream's chunks go when message content is captured, else None."""
        ...

    def inputs(self, messages: Sequence[Message]) -> None:
        """The conversation, kept for the calls' spans when message content is captured."""
        ...

    def answer(self, body: bytes) -> None:
        """A whole answer, kept for the answering call's span when message content is captured."""
        ...

    def attempt(self, target: str, provider_type: str, model: str, request: httpx.Request) -> CallSpan:
        """A span for one upstream call; its context goes upstream in the request's headers."""
        ...

    def attempt_failed(self, call: CallSpan, error: str, status: int | None) -> None: ...

    def attempt_answered(self, call: CallSpan) -> None: ...

    def event(self, name: str, attributes: Mapping[str, str | int | float]) -> None: ...

    def finish(self, outcome: Outcome) -> None:
        """The request has ended: write its spans, once."""
        ...
