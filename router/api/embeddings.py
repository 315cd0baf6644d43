"""``POST /v1/embeddings``: OpenAI's embeddings API, for every provider that has one, with the
same keys, limits, budgets, failover, Outcome, spans and metrics as chat completions.

An OpenAI-compatible target (``openai``, ``azure``, ``mock``) gets the client's body as it came,
the model named by the target; a ``gemini`` target gets ``batchEmbedContents`` and its vectors
come back in OpenAI's shape, as floats or, when asked, base64 (little-endian float32, as OpenAI
sends them). ``anthropic`` has no embeddings API: such targets are passed over."""

from __future__ import annotations

from functools import partial
from typing import Final

from litestar import asgi
from litestar.types import HTTPScope, Receive, Send

from providers.embeddings import estimate_tokens
from router.access.guard import Guard
from router.access.limits import Admitted
from router.api.decode import decode_embeddings
from router.api.handling import admit, begin, failed, finish, identify, read_body, serve
from router.errors import MethodNotAllowed
from router.gateway.failover import Gateway

EMBEDDINGS_PATH: Final = "/v1/embeddings"


@asgi([EMBEDDINGS_PATH, EMBEDDINGS_PATH.removeprefix("/v1")], http_methods=["POST"], copy_scope=False)
async def embeddings(scope: HTTPScope, receive: Receive, send: Send) -> None:
    if scope["method"] != "POST":  # asgi handlers do not enforce http_methods
        raise MethodNotAllowed(f"Method {scope['method']} is not allowed for /v1/embeddings.")
    state = scope["app"].state
    exchange = begin(scope, EMBEDDINGS_PATH, "embeddings")  # no content on spans: vectors say nothing
    guard: Guard = state.guard
    admission: Admitted | None = None
    try:
        caller = identify(guard, scope, exchange)
        call = decode_embeddings(await read_body(scope, receive, state.max_body_bytes))
        model = call.request.model
        if caller.restricted:
            guard.check_model(caller, model)
            exchange.allows = caller.allows
        admission = await admit(scope, caller, exchange, model, partial(estimate_tokens, call))
        extra = admission.headroom.headers() if admission is not None else []
        gateway: Gateway = state.gateway
        answer = partial(gateway.embed, call, exchange)
        status, code = await serve(gateway, scope, receive, send, exchange, extra, answer)
    except BaseException as exc:
        failed(exchange, admission, exc)
        raise
    finish(exchange, admission, status, code)
