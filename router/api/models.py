"""``GET /v1/models``: every configured alias, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from router.api.responses import request_id_of


@get("/v1/models")
async def list_models(request: Request[Any, Any, State]) -> Response[bytes]:
    return Response(
        request.app.state.models_json,
        media_type="application/json",
        headers={"x-request-id": request_id_of(request.scope)},
    )
