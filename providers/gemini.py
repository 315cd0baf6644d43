"""Google Gemini ``generateContent`` ↔ OpenAI Chat Completions.

``to_gemini`` and ``from_gemini`` are pure (call ids come from an injected generator: Gemini's
function calls usually carry none). Choices where the APIs differ, documented in the README:

- ``tool`` messages become ``functionResponse`` parts, named after the assistant tool call they
  answer (found by ``tool_call_id`` earlier in the conversation); a JSON object answer is passed as
  the response, anything else as ``{"content": text}``.
- ``STOP`` with function calls in the choice is ``finish_reason: "tool_calls"``.
- Each stream event is a whole response holding only the new parts; ``usageMetadata`` is
  cumulative, so the last one counts. The finish chunk (and the usage chunk, when asked for) go
  out when an event carries ``finishReason``; the stream ends when the connection does.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final
from urllib.parse import quote

import httpx
import msgspec
from msgspec import UNSET

from providers import gemini_wire as wire
from providers.base import (
    Inbound,
    Parsed,
    Report,
    SecretRedactor,
    error_fields,
    error_for_status,
    post,
    report_of,
    retry_after_seconds,
    tokens_of,
)
from providers.embeddings import EmbeddingsCall, embedding_list, estimate_tokens, usage_report
from providers.errors import (
    UntranslatableRequest,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamServerError,
)
from providers.gemini_request import to_gemini
from providers.schema import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    FunctionCallDelta,
    FunctionCallOut,
    PromptTokensDetails,
    ResponseMessage,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)
from providers.sse import SSEEvent

FILTERED: Final = frozenset({"SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "RECITATION"})
SUPPORTED: Final = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "tools",
        "tool_choice",
        "response_format",
    }
)
_NULLISH: Final = frozenset({b"null", b"false"})
_RETRY_DELAY: Final = re.compile(rb'"retryDelay"\s*:\s*"([0-9.]+)s"')
_encode = msgspec.json.Encoder().encode
IdSource = Callable[[], str]


def random_ids() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# ---- answers ------------------------------------------------------------------------------------


def usage_from(meta: wire.UsageMetadata | None) -> Usage:
    meta = meta or wire.UsageMetadata()
    completion = meta.candidates_token_count + meta.thoughts_token_count
    return Usage(
        prompt_tokens=meta.prompt_token_count,
        completion_tokens=completion,
        total_tokens=meta.prompt_token_count + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=meta.cached_content_token_count),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=meta.thoughts_token_count),
    )


def finish_reason(reason: str | None, called: bool) -> str | None:
    if reason is None:
        return None
    if reason in FILTERED:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if called else "stop"


def _message(candidate: wire.Candidate, ids: IdSource) -> ResponseMessage:
    text = [p.text for p in candidate.content.parts if isinstance(p.text, str) and not p.thought]
    thoughts = [p.text for p in candidate.content.parts if isinstance(p.text, str) and p.thought]
    calls = [
        ToolCallOut(
            id=p.function_call.id or ids(),
            function=FunctionCallOut(
                name=p.function_call.name,
                arguments=bytes(p.function_call.args).decode("utf-8", "replace")
                if p.function_call.args is not UNSET
                else "{}",
            ),
        )
        for p in candidate.content.parts
        if p.function_call is not UNSET
    ]
    message = ResponseMessage(content="".join(text) if text else None)
    if calls:
        message.tool_calls = calls
    if thoughts:
        message.reasoning_content = "".join(thoughts)
    return message


def from_gemini(resp: wire.GenerateContentResponse, model: str, created: int, ids: IdSource) -> ChatCompletion:
    choices = []
    for i, candidate in enumerate(resp.candidates):
        message = _message(candidate, ids)
        finish = finish_reason(candidate.finish_reason or "STOP", message.tool_calls is not UNSET)
        choices.append(Choice(index=i, message=message, finish_reason=finish))
    if not choices:  # the prompt itself was blocked
        blocked = resp.prompt_feedback is not None and resp.prompt_feedback.block_reason is not None
        choices.append(
            Choice(index=0, message=ResponseMessage(), finish_reason="content_filter" if blocked else "stop")
        )
    return ChatCompletion(
        id=f"chatcmpl-{resp.response_id}" if resp.response_id else f"chatcmpl-{ids()}",
        created=created,
        model=resp.model_version or model,
        choices=choices,
        usage=usage_from(resp.usage_metadata),
    )


# ---- stream -------------------------------------------------------------------------------------

_decode_response = msgspec.json.Decoder(wire.GenerateContentResponse).decode


class _EmbedPart(msgspec.Struct):
    text: str


class _EmbedContent(msgspec.Struct):
    parts: list[_EmbedPart]


class _EmbedRequest(msgspec.Struct, omit_defaults=True, rename="camel"):
    model: str
    content: _EmbedContent
    output_dimensionality: int | None = None


class _BatchEmbed(msgspec.Struct):
    requests: list[_EmbedRequest]


class _Values(msgspec.Struct):
    values: list[float]


class _BatchEmbedAnswer(msgspec.Struct):
    embeddings: list[_Values] | None = None


_decode_embeddings = msgspec.json.Decoder(_BatchEmbedAnswer).decode


class GeminiStream:
    """A Gemini SSE stream → OpenAI chunk payloads (see the module docstring)."""

    def __init__(self, provider: GeminiProvider, model: str, include_usage: bool, created: int, ids: IdSource) -> None:
        self._provider = provider
        self._model = model
        self._include_usage = include_usage
        self._created = created
        self._ids = ids
        self._id = ""
        self._started: set[int] = set()  # choices whose role chunk went out
        self._calls: dict[int, itertools.count[int]] = {}  # per choice: next tool call index
        self._finished: set[int] = set()
        self._usage: wire.UsageMetadata | None = None
        self._done = False
        self._finish_reason: str | None = None  # the first choice's

    @property
    def finished(self) -> bool:
        return False  # Gemini has no end marker: the stream ends with the connection

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def report(self) -> Report:
        return Report(
            usage=tokens_of(usage_from(self._usage)) if self._usage is not None else None,
            finish_reason=self._finish_reason,
            response_id=self._id or None,
            response_model=self._model or None,
        )

    def _chunk(self, index: int, delta: Delta, finish: str | None = None) -> bytes:
        choice = ChunkChoice(index=index, delta=delta, finish_reason=finish)
        return _encode(ChatCompletionChunk(id=self._id, created=self._created, model=self._model, choices=[choice]))

    def translate(self, event: SSEEvent) -> Sequence[bytes]:
        try:
            resp = _decode_response(event.data)
        except (msgspec.DecodeError, RecursionError):  # nested past the decoder: malformed too
            raise UpstreamProtocolError(f"provider '{self._provider.name}' sent a malformed stream event") from None
        if resp.error is not UNSET:
            raise self._provider.stream_error(bytes(resp.error))
        if not self._id:
            self._id = f"chatcmpl-{resp.response_id or self._ids()}"
            self._model = resp.model_version or self._model
        if resp.usage_metadata is not None:
            self._usage = resp.usage_metadata
        out: list[bytes] = []
        for candidate in resp.candidates:
            out.extend(self._candidate(candidate))
        if not resp.candidates and resp.prompt_feedback is not None and resp.prompt_feedback.block_reason:
            out.append(self._chunk(0, Delta(role="assistant", content=None), "content_filter"))
            self._finished.add(0)
            self._finish_reason = "content_filter"
        if self._finished and not self._done and len(self._finished) >= max(len(self._started), 1):
            self._done = True
            if self._include_usage:
                chunk = ChatCompletionChunk(
                    id=self._id, created=self._created, model=self._model, choices=[], usage=usage_from(self._usage)
                )
                out.append(_encode(chunk))
        return out

    def _candidate(self, candidate: wire.Candidate) -> Iterator[bytes]:
        index = candidate.index
        if index not in self._started:
            self._started.add(index)
            yield self._chunk(index, Delta(role="assistant", content=""))
        for part in candidate.content.parts:
            if part.function_call is not UNSET:
                call = part.function_call
                position = next(self._calls.setdefault(index, itertools.count()))
                arguments = bytes(call.args).decode("utf-8", "replace") if call.args is not UNSET else "{}"
                fragment = ToolCallDelta(
                    index=position,
                    id=call.id or self._ids(),
                    type="function",
                    function=FunctionCallDelta(name=call.name, arguments=arguments),
                )
                yield self._chunk(index, Delta(tool_calls=[fragment]))
            elif isinstance(part.text, str) and part.text:
                delta = Delta(reasoning_content=part.text) if part.thought else Delta(content=part.text)
                yield self._chunk(index, delta)
        if candidate.finish_reason is not None and index not in self._finished:
            self._finished.add(index)
            reason = finish_reason(candidate.finish_reason, index in self._calls)
            if index == 0:
                self._finish_reason = reason
            yield self._chunk(index, Delta(), reason)


# ---- adapter ------------------------------------------------------------------------------------


class GeminiProvider:
    """Adapter for one configured Gemini provider. The key goes in ``x-goog-api-key``, never in
    the URL, where it would end up in logs."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        headers: Mapping[str, str] | None = None,
        ids: IdSource = random_ids,
    ) -> None:
        self.name = name
        self._base = base_url.rstrip("/") + "/v1beta/models/"
        base = {"content-type": "application/json", **(headers or {})}
        if api_key:
            base["x-goog-api-key"] = api_key
        self._headers = httpx.Headers(base)
        self._stream_headers = httpx.Headers({**base, "accept": "text/event-stream"})
        self._ids = ids
        self.redact = SecretRedactor.for_upstream(api_key, base_url, headers)

    def build_request(self, call: Inbound, model: str) -> httpx.Request:
        stream = call.chat.is_stream
        action = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        url = httpx.URL(self._base + quote(model, safe="") + action)
        return post(url, self._stream_headers if stream else self._headers, _encode(to_gemini(call.chat)))

    def unsupported(self, call: Inbound) -> list[str]:
        # parallel_tool_calls: true is what Gemini does anyway; false it cannot promise.
        return [
            k
            for k, v in call.fields.items()
            if (k not in SUPPORTED and k != "parallel_tool_calls" and bytes(v) not in _NULLISH)
            or (k == "parallel_tool_calls" and bytes(v) == b"false")
        ]

    def parse_response(self, body: bytes, model: str) -> Parsed:
        try:
            resp = _decode_response(body)
        except (msgspec.DecodeError, RecursionError):  # nested past the decoder: malformed too
            raise UpstreamProtocolError(f"provider '{self.name}' answered with a malformed response") from None
        if resp.error is not UNSET:
            raise self.stream_error(bytes(resp.error))
        if not resp.candidates and (resp.prompt_feedback is None or resp.prompt_feedback.block_reason is None):
            raise UpstreamProtocolError(f"provider '{self.name}' answered without candidates or a block reason")
        if any(not c.content.parts and c.finish_reason is None for c in resp.candidates):
            raise UpstreamProtocolError(
                f"provider '{self.name}' answered with a candidate that has neither content nor finishReason"
            )
        completion = from_gemini(resp, model, int(time.time()), self._ids)
        return Parsed(_encode(completion), report_of(completion))

    def stream_translator(self, call: Inbound) -> GeminiStream:
        return GeminiStream(self, call.chat.model, call.chat.include_usage, int(time.time()), self._ids)

    def embeddings_request(self, call: EmbeddingsCall, model: str) -> httpx.Request:
        """``batchEmbedContents``: one request per input. Gemini embeds text, not token ids."""
        texts = call.texts
        if texts is None:
            raise UntranslatableRequest(
                f"provider '{self.name}' (Gemini) embeds text, not token arrays: send `input` as strings",
                param="input",
            )
        name = "models/" + model
        requests = [
            _EmbedRequest(
                model=name,
                content=_EmbedContent(parts=[_EmbedPart(text=t)]),
                output_dimensionality=call.request.dimensions,
            )
            for t in texts
        ]
        url = httpx.URL(self._base + quote(model, safe="") + ":batchEmbedContents")
        return post(url, self._headers, _encode(_BatchEmbed(requests=requests)))

    def parse_embeddings(self, body: bytes, call: EmbeddingsCall, model: str) -> Parsed:
        try:
            answer = _decode_embeddings(body)
        except (msgspec.DecodeError, RecursionError):
            raise UpstreamProtocolError(f"provider '{self.name}' answered with a malformed response") from None
        texts = call.texts or []
        if answer.embeddings is None or len(answer.embeddings) != len(texts):
            raise UpstreamProtocolError(f"provider '{self.name}' answered without an embedding for every input")
        tokens = estimate_tokens(call)  # Gemini reports none: the estimate is what is counted
        listing = embedding_list([e.values for e in answer.embeddings], model, tokens, call.base64)
        return Parsed(_encode(listing), Report(usage=usage_report(tokens), response_model=model))

    def parse_error(self, status: int, body: bytes, headers: httpx.Headers) -> UpstreamError:
        try:
            message, _, _ = error_fields(msgspec.json.decode(body))
        except (msgspec.DecodeError, RecursionError):
            message = self.redact.text(body)
        message = self.redact(message) or f"HTTP {status}"
        if b"API_KEY_INVALID" in body:  # Gemini answers a bad key with a 400
            return UpstreamAuthFailed(
                f"provider '{self.name}' rejected Switchboard's credentials ({status}): {message}",
                upstream_status=status,
                code="upstream_auth_failed",
            )
        retry_after = retry_after_seconds(headers)
        if retry_after is None and (delay := _RETRY_DELAY.search(body)):
            retry_after = float(delay.group(1))
        return error_for_status(status, message, provider=self.name, retry_after=retry_after)

    def stream_error(self, error: bytes) -> UpstreamError:
        message, _, _ = error_fields({"error": msgspec.json.decode(error)})
        return UpstreamServerError(f"provider '{self.name}' reported an error: {self.redact(message)}")
