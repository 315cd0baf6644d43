"""``GET /v1/models``: the configured aliases the caller's key may use, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State

from providers.schema import ModelCard, ModelList
from router.access.guard import Guard
from router.api.responses import request_id_of

_encode = msgspec.json.Encoder().encode


@get("/v1/models")
async def list_models(request: Request[Any, Any, State]) -> Response[bytes]:
    state = request.app.state
    guard: Guard = state.guard
    caller = guard.authenticate(request.scope["headers"])
    body: bytes = state.models_json
    if caller.restricted:
        aliases: list[str] = state.aliases
        body = _encode(ModelList(data=[ModelCard(id=alias) for alias in aliases if caller.allows(alias)]))
    return Response(body, media_type="application/json", headers={"x-request-id": request_id_of(request.scope)})
