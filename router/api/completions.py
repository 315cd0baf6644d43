"""``POST /v1/completions``: OpenAI's legacy completions API, passed through to OpenAI-compatible
targets (``router.gateway.completions``), with the same keys, limits, failover and records as
chat completions; a clear 400 for an alias that has no such target."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Final

import msgspec
from litestar import asgi
from litestar.types import HTTPScope, Receive, Send

from router.access.guard import Guard
from router.access.limits import Admitted
from router.api.decode import explain
from router.api.handling import admit, begin, failed, finish, identify, read_body, serve
from router.errors import InvalidRequest, MethodNotAllowed
from router.gateway.completions import CompletionsCall
from router.gateway.failover import Gateway

COMPLETIONS_PATH: Final = "/v1/completions"
DEFAULT_MAX_TOKENS: Final = 16  # OpenAI's default for this API


class _Completion(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    prompt: str | list[Any]
    stream: bool | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None


_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode = msgspec.json.Decoder(_Completion).decode


def decode(body: bytes) -> tuple[dict[str, msgspec.Raw], _Completion]:
    try:
        return _decode_fields(body), _decode(body)
    except msgspec.ValidationError as exc:
        raise explain(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("The request body must be a JSON object in UTF-8.", code="invalid_json") from None


def estimate(request: _Completion) -> int:
    prompt = request.prompt
    size = len(prompt) if isinstance(prompt, str) else len(msgspec.json.encode(prompt))
    return size // 4 + 1 + (request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS)


@asgi([COMPLETIONS_PATH, COMPLETIONS_PATH.removeprefix("/v1")], http_methods=["POST"], copy_scope=False)
async def legacy_completions(scope: HTTPScope, receive: Receive, send: Send) -> None:
    if scope["method"] != "POST":  # asgi handlers do not enforce http_methods
        raise MethodNotAllowed(f"Method {scope['method']} is not allowed for /v1/completions.")
    state = scope["app"].state
    exchange = begin(scope, COMPLETIONS_PATH, "text_completion")
    guard: Guard = state.guard
    admission: Admitted | None = None
    try:
        caller = identify(guard, scope, exchange)
        fields, request = decode(await read_body(scope, receive, state.max_body_bytes))
        call = CompletionsCall(fields, request.model, request.stream is True)
        exchange.stream = call.stream
        if caller.restricted:
            guard.check_model(caller, call.model)
            exchange.allows = caller.allows
        if caller.params is not None or call.model in state.policies:
            raise InvalidRequest(
                f"The model '{call.model}' has server-controlled parameters, which the legacy completions "
                "API cannot honour (it is passed through as sent). Use /v1/chat/completions.",
                param="model",
                code="unsupported_parameter",
            )
        admission = await admit(scope, caller, exchange, call.model, partial(estimate, request))
        extra = admission.headroom.headers() if admission is not None else []
        gateway: Gateway = state.gateway
        if call.stream:
            stream = partial(gateway.open_completions, call, exchange)
            status, code = await serve(gateway, scope, receive, send, exchange, extra, None, stream)
        else:
            answer = partial(gateway.completions, call, exchange)
            status, code = await serve(gateway, scope, receive, send, exchange, extra, answer)
    except BaseException as exc:
        failed(exchange, admission, exc)
        raise
    finish(exchange, admission, status, code)
