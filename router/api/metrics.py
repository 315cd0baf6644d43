"""``GET /metrics``: the whole server's metrics in Prometheus text (see ``router.telemetry.metrics``)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from router.api.responses import request_id_of
from router.telemetry.metrics import CONTENT_TYPE, Metrics


@get("/metrics")
async def metrics_endpoint(request: Request[Any, Any, State]) -> Response[bytes]:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE, headers={"x-request-id": request_id_of(request.scope)})
