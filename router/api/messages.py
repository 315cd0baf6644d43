"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API, for Anthropic
SDK clients and the coding agents built on them, answered by any provider.

The same keys (``x-api-key`` as Anthropic's SDK sends it), limits, budgets, failover, Outcome,
spans and metrics as chat completions; errors in Anthropic's shape, before a stream and inside
one. An ``anthropic`` target gets the request untouched; any other gets it translated to Chat
Completions (``router.gateway.messages``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Annotated, Any, Final

import msgspec
from litestar import asgi
from litestar.types import HTTPScope, Receive, Send

from providers.anthropic_inbound import MessagesStream, Untranslatable, error_body, to_chat
from providers.base import Inbound
from providers.errors import SwitchboardError
from router.access.guard import Guard
from router.access.limits import Admitted
from router.api.continuing import Continuing
from router.api.decode import decode_call, explain
from router.api.handling import admit, begin, failed, finish, governed, identify, read_body, serve
from router.api.responses import JSONBody
from router.api.streams import Framing
from router.errors import InvalidRequest, MethodNotAllowed, Refused, ShuttingDown
from router.gateway.failover import Gateway, OpenStream
from router.gateway.messages import MessagesCall
from router.gateway.outcome import REQUEST_ID_KEY, Exchange

MESSAGES_PATH: Final = "/v1/messages"
COUNT_PATH: Final = "/v1/messages/count_tokens"
FORWARDED: Final = (b"anthropic-version", b"anthropic-beta")
_encode = msgspec.json.Encoder().encode


class _Required(msgspec.Struct):
    """What every Messages request must have; the rest is read by the translation."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    messages: Annotated[list[Any], msgspec.Meta(min_length=1)]
    stream: bool | None = None


class _Counted(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[Any], msgspec.Meta(min_length=1)]


_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_any = msgspec.json.Decoder(dict[str, Any]).decode


def decode(body: bytes, required: type[msgspec.Struct]) -> tuple[dict[str, msgspec.Raw], dict[str, Any]]:
    try:
        fields = _decode_fields(body)
        request = _decode_any(body)
        msgspec.convert(request, required)
    except msgspec.ValidationError as exc:
        raise explain(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("The request body must be a JSON object in UTF-8.", code="invalid_json") from None
    return fields, request


def translated(request: Mapping[str, Any]) -> Inbound:
    """The request as Chat Completions, or a 400 naming what cannot be expressed there."""
    try:
        return decode_call(_encode(to_chat(request)))
    except Untranslatable as exc:
        raise InvalidRequest(exc.message, param=exc.param, code="unsupported_for_target") from None
    except (TypeError, ValueError, AttributeError, KeyError):  # a shape no check above foresaw
        raise InvalidRequest("The request is not a valid Messages API request.", code="invalid_value") from None


def estimate_input(request: Mapping[str, Any]) -> int:
    """About four characters of the conversation (and tools) a token: what limits reserve and what
    ``message_start`` and ``count_tokens`` report before the upstream's count."""
    size = sum(len(_encode(request.get(name))) for name in ("system", "messages", "tools") if request.get(name))
    return size // 4 + 1


def forwarded(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    for name, value in headers:
        if name in FORWARDED:
            found.setdefault(name.decode(), []).append(value.decode("latin-1"))
    return {name: ",".join(values) for name, values in found.items()}


class _PassThrough:
    """An Anthropic target's own events, as they came."""

    @staticmethod
    def frames(payloads: Sequence[bytes]) -> bytes:
        return b"".join(payloads)

    @staticmethod
    def done() -> bytes:
        return b""

    @staticmethod
    def error(exc: SwitchboardError, request_id: str | None) -> bytes:
        return MessagesStream.error(exc.status, exc.message)


class _Translated:
    """Chat Completions chunks from any other target, as Anthropic's events."""

    __slots__ = ("_stream",)

    def __init__(self, stream: MessagesStream) -> None:
        self._stream = stream

    def frames(self, payloads: Sequence[bytes]) -> bytes:
        return self._stream.frames(payloads)

    def done(self) -> bytes:
        return self._stream.done()

    def error(self, exc: SwitchboardError, request_id: str | None) -> bytes:
        return self._stream.error(exc.status, exc.message)


def framing_for(gateway: Gateway, call: MessagesCall, estimate: int, opened: OpenStream, exchange: Exchange) -> Framing:
    if exchange.provider == "anthropic" and not call.governed:  # the target's own events: not continued
        return _PassThrough()
    framing = _Translated(MessagesStream(call.model, estimate))
    if gateway.continues(exchange.alias):  # Chat Completions chunks underneath: continuable
        return Continuing(framing, gateway, call.chat(), exchange)
    return framing


async def _error(scope: HTTPScope, receive: Receive, send: Send, exc: SwitchboardError, request_id: str) -> None:
    """An error in Anthropic's shape, with the headers OpenAI's shape would carry."""
    headers = [(b"x-request-id", request_id.encode())]
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after))).encode()))
    if isinstance(exc, Refused):
        headers += [(name.encode(), value.encode()) for name, value in exc.headers]
    if isinstance(exc, ShuttingDown):
        headers.append((b"connection", b"close"))  # the client's retry opens a connection elsewhere
    await JSONBody(error_body(exc.status, exc.message, request_id), headers, exc.status)(scope, receive, send)


