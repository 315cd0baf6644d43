"""Anthropic Messages ↔ OpenAI Chat Completions.

``to_anthropic`` and ``from_anthropic`` are pure; ``AnthropicStream`` turns the event stream into
OpenAI chunks (tool calls renumbered from 0, ``id`` and ``name`` only in a call's first fragment,
arguments in fragments, the finish chunk, then usage when asked for). Choices made where the
APIs differ, documented in the README:

- ``temperature`` above 1 (OpenAI allows 2) is clamped to 1, Anthropic's maximum.
- ``response_format`` ``json_schema``/``json_object`` become one forced tool, ``json_response``, whose
  input comes back as the message content with ``finish_reason: "stop"``.
- ``max_tokens`` is required by Anthropic: the provider's ``default_max_tokens`` when the client
  sends neither ``max_completion_tokens`` nor ``max_tokens``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Final

import httpx
import msgspec
from msgspec import UNSET

from providers import anthropic_wire as wire
from providers.anthropic_request import JSON_TOOL, to_anthropic
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
from providers.embeddings import EmbeddingsCall
from providers.errors import UpstreamError, UpstreamProtocolError, UpstreamServerError
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

FINISH_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# OpenAI parameters an Anthropic target honours; anything else set in a request is dropped.
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
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "response_format",
        "n",
    }
)
_NULLISH: Final = frozenset({b"null", b"false"})
_encode = msgspec.json.Encoder().encode


# ---- answer ---------------------------------------------------------------------------------------


def usage_from(usage: wire.Usage) -> Usage:
    """prompt = input + cache creation + cache read; cached = cache read (Anthropic counts the
    three apart; OpenAI's prompt_tokens include cached tokens)."""
    cache_read = usage.cache_read_input_tokens or 0
    prompt = (usage.input_tokens or 0) + (usage.cache_creation_input_tokens or 0) + cache_read
    completion = usage.output_tokens or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cache_read),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=0),
    )


def from_anthropic(msg: wire.MessageInfo, created: int) -> ChatCompletion:
    text: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCallOut] = []
    json_answer = False
    for block in msg.content or ():
        if block.type == "text":
            text.append(block.text)
        elif block.type == "thinking":
            thinking.append(block.thinking)
        elif block.type == "tool_use":
            arguments = bytes(block.input).decode("utf-8", "replace") if block.input is not UNSET else "{}"
            if block.name == JSON_TOOL:
                text.append(arguments)
                json_answer = True
            else:
                calls.append(ToolCallOut(id=block.id, function=FunctionCallOut(name=block.name, arguments=arguments)))
    message = ResponseMessage(content="".join(text) if text else None)
    if calls:
        message.tool_calls = calls
    if thinking:
        message.reasoning_content = "".join(thinking)
    finish = "stop" if json_answer else FINISH_REASONS.get(msg.stop_reason or "", "stop")
    return ChatCompletion(
        id=msg.id,
        created=created,
        model=msg.model,
        choices=[Choice(index=0, message=message, finish_reason=finish)],
        usage=usage_from(msg.usage),
    )


# ---- stream -----------------------------------------------------------------------------------------

_decode_event = msgspec.json.Decoder(wire.StreamEvent).decode
_TEXT_SUFFIX: Final = b'},"finish_reason":null,"logprobs":null}]}'
_NOTHING: Final[tuple[bytes, ...]] = ()


