"""One record per request, however it ends, and the listeners that turn it into logs, metrics,
spans and (later) spend.

``Exchange`` is the request while it runs: the gateway appends an ``AttemptRecord`` per target it
tried or skipped, the stream or answer adds what the upstream reported (usage, finish reason, time
to first chunk), and ``finish()`` (called once, by whoever ends the request) turns it into the
immutable ``Outcome`` and hands it to every listener. Failures stay data until a listener or the
error message renders them.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final, Literal, Protocol

import msgspec

from providers.base import Report, TokenUsage

if TYPE_CHECKING:
    from router.gateway.tracing import Trace

log = logging.getLogger(__name__)

AttemptResult = Literal["ok", "failed", "rejected", "skipped", "abandoned", "overtaken"]
REQUEST_ID_KEY: Final = "switchboard.request_id"  # where a request's id waits in scope["state"]
# Switchboard's provider types → the GenAI semantic conventions' gen_ai.provider.name values.
GENAI_PROVIDERS: Final = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
}
_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


class RequestIds:
    """Request ids name requests, they guard nothing: a random prefix per process and a counter
    (os.urandom per request, a system call, cost more than the rest of the request's record)."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = "req_" + secrets.token_hex(8)
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):08x}"

    def of(self, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client's ``x-request-id`` when it is a sane token (at most 128 of ``A-Z a-z 0-9
        . _ : -``), else a new one."""
        for name, value in headers:
            if name == b"x-request-id":
                if _REQUEST_ID.fullmatch(value):
                    return value.decode()
                break
        return self.next()


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One target tried (or passed over) for a request."""

    target: str
    result: AttemptResult
    provider: str | None = None  # the target's provider type (openai, azure, anthropic, gemini, mock)
    error: str | None = None  # the failure's class (UpstreamTimeout…) or the skip's reason code
    status: int | None = None  # the upstream's HTTP status, when it answered one
    detail: str = ""  # for people: the upstream's (redacted) message or why it was skipped
    duration_s: float = 0.0
    retry: bool = False  # a second or later try at the same target
    hedge: bool = False  # started beside a slow attempt (``models.<alias>.hedge``)

    def describe(self) -> str:
        return f"{self.target}: skipped, {self.detail}" if self.result == "skipped" else f"{self.target}: {self.detail}"


