"""``POST /v1/chat/completions``: decode and validate, hand to the gateway, shape the response."""

from __future__ import annotations

from functools import partial
from typing import Final

from litestar import asgi
from litestar.types import HTTPScope, Receive, Send

from router.access.guard import Guard
from router.access.limits import Admitted, estimate_tokens
from router.api import handoff
from router.api.continuing import chat_framing
from router.api.decode import decode_call
from router.api.handling import admit, begin, failed, finish, governed, identify, read_body, serve
from router.errors import MethodNotAllowed
from router.gateway.failover import Gateway

CHAT_PATH: Final = "/v1/chat/completions"


@asgi([CHAT_PATH, CHAT_PATH.removeprefix("/v1")], http_methods=["POST"], copy_scope=False)
async def chat_completions(scope: HTTPScope, receive: Receive, send: Send) -> None:
    """A raw ASGI handler: the hot path skips Litestar's request and response modelling. Errors
    raised here still reach the app's exception handlers."""
    if scope["method"] != "POST":  # asgi handlers do not enforce http_methods
        raise MethodNotAllowed(f"Method {scope['method']} is not allowed for /v1/chat/completions.")
    state = scope["app"].state
    exchange = begin(scope, CHAT_PATH, content=True)
    guard: Guard = state.guard
    admission: Admitted | None = None
    try:
        caller = identify(guard, scope, exchange)
        call = decode_call(await read_body(scope, receive, state.max_body_bytes))
        exchange.stream = call.chat.is_stream
        if caller.restricted:
            guard.check_model(caller, call.chat.model)
            exchange.allows = caller.allows  # and the fallbacks it may reach
        call = governed(call, caller, state.policies)
        admission = await admit(scope, caller, exchange, call.chat.model, partial(estimate_tokens, call.chat))
        if exchange.trace is not None:
            exchange.trace.inputs(call.chat.messages)
        extra = admission.headroom.headers() if admission is not None else []
        gateway: Gateway = state.gateway
        if call.chat.is_stream:
            stream = partial(gateway.open_stream, call, exchange)
            framing = partial(chat_framing, gateway, call)
            hand_off = partial(handoff.record, call, None)  # when a drain ends it, resumable: on another replica
            status, code = await serve(
                gateway, scope, receive, send, exchange, extra, None, stream, framing, hand_off=hand_off
            )
        else:
            answer = partial(gateway.complete, call, exchange)
            status, code = await serve(gateway, scope, receive, send, exchange, extra, answer)
    except BaseException as exc:
        failed(exchange, admission, exc)
        raise
    finish(exchange, admission, status, code)
