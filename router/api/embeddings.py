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
from providers.errors import SwitchboardError
from router.access.guard import Guard, key_id_of_caller
from router.access.limits import Admitted
from router.api.chat import finish, read_body, serve
from router.api.decode import decode_embeddings
from router.errors import MethodNotAllowed
from router.gateway.failover import Gateway
from router.gateway.outcome import REQUEST_ID_KEY, Exchange
from router.telemetry.spans import RequestTrace

EMBEDDINGS_PATH: Final = "/v1/embeddings"


@asgi([EMBEDDINGS_PATH, EMBEDDINGS_PATH.removeprefix("/v1")], http_methods=["POST"], copy_scope=False)
async def embeddings(scope: HTTPScope, receive: Receive, send: Send) -> None:
    if scope["method"] != "POST":  # asgi handlers do not enforce http_methods
        raise MethodNotAllowed(f"Method {scope['method']} is not allowed for /v1/embeddings.")
    state = scope["app"].state
    outcomes = state.outcomes
    exchange = Exchange(outcomes, outcomes.ids.of(scope["headers"]), operation="embeddings")
    scope["state"][REQUEST_ID_KEY] = exchange.request_id
    tracing = state.tracing
    if tracing is not None:  # no content capture: vectors say nothing to a reader of traces
        exchange.trace = RequestTrace(tracing, scope["headers"], EMBEDDINGS_PATH, False, "embeddings")
    guard: Guard = state.guard
    admission: Admitted | None = None
    try:
        caller = guard.authenticate(scope["headers"])  # before the body is read
        exchange.key_id = key_id_of_caller(caller)
        exchange.team_id = caller.team.id if caller.team is not None else None
        call = decode_embeddings(await read_body(scope, receive, state.max_body_bytes))
        model = call.request.model
        if caller.restricted:
            guard.check_model(caller, model)
            exchange.allows = caller.allows
        if guard.enforcing:
            exchange.reserved_tokens = estimate_tokens(call)
            admission = await guard.admit(caller, model, exchange.reserved_tokens, outcomes.ids.next)
        extra = admission.headroom.headers() if admission is not None else []
        gateway: Gateway = state.gateway
        answer = partial(gateway.embed, call, exchange)
        status, code = await serve(gateway, scope, receive, send, exchange, extra, answer)
    except SwitchboardError as exc:
        finish(exchange, admission, exc.status, exc.code)
        raise
    except Exception:
        finish(exchange, admission, 500, "internal_error")
        raise
    except BaseException:  # cancelled: the server is shutting down
        finish(exchange, admission, 503, "cancelled")
        raise
    finish(exchange, admission, status, code)
