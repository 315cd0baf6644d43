"""The adapter protocol every upstream wire format implements, and what adapters share.

An adapter is pure: it builds an ``httpx.Request`` and translates answers, streams and errors
into OpenAI's types. Sending, timeouts, retries and cancellation belong to ``router.gateway``.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

import httpx
import msgspec

from providers.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
)
from providers.schema import ChatCompletion, ChatRequest, Usage

if TYPE_CHECKING:
    from providers.embeddings import EmbeddingsCall
from providers.sse import SSEEvent

# Statuses a later attempt may cure (openai-python retries the same set, plus Anthropic's 529).
RETRYABLE_STATUSES: Final = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


@dataclass(frozen=True, slots=True)
class Inbound:
    """One client request, decoded twice: ``chat`` is the validated view adapters translate;
    ``fields`` is the raw body, field by field, that OpenAI-compatible upstreams get back
    byte-for-byte except for what Switchboard rewrites."""

    chat: ChatRequest
    fields: dict[str, msgspec.Raw]


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Tokens as the upstream reported them; ``cached`` is part of ``prompt``, ``reasoning`` of
    ``completion`` (OpenAI's accounting, which the translators follow)."""

    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0


class Report(msgspec.Struct, kw_only=True, gc=False):
    """What an answer said about itself, for the request's record: the usage the upstream
    reported (None when it reported none: unknown, not zero), the first choice's finish reason,
    and the answer's id and model."""

    usage: TokenUsage | None = None
    finish_reason: str | None = None
    response_id: str | None = None
    response_model: str | None = None


class Parsed(NamedTuple):
    """A non-streamed answer in OpenAI's format, and its report."""

    body: bytes
    report: Report


class StreamTranslator(Protocol):
    """Turns one upstream stream into OpenAI ``chat.completion.chunk`` JSON payloads."""

    def translate(self, event: SSEEvent) -> Sequence[bytes]:
        """Chunks this event produces (often exactly one, sometimes none).

        Raises:
            UpstreamError: the event reports an error, or is not valid for the protocol.
        """
        ...

    @property
    def finished(self) -> bool:
        """The upstream sent its end-of-stream marker: nothing more is to be read."""
        ...

    @property
    def complete(self) -> bool:
        """The answer is whole: if the connection ends now, nothing was lost."""
        ...

    @property
    def report(self) -> Report:
        """What the stream has said about itself so far (complete once it has ended)."""
        ...


class Provider(Protocol):
    """One upstream wire format, configured for one provider entry (its URL, key, headers)."""

    redact: SecretRedactor  # removes this provider's key and address from text

    def build_request(self, call: Inbound, model: str) -> httpx.Request: ...

    def unsupported(self, call: Inbound) -> list[str]:
        """The request's parameters this provider cannot honour (they are dropped, or refused)."""
        ...

    def parse_response(self, body: bytes, model: str) -> Parsed:
        """A successful non-streamed answer as OpenAI ``chat.completion`` JSON, and its report;
        ``model`` is the upstream model asked for, for answers that do not name theirs."""
        ...

    def stream_translator(self, call: Inbound) -> StreamTranslator: ...

    def parse_error(self, status: int, body: bytes, headers: httpx.Headers) -> UpstreamError: ...

    def embeddings_request(self, call: EmbeddingsCall, model: str) -> httpx.Request | None:
        """The upstream request for an embeddings call, or None when the provider has no
        embeddings API (the target is then passed over)."""
        ...

    def parse_embeddings(self, body: bytes, call: EmbeddingsCall, model: str) -> Parsed:
        """A successful embeddings answer as OpenAI's ``list`` of embeddings, and its report."""
        ...


def post(url: httpx.URL, headers: httpx.Headers, body: bytes) -> httpx.Request:
    """A POST with a body already in memory. Handing httpx the body as a stream skips its
    content encoding and header preparation (the transport sets Host and Content-Length), the
    largest cost of building a request."""
    request = httpx.Request("POST", url, headers=headers, stream=httpx.ByteStream(body))
    request.read()  # makes `request.content` available, as transports and tests expect
    return request