class Outcome(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """How one request ended. ``usage`` and ``cost_usd`` are None when unknown, never 0 for it."""

    request_id: str
    alias: str | None
    stream: bool
    status: int
    code: str | None
    attempts: Sequence[AttemptRecord]
    target: str | None  # the target that answered
    provider: str | None  # its provider's type (openai, azure, anthropic, gemini, mock)
    response_model: str | None
    response_id: str | None
    finish_reason: str | None
    usage: TokenUsage | None
    cost_usd: float | None
    ttft_s: float | None  # time to the first chunk sent (streams) or to the whole answer
    duration_s: float
    client_disconnected: bool
    key_id: str | None = None  # the caller's virtual key ("" for the master key; None when open)
    team_id: str | None = None
    reserved_tokens: int | None = None  # what its rate limits reserved at admission
    operation: str = "chat"  # OpenTelemetry's gen_ai.operation.name: chat, embeddings
    continued: int = 0  # times a stream went on at another target after its upstream failed


Listener = Callable[[Outcome], None]


class Pricer(Protocol):
    def cost(
        self, provider: str | None, model: str | None, answered: str | None, usage: TokenUsage | None
    ) -> float | None:
        """USD for ``usage`` at the target's upstream model, else at the model the answer named."""
        ...

    def warm(self) -> None: ...


class _NoPrices:
    def cost(self, provider: str | None, model: str | None, answered: str | None, usage: TokenUsage | None) -> None:
        return None

    def warm(self) -> None:
        return None


class Outcomes:
    """The app's listeners, and what prices an answer. A listener that raises is logged and
    skipped: telemetry must never fail a request."""

    def __init__(self, listeners: Sequence[Listener] = (), pricing: Pricer | None = None) -> None:
        self.listeners = list(listeners)
        self.pricing: Pricer = pricing or _NoPrices()
        self.ids = RequestIds()

    def emit(self, outcome: Outcome) -> None:
        for listener in self.listeners:
            try:
                listener(outcome)
            except Exception:
                log.exception("outcome listener %r failed", listener)


class Exchange:
    """One request while it runs; ``finish()`` ends it exactly once."""

    __slots__ = (
        "_done",
        "_outcomes",
        "_started",
        "alias",
        "allows",
        "attempts",
        "carried_cost",
        "carried_usage",
        "client_disconnected",
        "continued",
        "finish_reason",
        "first_chunk_s",
        "key_id",
        "model",
        "operation",
        "provider",
        "request_id",
        "reserved_tokens",
        "response_id",
        "response_model",
        "stream",
        "target",
        "team_id",
        "trace",
        "usage",
    )

    def __init__(self, outcomes: Outcomes, request_id: str, stream: bool = False, operation: str = "chat") -> None:
        self._outcomes = outcomes
        self.operation = operation
        self._started = time.perf_counter()
        self._done = False
        self.request_id = request_id
        self.stream = stream
        self.alias: str | None = None
        self.allows: Callable[[str], bool] | None = None  # the models the caller's key may use
        self.attempts: list[AttemptRecord] = []
        self.target: str | None = None
        self.provider: str | None = None
        self.model: str | None = None  # the answering target's upstream model
        self.response_model: str | None = None
        self.response_id: str | None = None
        self.trace: Trace | None = None  # when tracing is on
        self.finish_reason: str | None = None
        self.usage: TokenUsage | None = None
        self.first_chunk_s: float | None = None
        self.client_disconnected = False
        self.key_id: str | None = None
        self.team_id: str | None = None
        self.reserved_tokens: int | None = None
        self.continued = 0
        self.carried_usage: TokenUsage | None = None  # of the upstreams a continued stream left
        self.carried_cost: float | None = None

    def carry(self, report: Report, provider: str | None, model: str | None) -> None:
        """A continued stream's failed upstream (of ``provider``'s ``model``): its usage and cost
        are the request's too."""
        usage = report.usage
        if usage is not None:
            self.carried_cost = _plus(self.carried_cost, self._price(provider, model, report.response_model, usage))
            self.carried_usage = add_usage(self.carried_usage, usage)
        self.continued += 1

    def _price(
        self, provider: str | None, model: str | None, answered: str | None, usage: TokenUsage | None
    ) -> float | None:
        try:
            return self._outcomes.pricing.cost(provider, model, answered, usage)
        except Exception:  # a price table surprise must not cost the request its record
            log.exception("pricing failed")
            return None

    def reported(self, report: Report) -> None:
        """What the answer said about itself: usage (None stays unknown), finish reason, model."""
        self.usage = report.usage
        self.finish_reason = report.finish_reason
        self.response_model = report.response_model
        self.response_id = report.response_id

    def first_chunk(self) -> None:
        if self.first_chunk_s is None:
            self.first_chunk_s = time.perf_counter() - self._started

    def finish(self, status: int, code: str | None = None) -> Outcome | None:
        """The request's ``Outcome``, priced and emitted to the listeners; None if it was already
        finished."""
        if self._done:
            return None
        self._done = True
        usage = self.usage
        cost_usd = self._price(self.provider, self.model, self.response_model, usage)
        if self.continued:
            cost_usd = _plus(cost_usd, self.carried_cost)
            usage = self.usage = add_usage(usage, self.carried_usage)
        outcome = Outcome(
            request_id=self.request_id,
            alias=self.alias,
            stream=self.stream,
            status=status,
            code=code,
            attempts=tuple(self.attempts),
            target=self.target,
            provider=self.provider,
            response_model=self.response_model,
            response_id=self.response_id,
            finish_reason=self.finish_reason,
            usage=self.usage,
            cost_usd=cost_usd,
            ttft_s=self.first_chunk_s,
            duration_s=time.perf_counter() - self._started,
            client_disconnected=self.client_disconnected,
            key_id=self.key_id,
            team_id=self.team_id,
            reserved_tokens=self.reserved_tokens,
            operation=self.operation,
            continued=self.continued,
        )
        if self.trace is not None:
            try:
                self.trace.finish(outcome)
            except Exception:
                log.exception("tracing failed")
        self._outcomes.emit(outcome)
        return outcome


def _plus(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else a + b


def add_usage(a: TokenUsage | None, b: TokenUsage | None) -> TokenUsage | None:
    if a is None or b is None:
        return a or b
    return TokenUsage(
        prompt=a.prompt + b.prompt,
        completion=a.completion + b.completion,
        cached=a.cached + b.cached,
        reasoning=a.reasoning + b.reasoning,
    )