class AnthropicStream:
    """One Anthropic event stream → OpenAI chunk payloads (see the module docstring)."""

    def __init__(self, provider: AnthropicProvider, include_usage: bool, created: int) -> None:
        self._provider = provider
        self._include_usage = include_usage
        self._created = created
        self._id = ""
        self._model = ""
        self._usage = wire.Usage()
        self._tools: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
        self._json_block: int | None = None  # the forced json_response tool's block
        self._finish: str | None = None
        self._finished = False
        self._started = False
        self._text_prefix = b""  # a text chunk up to its content, built once the message id is known

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def complete(self) -> bool:
        return self._finished or self._finish is not None

    @property
    def report(self) -> Report:
        reported = self._usage != wire.Usage()  # message_start always carries usage; none seen: unknown
        return Report(
            usage=tokens_of(usage_from(self._usage)) if reported else None,
            finish_reason=self._finish,
            response_id=self._id or None,
            response_model=self._model or None,
        )

    def _text_template(self) -> bytes:
        head, _, tail = self._chunk(Delta(content="\x00")).partition(b'"content":"\\u0000"')
        assert tail == _TEXT_SUFFIX, tail
        self._text_prefix = head + b'"content":'
        return self._text_prefix

    def _chunk(self, delta: Delta, finish: str | None = None) -> bytes:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish)
        return _encode(ChatCompletionChunk(id=self._id, created=self._created, model=self._model, choices=[choice]))

    def translate(self, event: SSEEvent) -> Sequence[bytes]:
        if event.event not in wire.EVENT_TYPES:
            return _NOTHING  # unknown event types must be ignored
        try:
            data = _decode_event(event.data)
        except (msgspec.DecodeError, RecursionError):  # nested past the decoder: malformed too
            raise UpstreamProtocolError(
                f"provider '{self._provider.name}' sent a malformed '{event.event}' event"
            ) from None
        if isinstance(data, wire.ContentBlockDelta):
            out = self._delta(data)
        elif isinstance(data, wire.ContentBlockStart):
            out = self._block_start(data)
        elif isinstance(data, wire.MessageDelta):
            out = self._message_delta(data)
        elif isinstance(data, wire.MessageStop):
            out = self._stop()
        elif isinstance(data, wire.MessageStart):
            self._id, self._model = data.message.id, data.message.model
            self._usage = data.message.usage
            return _NOTHING
        elif isinstance(data, wire.ErrorEvent):
            raise self._provider.stream_error(data.error)
        else:
            return _NOTHING  # ping, content_block_stop
        if out and not self._started:
            # The role chunk waits for the first real content: until a chunk has gone to the
            # client, an `overloaded_error` can still move the request to another target.
            self._started = True
            return (self._chunk(Delta(role="assistant", content="")), *out)
        return out

    def _block_start(self, data: wire.ContentBlockStart) -> Sequence[bytes]:
        block = data.content_block
        if block.type == "tool_use":
            if block.name == JSON_TOOL:
                self._json_block = data.index
                return _NOTHING
            index = self._tools[data.index] = len(self._tools)
            call = ToolCallDelta(
                index=index, id=block.id, type="function", function=FunctionCallDelta(name=block.name, arguments="")
            )
            return (self._chunk(Delta(tool_calls=[call])),)
        if block.type == "text" and block.text:
            return (self._chunk(Delta(content=block.text)),)
        return _NOTHING

    def _delta(self, data: wire.ContentBlockDelta) -> Sequence[bytes]:
        delta = data.delta
        if delta.type == "text_delta":
            if not delta.text:
                return _NOTHING
            # The common case, once per token: splice the text into a prebuilt chunk rather
            # than building three Structs (the bytes are the same as _chunk's).
            prefix = self._text_prefix or self._text_template()
            return (prefix + _encode(delta.text) + _TEXT_SUFFIX,)
        if delta.type == "input_json_delta":
            if not delta.partial_json:
                return _NOTHING
            if data.index == self._json_block:
                return (self._chunk(Delta(content=delta.partial_json)),)
            index = self._tools.get(data.index)
            if index is None:
                return _NOTHING
            call = ToolCallDelta(index=index, function=FunctionCallDelta(arguments=delta.partial_json))
            return (self._chunk(Delta(tool_calls=[call])),)
        if delta.type == "thinking_delta" and delta.thinking:
            return (self._chunk(Delta(reasoning_content=delta.thinking)),)
        return _NOTHING  # signature_delta, citations_delta

    def _message_delta(self, data: wire.MessageDelta) -> Sequence[bytes]:
        # Cumulative counts: take what this event carries, keep the rest.
        carried = {f: v for f in wire.Usage.__struct_fields__ if (v := getattr(data.usage, f)) is not None}
        self._usage = msgspec.structs.replace(self._usage, **carried)
        if data.delta.stop_reason is None or self._finish is not None:
            return _NOTHING
        finish = FINISH_REASONS.get(data.delta.stop_reason, "stop")
        if self._json_block is not None and finish == "tool_calls":
            finish = "stop"
        self._finish = finish
        return (self._chunk(Delta(), finish),)

    def _stop(self) -> Sequence[bytes]:
        self._finished = True
        out: list[bytes] = []
        if self._finish is None:  # no message_delta with a stop reason: still end the choice
            self._finish = "stop"
            out.append(self._chunk(Delta(), "stop"))
        if self._include_usage:
            chunk = ChatCompletionChunk(
                id=self._id, created=self._created, model=self._model, choices=[], usage=usage_from(self._usage)
            )
            out.append(_encode(chunk))
        return out


