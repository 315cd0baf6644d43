"""OpenAI and every OpenAI-compatible API (vLLM, Ollama, Groq, Together, OpenRouter…).

Transparent by construction: the client's body is forwarded field by field with only
``model`` rewritten, and the upstream's answer and stream events reach the client byte-for-byte.
Each answer is still decoded into a small view, to catch errors and malformed payloads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

import httpx
import msgspec
from msgspec import UNSET, UnsetType

from providers.base import (
    Inbound,
    Parsed,
    Report,
    SecretRedactor,
    TokenUsage,
    error_fields,
    error_for_status,
    post,
    retry_after_seconds,
)
from providers.chunk_view import ChunkBody, ChunkView, decode_body, decode_chunk
from providers.embeddings import EmbeddingsCall
from providers.errors import UntranslatableRequest, UpstreamError, UpstreamProtocolError, UpstreamServerError
from providers.sse import SSEEvent

_DONE: Final = b"[DONE]"
USER_AGENT: Final = "switchboard/0.1"
_NOTHING: Final[tuple[bytes, ...]] = ()
_encode = msgspec.json.Encoder().encode


class _ChoiceView(msgspec.Struct):
    finish_reason: str | None = None


class _ChunkView(msgspec.Struct):
    """What the gateway must know of a chunk or completion; everything else is skipped."""

    choices: list[_ChoiceView] | None = None
    error: Any = None  # OpenRouter and others put an error object inside a 200 stream
    object: str | UnsetType = UNSET
    message: str | UnsetType = UNSET  # vLLM: {"object": "error", "message": ...}
    usage: msgspec.Raw = msgspec.Raw()  # decoded apart, leniently: a server's odd usage is not a broken answer


class _AnswerView(_ChunkView):
    """A whole answer's or a stream's first chunk's view: also its id and model."""

    id: Any = None
    model: Any = None