@asgi([MESSAGES_PATH, MESSAGES_PATH.removeprefix("/v1")], http_methods=["POST"], copy_scope=False)
async def create_message(scope: HTTPScope, receive: Receive, send: Send) -> None:
    if scope["method"] != "POST":  # asgi handlers do not enforce http_methods
        raise MethodNotAllowed(f"Method {scope['method']} is not allowed for /v1/messages.")
    state = scope["app"].state
    exchange = begin(scope, MESSAGES_PATH)
    guard: Guard = state.guard
    admission: Admitted | None = None
    try:
        caller = identify(guard, scope, exchange)
        fields, request = decode(await read_body(scope, receive, state.max_body_bytes), _Required)
        policies = state.policies
        call = MessagesCall(
            fields, request, forwarded(scope["headers"]), lambda asked: governed(translated(asked), caller, policies)
        )
        call.governed = caller.params is not None or call.model in policies
        exchange.stream = call.stream
        if caller.restricted:
            guard.check_model(caller, call.model)
            exchange.allows = caller.allows
        estimate = estimate_input(request)
        reserve = estimate + int(request["max_tokens"])
        admission = await admit(scope, caller, exchange, call.model, lambda: reserve)
        extra = admission.headroom.headers() if admission is not None else []
        gateway: Gateway = state.gateway
        if call.stream:
            stream = partial(gateway.open_messages, call, exchange)
            framing = partial(framing_for, gateway, call, estimate)
            early = _PassThrough.error  # Anthropic's error event, whichever target would have answered
            status, code = await serve(gateway, scope, receive, send, exchange, extra, None, stream, framing, early)
        else:
            answer = partial(gateway.messages, call, exchange)
            status, code = await serve(gateway, scope, receive, send, exchange, extra, answer)
    except SwitchboardError as exc:  # in Anthropic's shape, not the app's
        finish(exchange, admission, exc.status, exc.code)
        await _error(scope, receive, send, exc, exchange.request_id)
        return
    except BaseException as exc:
        failed(exchange, admission, exc)
        raise
    finish(exchange, admission, status, code)


@asgi([COUNT_PATH, COUNT_PATH.removeprefix("/v1")], http_methods=["POST"], copy_scope=False)
async def count_tokens(scope: HTTPScope, receive: Receive, send: Send) -> None:
    """An estimate (about four characters a token), answered by Switchboard itself: no upstream
    call, no limit taken."""
    if scope["method"] != "POST":
        raise MethodNotAllowed(f"Method {scope['method']} is not allowed for /v1/messages/count_tokens.")
    state = scope["app"].state
    request_id = state.outcomes.ids.of(scope["headers"])
    scope["state"][REQUEST_ID_KEY] = request_id
    guard: Guard = state.guard
    try:
        caller = guard.authenticate(scope["headers"])
        _, request = decode(await read_body(scope, receive, state.max_body_bytes), _Counted)
        if caller.restricted:
            guard.check_model(caller, str(request["model"]))
        state.gateway.router.resolve(str(request["model"]))  # an unknown model is a 404, as for messages
    except SwitchboardError as exc:
        await _error(scope, receive, send, exc, request_id)
        return
    body = _encode({"input_tokens": estimate_input(request)})
    await JSONBody(body, [(b"x-request-id", request_id.encode())])(scope, receive, send)