class AnthropicPassThrough:
    """An Anthropic stream relayed to a Messages client as it came, event by event. An
    ``AnthropicStream`` reads along for the record (usage, finish) and for in-band errors. The
    events before the first content (``message_start``, ``ping``) wait with it, so that a failure
    until then can still move the request to another target."""

    def __init__(self, reader: AnthropicStream) -> None:
        self._reader = reader
        self._held: list[bytes] = []
        self._content = False

    @property
    def finished(self) -> bool:
        return self._reader.finished

    @property
    def complete(self) -> bool:
        return self._reader.complete

    @property
    def report(self) -> Report:
        return self._reader.report

    def translate(self, event: SSEEvent) -> Sequence[bytes]:
        produced = self._reader.translate(event)  # raises on an error event
        if event.event == "message":
            return _NOTHING  # data-only frames: Anthropic's clients ignore them too
        framed = b"event: " + event.event.encode() + b"\ndata: " + event.data + b"\n\n"
        if self._content:
            return (framed,)
        self._held.append(framed)
        if produced or event.event in ("message_delta", "message_stop"):
            self._content = True
            held, self._held = self._held, []
            return held
        return _NOTHING


# ---- adapter ----------------------------------------------------------------------------------------


class AnthropicProvider:
    """Adapter for one configured Anthropic provider."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        default_max_tokens: int = 4096,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._url = httpx.URL(base_url.rstrip("/") + "/v1/messages")
        self._default_max_tokens = default_max_tokens
        base = {"content-type": "application/json", "anthropic-version": wire.API_VERSION, **(headers or {})}
        if api_key:
            base["x-api-key"] = api_key
        self._headers = httpx.Headers(base)
        self._stream_headers = httpx.Headers({**base, "accept": "text/event-stream"})
        self.redact = SecretRedactor.for_upstream(api_key, base_url, headers)

    def build_request(self, call: Inbound, model: str) -> httpx.Request:
        body = to_anthropic(call.chat, model, self._default_max_tokens)
        return post(self._url, self._stream_headers if call.chat.is_stream else self._headers, _encode(body))

    def unsupported(self, call: Inbound) -> list[str]:
        dropped = [k for k, v in call.fields.items() if k not in SUPPORTED and bytes(v) not in _NULLISH]
        if isinstance(call.chat.n, int) and call.chat.n > 1:
            dropped.append("n")
        return dropped

    def parse_response(self, body: bytes, model: str) -> Parsed:
        try:
            msg = msgspec.json.decode(body, type=wire.MessageInfo)
        except (msgspec.DecodeError, RecursionError):  # nested past the decoder: malformed too
            raise UpstreamProtocolError(f"provider '{self.name}' answered with a malformed message") from None
        if msg.type != "message" or not msg.id or not msg.has_content:
            raise UpstreamProtocolError(f"provider '{self.name}' answered with something that is not a message")
        completion = from_anthropic(msg, int(time.time()))
        return Parsed(_encode(completion), report_of(completion))

    def stream_translator(self, call: Inbound) -> AnthropicStream:
        return AnthropicStream(self, call.chat.include_usage, int(time.time()))

    def passthrough_request(
        self, fields: Mapping[str, msgspec.Raw], model: str, stream: bool, forwarded: Mapping[str, str]
    ) -> httpx.Request:
        """A Messages request sent on as the client wrote it (the model named by the target), with
        the client's ``anthropic-version`` and ``anthropic-beta``: features Switchboard does not
        model (thinking signatures, ``cache_control``, server tools) survive."""
        body = {**fields, "model": msgspec.Raw(_encode(model))}
        headers = self._stream_headers if stream else self._headers
        if forwarded:
            headers = headers.copy()
            headers.update(forwarded)
        return post(self._url, headers, _encode(body))

    def passthrough_stream(self) -> AnthropicPassThrough:
        return AnthropicPassThrough(AnthropicStream(self, include_usage=False, created=0))

    def embeddings_request(self, call: EmbeddingsCall, model: str) -> None:
        return None  # Anthropic has no embeddings API: the target is passed over

    def parse_embeddings(self, body: bytes, call: EmbeddingsCall, model: str) -> Parsed:
        raise UpstreamProtocolError(f"provider '{self.name}' has no embeddings API")

    def parse_error(self, status: int, body: bytes, headers: httpx.Headers) -> UpstreamError:
        try:
            message, _, _ = error_fields(msgspec.json.decode(body))
        except (msgspec.DecodeError, RecursionError):
            message = self.redact.text(body)
        return error_for_status(
            status,
            self.redact(message) or f"HTTP {status}",
            provider=self.name,
            retry_after=retry_after_seconds(headers),
        )

    def stream_error(self, error: wire.ErrorInfo) -> UpstreamError:
        """An ``event: error`` inside a 200 stream, e.g. ``overloaded_error``: worth another try."""
        return UpstreamServerError(
            f"provider '{self.name}' reported {self.redact(error.type) or 'an error'}: {self.redact(error.message)}"
        )