class SecretRedactor:
    """Removes a provider's key and its address from text that may reach a client or a log."""

    # Key-shaped tokens of the major providers, in case an upstream echoes a fragment of one.
    _KEYLIKE: Final = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*.]{6,}|\bAIza[0-9A-Za-z_\-]{10,}")

    def __init__(self, *secrets: str) -> None:
        # Longest first, so that a base URL goes whole before its host name is looked for.
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    @classmethod
    def for_upstream(
        cls, api_key: str | None, base_url: str, headers: Mapping[str, str] | None = None
    ) -> SecretRedactor:
        """The configured key and the values of configured headers (where keys hide too), exactly,
        whatever their shape; the base URL, its ``host:port`` and its host name, which say where
        Switchboard's upstreams live."""
        url = httpx.URL(base_url)
        parts = [base_url, base_url.rstrip("/"), url.host]
        if url.port is not None:
            parts.append(f"{url.host}:{url.port}")
        for value in (headers or {}).values():
            parts.extend((value, value.partition(" ")[2]))  # "Bearer <token>": the token alone too
        return cls(*parts, *([api_key] if api_key else []))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return self._KEYLIKE.sub("[redacted]", text)

    def text(self, body: bytes, limit: int = 200) -> str:
        """The start of a body that is not JSON, as text: redacted first, then cut, so that a key
        straddling the cut cannot leave its prefix behind."""
        return self(body.decode("utf-8", "replace")).strip()[:limit]

    def optional(self, value: str | None) -> str | None:
        return None if value is None else self(value)


def error_fields(payload: object) -> tuple[str, str | None, str | None]:
    """``(message, code, param)`` from error payloads (OpenAI's, Anthropic's and the variants, tolerant of the variants
    seen in the wild: ``{"error": {...}}``, ``{"error": "text"}``, vLLM's ``{"object": "error"}``,
    Azure's string codes and missing ``type``."""
    obj: object = payload.get("error", payload) if isinstance(payload, Mapping) else payload
    if isinstance(obj, str):
        return obj, None, None
    if not isinstance(obj, Mapping):
        return "", None, None
    message = obj.get("message")
    code = obj.get("code")
    param = obj.get("param")
    return (
        message if isinstance(message, str) else "",
        str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None,
        param if isinstance(param, str) else None,
    )


def retry_after_seconds(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """Delay the upstream asked for: ``retry-after-ms``, then ``retry-after`` (seconds or HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
) -> UpstreamError:
    """Classify an upstream HTTP error. ``message`` must already be free of secrets."""
    if status in (401, 403):
        return UpstreamAuthFailed(
            f"provider '{provider}' rejected Switchboard's credentials ({status}): {message}",
            upstream_status=status,
            code="upstream_auth_failed",
        )
    if status == 429:
        return UpstreamRateLimited(message, upstream_status=status, retry_after=retry_after, code=code)
    if status in RETRYABLE_STATUSES or status >= 500:
        return UpstreamServerError(
            f"provider '{provider}' failed with {status}: {message}",
            upstream_status=status,
            retry_after=retry_after,
        )
    # Every other 4xx is about the request itself: the client gets the provider's answer.
    return UpstreamRejected(message, upstream_status=status, status=status, code=code, param=param)


def tokens_of(usage: Usage) -> TokenUsage:
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0
    return TokenUsage(
        prompt=usage.prompt_tokens, completion=usage.completion_tokens, cached=cached, reasoning=reasoning
    )


def report_of(completion: ChatCompletion) -> Report:
    """The report of an answer Switchboard built itself (a translated one)."""
    first = completion.choices[0] if completion.choices else None
    return Report(
        usage=tokens_of(completion.usage) if isinstance(completion.usage, Usage) else None,
        finish_reason=first.finish_reason if first is not None else None,
        response_id=completion.id,
        response_model=completion.model,
    )
