"""``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``: OpenAI's Responses API, for
the Agents SDK, the Vercel AI SDK and every client that speaks it, answered by any provider.

A request is translated to Chat Completions (``providers.responses``), routed and failed over
like any chat request (keys, limits, budgets, policies, records), and its answer and stream are
translated back. With ``store`` (OpenAI's default) the response is kept (``router.store.responses``)
so that ``previous_response_id`` can continue from it: the earlier turns are put before the new
input. An unknown, expired or another key's ``previous_response_id`` is OpenAI's 400
``previous_response_not_found``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, Response, asgi, delete, get
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.types import HTTPScope, Receive, Send

from providers.base import Inbound
from providers.errors import SwitchboardError
from providers.responses import Builder, Item, ResponsesStream, Untranslatable, input_items, to_chat
from router.access.guard import Caller, Guard, key_id_of_caller
from router.access.limits import Admitted
from router.api.continuing import Continuing
from router.api.decode import decode_call, explain
from router.api.handling import admit, begin, failed, finish, governed, identify, read_body, serve
from router.api.responses import request_id_of
from router.api.streams import Framing
from router.errors import ClientError, InvalidRequest, MethodNotAllowed
from router.gateway.failover import Answer, Gateway, OpenStream
from router.gateway.outcome import Exchange
from router.gateway.responses import ResponsesCall
from router.store.responses import ResponseStore

RESPONSES_PATH: Final = "/v1/responses"
_encode = msgspec.json.Encoder().encode


class ResponseNotFound(ClientError):
    status = 404
    code = "not_found"


class _Required(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    input: str | list[Any]
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None


_decode_any = msgspec.json.Decoder(dict[str, Any]).decode


def decode(body: bytes) -> tuple[dict[str, Any], _Required]:
    try:
        request = _decode_any(body)
        return request, msgspec.convert(request, _Required)
    except msgspec.ValidationError as exc:
        raise explain(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("The request body must be a JSON object in UTF-8.", code="invalid_json") from None


def owner(caller: Caller) -> str:
    return key_id_of_caller(caller) or ""


async def conversation(
    store: ResponseStore,
    gateway: Gateway,
    request: dict[str, Any],
    fields: _Required,
    key: str,
    builder: Builder,
    governed: bool,
) -> ResponsesCall:
    """The call: the earlier turns Switchboard keeps (``previous_response_id``) and the new input,
    item references resolved. An id Switchboard does not know may still be one a native target's
    provider knows; without such a target it is OpenAI's 400 ``previous_response_not_found``."""
    items: list[Item] = []
    expanded, upstream_knows = True, False
    native = not governed and gateway.native_responses(fields.model)
    previous = fields.previous_response_id
    if previous is not None:
        stored = await store.get(previous, key)
        if stored is not None:
            items = [("previous_response_id", item) for item in stored.items if isinstance(item, dict)]
            upstream_knows = stored.native
        elif native and not await store.known(previous):  # (another key's, or deleted: never passed on)
            expanded, upstream_knows = False, True
        else:
            raise InvalidRequest(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
    for where, item in _input(request):
        if item.get("type") == "item_reference":
            reference = str(item.get("id"))
            found = await store.item(reference, key)
            owner_ = store.item_owner(reference)
            if found is not None:
                item = found
            elif not native or (owner_ is not None and owner_ != key):  # another key's: never passed on
                raise InvalidRequest(f"Item with id '{reference}' not found.", param=f"{where}.id")
        items.append((where, item))
    return ResponsesCall(request, items, expanded, upstream_knows, translated, builder, governed)


def _input(request: dict[str, Any]) -> list[Item]:
    try:
        return input_items(request.get("input"))
    except Untranslatable as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None


def translated(request: dict[str, Any], items: Sequence[Item]) -> Inbound:
    try:
        return decode_call(_encode(to_chat(request, items)))
    except Untranslatable as exc:
        raise InvalidRequest(exc.message, param=exc.param, code="unsupported_for_target") from None
    except (TypeError, ValueError, AttributeError, KeyError):  # a shape no check above foresaw
        raise InvalidRequest("The request is not a valid Responses API request.", code="invalid_value") from None


class _Translated:
    """Chat chunks as the Responses event stream; the whole response stored once complete."""

    __slots__ = ("_keep", "_stream")

    def __init__(self, stream: ResponsesStream, keep: Keep | None) -> None:
        self._stream = stream
        self._keep = keep

    def frames(self, payloads: Sequence[bytes]) -> bytes:
        return self._stream.frames(payloads)

    def done(self) -> bytes:
        out = self._stream.done()
        if self._keep is not None and self._stream.final is not None:
            self._keep(self._stream.final, False, self._stream.final_json)
        return out

    def error(self, exc: SwitchboardError, request_id: str | None) -> bytes:
        return self._stream.failed(exc.code or "server_error", exc.message)


class _Native:
    """A native target's own events, as they came; its final response stored."""

    __slots__ = ("_keep",)

    def __init__(self, keep: Keep | None) -> None:
        self._keep = keep

    def frames(self, payloads: Sequence[bytes]) -> bytes:
        if self._keep is not None:
            for payload in payloads:
                if payload.startswith((b"event: response.completed\n", b"event: response.incomplete\n")):
                    event = msgspec.json.decode(payload.partition(b"\ndata: ")[2])
                    if isinstance(event, dict) and isinstance(event.get("response"), dict):
                        self._keep(event["response"], True, b"")
        return b"".join(payloads)

    @staticmethod
    def done() -> bytes:
        return b""

    @staticmethod
    def error(exc: SwitchboardError, request_id: str | None) -> bytes:
        body = {"type": "error", "code": exc.code or "server_error", "message": exc.message, "param": None}
        return b"event: error\ndata: " + _encode(body) + b"\n\n"


Keep = Callable[[dict[str, Any], bool, bytes], None]  # the response, whether native, its JSON (or b"")


def _keep(
    store: ResponseStore, key: str, items: Sequence[Item], response: dict[str, Any], native: bool, encoded: bytes
) -> None:
    store.put(key, response, [item for _, item in items], native, encoded)


@asgi([RESPONSES_PATH, RESPONSES_PATH.removeprefix("/v1")], http_methods=["POST"], copy_scope=False)
async def create_response(scope: HTTPScope, receive: Receive, send: Send) -> None:
    if scope["method"] != "POST":  # asgi handlers do not enforce http_methods
        raise MethodNotAllowed(f"Method {scope['method']} is not allowed for /v1/responses.")
    state = scope["app"].state
    exchange = begin(scope, RESPONSES_PATH)
    guard: Guard = state.guard
    store: ResponseStore = state.response_store
    admission: Admitted | None = None
    try:
        caller = identify(guard, scope, exchange)
        request, fields = decode(await read_body(scope, receive, state.max_body_bytes))
        exchange.stream = fields.stream is True
        if caller.restricted:
            guard.check_model(caller, fields.model)
            exchange.allows = caller.allows
        key = owner(caller)
        gateway: Gateway = state.gateway
        builder = Builder(request)
        policies = state.policies
        ruled = caller.params is not None or fields.model in policies  # then always through Chat Completions
        call = await conversation(store, gateway, request, fields, key, builder, ruled)
        call.translate = lambda asked, items: governed(translated(asked, items), caller, policies)
        admission = await admit(scope, caller, exchange, fields.model, partial(estimate, request))
        extra = admission.headroom.headers() if admission is not None else []
        keep = partial(_keep, store, key, call.items) if fields.store is not False else None
        if fields.stream:
            natives: list[bool] = []
            stream = partial(_open, gateway, call, exchange, natives)
            framing = partial(_framing, gateway, call, builder, keep, natives)
            early = partial(_early_error, builder)
            status, code = await serve(gateway, scope, receive, send, exchange, extra, None, stream, framing, early)
        else:
            answer = partial(_answer, gateway, call, exchange, keep)
            status, code = await serve(gateway, scope, receive, send, exchange, extra, answer)
    except BaseException as exc:
        failed(exchange, admission, exc)
        raise
    finish(exchange, admission, status, code)


async def _open(gateway: Gateway, call: ResponsesCall, exchange: Exchange, natives: list[bool]) -> OpenStream:
    opened, native = await gateway.open_responses(call, exchange)
    natives.append(native)
    return opened


def _framing(
    gateway: Gateway,
    call: ResponsesCall,
    builder: Builder,
    keep: Keep | None,
    natives: list[bool],
    opened: OpenStream,
    exchange: Exchange,
) -> Framing:
    if natives and natives[-1]:
        return _Native(keep)  # a native target's own events: not continued elsewhere
    framing = _Translated(ResponsesStream(builder), keep)
    if gateway.continues(exchange.alias):  # Chat Completions chunks underneath: continuable
        return Continuing(framing, gateway, call.chat(), exchange)
    return framing


def _early_error(builder: Builder, exc: SwitchboardError, request_id: str | None) -> bytes:
    """Every target failed behind keep-alive: ``response.created`` and ``response.failed``, the
    events the openai SDK's stream helpers expect (an ``error`` event first would confuse them)."""
    return ResponsesStream(builder).failed(exc.code or "server_error", exc.message)


async def _answer(gateway: Gateway, call: ResponsesCall, exchange: Exchange, keep: Keep | None) -> Answer:
    answer, native = await gateway.responses(call, exchange)
    if keep is not None:
        response = msgspec.json.decode(answer.body)
        if isinstance(response, dict):
            keep(response, native, answer.body)
    return answer


def estimate(request: dict[str, Any]) -> int:
    """About four characters a token of what is sent, plus the output cap (or 256)."""
    size = sum(len(_encode(request.get(name))) for name in ("instructions", "input", "tools") if request.get(name))
    cap = request.get("max_output_tokens")
    return size // 4 + 1 + (cap if isinstance(cap, int) else 256)


def _not_found(response_id: str) -> ResponseNotFound:
    return ResponseNotFound(f"Response with id '{response_id}' not found.", param="response_id")


@get([f"{RESPONSES_PATH}/{{response_id:str}}", "/responses/{response_id:str}"])
async def retrieve_response(request: Request[Any, Any, State], response_id: FromPath[str]) -> Response[bytes]:
    state = request.app.state
    caller = state.guard.authenticate(request.scope["headers"])
    stored = await state.response_store.get(response_id, owner(caller))
    if stored is None:
        raise _not_found(response_id)
    headers = {"x-request-id": request_id_of(request.scope)}
    return Response(_encode(stored.response), media_type="application/json", headers=headers)


@delete([f"{RESPONSES_PATH}/{{response_id:str}}", "/responses/{response_id:str}"], status_code=200)
async def delete_response(request: Request[Any, Any, State], response_id: FromPath[str]) -> Response[bytes]:
    state = request.app.state
    caller = state.guard.authenticate(request.scope["headers"])
    if not await state.response_store.delete(response_id, owner(caller)):
        raise _not_found(response_id)
    body = _encode({"id": response_id, "object": "response", "deleted": True})
    return Response(body, media_type="application/json", headers={"x-request-id": request_id_of(request.scope)})
