"""``GET /v1/models``: the configured aliases the caller's key may use, in OpenAI's list shape;
``GET /v1/models/{model}``: one of them (OpenAI's 404 ``model_not_found`` for any other, and for
one the key may not use: the answer tells nothing about which models exist). Both also without
the ``/v1`` prefix."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.params import FromPath

from providers.schema import ModelCard, ModelList
from router.access.guard import Guard
from router.api.responses import request_id_of
from router.errors import ModelNotFound

_encode = msgspec.json.Encoder().encode


@get(["/v1/models", "/models"])
async def list_models(request: Request[Any, Any, State]) -> Response[bytes]:
    state = request.app.state
    guard: Guard = state.guard
    caller = guard.authenticate(request.scope["headers"])
    body: bytes = state.models_json
    if caller.restricted:
        aliases: list[str] = state.aliases
        body = _encode(ModelList(data=[ModelCard(id=alias) for alias in aliases if caller.allows(alias)]))
    return Response(body, media_type="application/json", headers={"x-request-id": request_id_of(request.scope)})


@get(["/v1/models/{model:path}", "/models/{model:path}"])
async def retrieve_model(request: Request[Any, Any, State], model: FromPath[str]) -> Response[bytes]:
    state = request.app.state
    guard: Guard = state.guard
    caller = guard.authenticate(request.scope["headers"])
    model = model.lstrip("/")  # a path parameter keeps its leading slash
    known: frozenset[str] = state.alias_set
    if model not in known or (caller.restricted and not caller.allows(model)):
        raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")
    return Response(
        _encode(ModelCard(id=model)),
        media_type="application/json",
        headers={"x-request-id": request_id_of(request.scope)},
    )