class _TokenDetails(msgspec.Struct):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class _UsageView(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _TokenDetails | None = None
    completion_tokens_details: _TokenDetails | None = None


_decode_view = msgspec.json.Decoder(_ChunkView).decode
_decode_answer = msgspec.json.Decoder(_AnswerView).decode
_decode_usage = msgspec.json.Decoder(_UsageView).decode
_decode_any = msgspec.json.Decoder().decode


def _includes_usage(fields: Mapping[str, msgspec.Raw]) -> bool:
    """Whether the client asked for a stream's usage itself (``stream_options.include_usage``)."""
    raw = fields.get("stream_options")
    if raw is None:
        return False
    try:
        options = _decode_any(raw)
    except msgspec.DecodeError:
        return False
    return isinstance(options, dict) and options.get("include_usage") is True


class _EmbeddingsUsageView(msgspec.Struct):
    prompt_tokens: object = None


class _EmbeddingsView(msgspec.Struct):
    """Just what the gateway reads of an embeddings answer; the body goes to the client as it is."""

    data: list[msgspec.Raw] | None = None
    model: object = None
    usage: _EmbeddingsUsageView | None = None
    error: msgspec.Raw | None = None


_decode_embeddings = msgspec.json.Decoder(_EmbeddingsView).decode


class _ResponseUsageView(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_details: dict[str, object] | None = None
    output_tokens_details: dict[str, object] | None = None


class _ResponseView(msgspec.Struct):
    """What the gateway reads of a native Responses answer."""

    id: object = None
    model: object = None
    output: object = None
    usage: _ResponseUsageView | None = None
    kind: object = msgspec.field(default=None, name="object")


class _ResponseEvent(msgspec.Struct):
    type: str = ""
    response: _ResponseView | None = None


_decode_response_view = msgspec.json.Decoder(_ResponseView).decode
_decode_response_event = msgspec.json.Decoder(_ResponseEvent).decode


def response_report(usage: _ResponseUsageView | None, ident: object, model: object) -> Report:
    tokens = None
    if usage is not None:
        details, out = usage.input_tokens_details or {}, usage.output_tokens_details or {}
        cached, reasoning = details.get("cached_tokens"), out.get("reasoning_tokens")
        tokens = TokenUsage(
            prompt=usage.input_tokens,
            completion=usage.output_tokens,
            cached=cached if isinstance(cached, int) else 0,
            reasoning=reasoning if isinstance(reasoning, int) else 0,
        )
    return Report(
        usage=tokens,
        response_id=ident if isinstance(ident, str) else None,
        response_model=model if isinstance(model, str) else None,
    )


class ResponsesPassThrough:
    """A native Responses event stream relayed as it came, every event with its ``event:`` line;
    its terminal event gives the record its usage. ``error`` and ``response.failed`` before the
    first output fail the attempt (so another target can take it); after it, they go to the client."""

    __slots__ = ("_content", "_done", "_held", "_provider", "_report")

    def __init__(self, provider: OpenAIProvider) -> None:
        self._provider = provider
        self._report = Report()
        self._done = False
        self._content = False
        self._held: list[bytes] = []

    @property
    def finished(self) -> bool:
        return self._done

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def report(self) -> Report:
        return self._report

    def translate(self, event: SSEEvent) -> Sequence[bytes]:
        data = event.data
        if data[:1] != b"{":
            return _NOTHING  # [DONE] (clients ignore it) or a keep-alive
        try:
            parsed = _decode_response_event(data)
        except (msgspec.DecodeError, RecursionError):
            raise UpstreamProtocolError(
                f"provider '{self._provider.name}' sent a stream event that is not JSON"
            ) from None
        kind = parsed.type
        if kind in ("response.completed", "response.incomplete", "response.failed") and parsed.response is not None:
            self._done = True
            view = parsed.response
            self._report = response_report(view.usage, view.id, view.model)
        if kind in ("error", "response.failed") and not self._content:
            raise self._provider.stream_error(data)
        framed = b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        if self._content or kind.startswith("response.output_item") or self._done:
            self._content = True
            held, self._held = self._held, []
            return (*held, framed)
        self._held.append(framed)  # response.created, in_progress: wait for the first output
        return _NOTHING


_ASK_USAGE: Final = msgspec.Raw(b'{"include_usage":true}')


def usage_of(raw: msgspec.Raw) -> TokenUsage | None:
    """The usage an OpenAI-format answer reported, or None when it reported none we can read."""
    if len(raw) <= 4:  # absent or null
        return None
    try:
        view = _decode_usage(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    return TokenUsage(
        prompt=view.prompt_tokens,
        completion=view.completion_tokens,
        cached=(view.prompt_tokens_details.cached_tokens if view.prompt_tokens_details else None) or 0,
        reasoning=(view.completion_tokens_details.reasoning_tokens if view.completion_tokens_details else None) or 0,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class OpenAIStream:
    """Passes an OpenAI-format stream through, watching for its end and for in-band errors, and
    noting what the stream reports about itself. When Switchboard asked for usage on the client's
    behalf, the usage-only chunk is noted and not passed on: the client gets the stream it asked
    for, byte for byte.

    With ``views`` set to a list (by a stream whose framing translates the chunks), each chunk
    is decoded into the framings' view instead (``providers.chunk_view``; the first ones, until
    one names the model, with their id and model) and the view of each chunk passed on is added
    to ``views``, so that the framing need not decode it again."""

    __slots__ = ("_finished", "_first", "_hide_usage", "_provider", "_report", "_saw_finish", "views")

    def __init__(self, provider: OpenAIProvider, hide_usage: bool) -> None:
        self._provider = provider
        self._hide_usage = hide_usage
        self._finished = False
        self._saw_finish = False
        self._first = True
        self._report = Report()
        self.views: list[ChunkBody] | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def complete(self) -> bool:
        # Some servers close without [DONE]; a chunk with a finish_reason is a complete answer.
        return self._finished or self._saw_finish

    @property
    def report(self) -> Report:
        return self._report

    def translate(self, event: SSEEvent) -> Sequence[bytes]:
        data = event.data
        if data[0] != 0x7B:  # not a JSON object: the end marker, a keep-alive (`data: :`), or junk
            if data == _DONE:
                self._finished = True
                return _NOTHING
            if data[0] == 0x3A or not data.strip():
                return _NOTHING
        views = self.views
        view: _ChunkView | ChunkBody
        viewed: ChunkBody | None = None
        try:
            if views is not None:
                view = viewed = decode_body(data) if not self._first else self._first_viewed(data)
            else:
                view = _decode_view(data) if not self._first else self._first_view(data)
        except (msgspec.DecodeError, RecursionError) as exc:  # nested past the decoder: malformed too
            raise self._malformed(data, exc) from None
        if view.error is not None or view.object == "error":
            raise self._provider.stream_error(data)
        if view.choices:
            for choice in view.choices:
                if choice.finish_reason is not None:
                    self._saw_finish = True
                    if self._report.finish_reason is None:
                        self._report.finish_reason = choice.finish_reason
        out = self._usage(view, data) if view.usage else (data,)  # one line even if it came as several
        if views is not None and viewed is not None and out:  # (one chunk at most: one view)
            views.append(viewed)
        return out

    def _malformed(self, data: bytes, exc: Exception) -> UpstreamError:
        """An event that is not JSON; or JSON the view refused (the framings' is the stricter):
        an in-band error in a shape of its own (its message kept), or a chunk no framing could read."""
        if not isinstance(exc, msgspec.ValidationError):
            return UpstreamProtocolError(f"provider '{self._provider.name}' sent a stream event that is not JSON")
        try:
            view = _decode_view(data)
        except (msgspec.DecodeError, RecursionError):
            view = None
        if view is not None and (view.error is not None or view.object == "error"):
            return self._provider.stream_error(data)
        return UpstreamProtocolError(f"provider '{self._provider.name}' sent a stream event of an unexpected shape")

    def _usage(self, view: _ChunkView | ChunkBody, data: bytes) -> Sequence[bytes]:
        if len(view.usage) > 4:  # not `null`: the usage chunk
            self._report.usage = usage_of(view.usage) or self._report.usage
            if self._hide_usage and not view.choices:
                return _NOTHING  # the usage chunk Switchboard asked for, not the client
        elif self._hide_usage:
            # Asked for usage, OpenAI adds `"usage":null` to every chunk: not what the client asked
            # for. (In a JSON string the quotes would be escaped, so content cannot match.)
            return (data.replace(b',"usage":null', b""),)
        return (data,)

    def _first_view(self, data: bytes) -> _ChunkView:
        self._first = False
        view = _decode_answer(data)
        self._report.response_id, self._report.response_model = _text(view.id), _text(view.model)
        return view

    def _first_viewed(self, data: bytes) -> ChunkView:
        """The framings' view of a chunk before one named the model: with its id and model."""
        view = decode_chunk(data)
        if self._report.response_id is None:
            self._report.response_id = view.id
        self._report.response_model = view.model
        self._first = view.model is None
        return view


class OpenAIProvider:
    """Adapter for one configured OpenAI-compatible provider."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        headers: Mapping[str, str] | None = None,
        stream_usage: bool = True,
        responses_native: bool = False,
    ) -> None:
        self.name = name
        self.responses_native = responses_native  # /v1/responses passed through, not translated
        self._stream_usage = stream_usage  # ask for usage in every stream (servers that refuse it: off)
        self._url = httpx.URL(base_url.rstrip("/") + "/chat/completions")
        self._embeddings_url = httpx.URL(base_url.rstrip("/") + "/embeddings")
        self._completions_url = httpx.URL(base_url.rstrip("/") + "/completions")
        self._responses_url = httpx.URL(base_url.rstrip("/") + "/responses")
        base_headers = {"content-type": "application/json", "user-agent": USER_AGENT, **(headers or {})}
        if api_key:
            base_headers.update(self.auth_headers(api_key))
        # Built once: httpx copies a Headers object cheaply, but normalizes a dict on every request.
        self._headers = httpx.Headers(base_headers)
        self._stream_headers = httpx.Headers({**base_headers, "accept": "text/event-stream"})
        self.redact = SecretRedactor.for_upstream(api_key, base_url, headers)

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    def url_for(self, model: str) -> httpx.URL:
        return self._url

    def embeddings_url_for(self, model: str) -> httpx.URL:
        return self._embeddings_url

    def completions_url_for(self, model: str) -> httpx.URL:
        return self._completions_url

    def responses_url_for(self, model: str) -> httpx.URL:
        return self._responses_url

    def responses_request(self, fields: Mapping[str, object], model: str, stream: bool) -> httpx.Request:
        """The Responses API passed through as sent (the model named by the target)."""
        body = {**fields, "model": model}
        return post(self.responses_url_for(model), self._stream_headers if stream else self._headers, _encode(body))

    def parse_responses(self, body: bytes) -> Parsed:
        """A native Responses answer, as it came; its usage for the record."""
        try:
            view = _decode_response_view(body)
        except (msgspec.DecodeError, RecursionError):
            raise UpstreamProtocolError(f"provider '{self.name}' answered with a body that is not JSON") from None
        if view.kind != "response" or not isinstance(view.output, list):
            raise UpstreamProtocolError(f"provider '{self.name}' answered with something that is not a response")
        return Parsed(body, response_report(view.usage, view.id, view.model))

    def responses_stream(self) -> ResponsesPassThrough:
        return ResponsesPassThrough(self)

    def completions_request(self, fields: Mapping[str, msgspec.Raw], model: str, stream: bool) -> httpx.Request:
        """The legacy completions API, passed through as sent (the model named by the target); a
        stream asks for its usage, as chat streams do (``completions_stream`` hides it again)."""
        body = {**fields, "model": msgspec.Raw(_encode(model))}
        if stream and self._stream_usage and not _includes_usage(fields):
            body["stream_options"] = _stream_options(fields.get("stream_options"))
        return post(self.completions_url_for(model), self._stream_headers if stream else self._headers, _encode(body))

    def completions_stream(self, fields: Mapping[str, msgspec.Raw]) -> OpenAIStream:
        return OpenAIStream(self, hide_usage=self._stream_usage and not _includes_usage(fields))

    def embeddings_request(self, call: EmbeddingsCall, model: str) -> httpx.Request:
        """The client's body as it came, the model named by the target (OpenAI-compatible servers
        take whatever else OpenAI's API does)."""
        fields = call.fields
        if call.request.model != model:
            fields = {**fields, "model": msgspec.Raw(_encode(model))}
        return post(self.embeddings_url_for(model), self._headers, _encode(fields))

    def parse_embeddings(self, body: bytes, call: EmbeddingsCall, model: str) -> Parsed:
        try:
            view = _decode_embeddings(body)
        except (msgspec.DecodeError, RecursionError):
            raise UpstreamProtocolError(f"provider '{self.name}' answered with a body that is not JSON") from None
        if view.error is not None and bytes(view.error) != b"null":
            raise self.stream_error(body)
        if view.data is None:
            raise UpstreamProtocolError(f"provider '{self.name}' answered without `data`")
        usage = view.usage
        prompt = usage.prompt_tokens if usage is not None and isinstance(usage.prompt_tokens, int) else None
        return Parsed(
            body,
            Report(
                usage=TokenUsage(prompt=prompt, completion=0) if prompt is not None else None,
                response_model=view.model if isinstance(view.model, str) else None,
            ),
        )

    def build_request(self, call: Inbound, model: str) -> httpx.Request:
        fields = call.fields
        if call.chat.model != model:
            fields = {**fields, "model": msgspec.Raw(_encode(model))}
        if call.chat.stream is True and self._asks_usage(call):
            fields = {**fields, "stream_options": _stream_options(fields.get("stream_options"))}
        return post(
            self.url_for(model), self._stream_headers if call.chat.is_stream else self._headers, _encode(fields)
        )

    def unsupported(self, call: Inbound) -> list[str]:
        return []  # whatever the client sends reaches the upstream

    def parse_response(self, body: bytes, model: str) -> Parsed:
        try:
            view = _decode_answer(body)
        except (msgspec.DecodeError, RecursionError):  # nested past the decoder: malformed too
            raise UpstreamProtocolError(f"provider '{self.name}' answered with a body that is not JSON") from None
        if view.error is not None or view.object == "error":
            raise self.stream_error(body)
        if view.choices is None:
            raise UpstreamProtocolError(f"provider '{self.name}' answered without `choices`")
        ident, model_ = view.id, view.model
        report = Report(
            usage=usage_of(view.usage) if len(view.usage) > 4 else None,
            finish_reason=view.choices[0].finish_reason if view.choices else None,
            response_id=ident if isinstance(ident, str) else None,
            response_model=model_ if isinstance(model_, str) else None,
        )
        return Parsed(body, report)

    def stream_translator(self, call: Inbound) -> OpenAIStream:
        return OpenAIStream(self, hide_usage=self._asks_usage(call))

    def _asks_usage(self, call: Inbound) -> bool:
        """Switchboard asks for a stream's usage itself when the client did not."""
        return self._stream_usage and call.chat.is_stream and not call.chat.include_usage

    def parse_error(self, status: int, body: bytes, headers: httpx.Headers) -> UpstreamError:
        message, code, param = self._error_fields(body)
        return error_for_status(
            status,
            message or f"HTTP {status}",
            provider=self.name,
            code=code,
            param=param,
            retry_after=retry_after_seconds(headers),
        )

    def stream_error(self, data: bytes) -> UpstreamError:
        """An error reported inside a 200 answer or stream (OpenRouter, vLLM)."""
        message, _, _ = self._error_fields(data)
        return UpstreamServerError(f"provider '{self.name}' reported an error: {message or 'unknown error'}")

    def _error_fields(self, body: bytes) -> tuple[str, str | None, str | None]:
        """Every field of an upstream error, redacted: any of them may echo the key."""
        try:
            message, code, param = error_fields(_decode_any(body))
        except (msgspec.DecodeError, RecursionError):
            return self.redact.text(body), None, None
        return self.redact(message), self.redact.optional(code), self.redact.optional(param)


def _stream_options(sent: msgspec.Raw | None) -> msgspec.Raw:
    """The client's ``stream_options`` with ``include_usage: true`` (its other options kept)."""
    if sent is None:
        return _ASK_USAGE
    options = msgspec.json.decode(sent)
    if not isinstance(options, dict):
        return _ASK_USAGE
    return msgspec.Raw(_encode({**options, "include_usage": True}))


class AzureProvider(OpenAIProvider):
    """Azure OpenAI: the OpenAI wire format, addressed by deployment (the target's model) and
    authenticated with an ``api-key`` header. Its empty-choices first chunk (prompt filter
    results) and ``content_filter_results`` pass through like any other field."""

    MAX_URLS: Final = 256

    def __init__(
        self,
        name: str,
        endpoint: str,
        api_key: str | None,
        api_version: str,
        headers: Mapping[str, str] | None = None,
        stream_usage: bool = True,
        responses_native: bool = True,
    ) -> None:
        super().__init__(name, endpoint, api_key, headers, stream_usage, responses_native)
        self._endpoint = endpoint.rstrip("/")
        self._api_version = api_version
        self._urls: dict[str, httpx.URL] = {}

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"api-key": api_key}

    def url_for(self, model: str) -> httpx.URL:
        return self._deployment_url(model, "chat/completions")

    def embeddings_url_for(self, model: str) -> httpx.URL:
        return self._deployment_url(model, "embeddings")

    def completions_url_for(self, model: str) -> httpx.URL:
        return self._deployment_url(model, "completions")

    def responses_url_for(self, model: str) -> httpx.URL:
        # Azure's Responses API is addressed by its v1 route, the deployment named in the body.
        return httpx.URL(f"{self._endpoint}/openai/v1/responses")

    def _deployment_url(self, model: str, operation: str) -> httpx.URL:
        url = self._urls.get(f"{operation} {model}")
        if url is None:
            if model in (".", ".."):  # a dot segment would resolve to another path on the host
                raise UntranslatableRequest(f"'{model}' is not a deployment name", param="model", code="invalid_value")
            url = httpx.URL(
                f"{self._endpoint}/openai/deployments/{quote(model, safe='')}/{operation}",
                params={"api-version": self._api_version},
            )
            if len(self._urls) < self.MAX_URLS:  # deployments named by clients must not grow this forever
                self._urls[f"{operation} {model}"] = url
        return url
