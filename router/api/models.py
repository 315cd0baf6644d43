"""``GET /v1/models``: every configured alias, in OpenAI's list shape."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State


@get("/v1/models")
async def list_models(state: State) -> Response[bytes]:
    return Response(state.models_json, media_type="application/json")
