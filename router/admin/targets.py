"""Operator endpoints. ``GET /admin/targets``: every target's breaker and load, as the gateway sees it."""

from __future__ import annotations

from litestar import Request, Response, get
from litestar.datastructures import State

from router.admin.auth import require_admin
from router.api.responses import request_id_of
from router.gateway.failover import Gateway
from router.telemetry.windows import TargetWindows


@get("/admin/targets")
async def list_targets(request: Request[None, None, State]) -> Response[dict[str, object]]:
    require_admin(request)
    gateway: Gateway = request.app.state.gateway
    windows: TargetWindows = request.app.state.windows
    data = [{**target, "recent": windows.figures(str(target["target"]))} for target in gateway.snapshot()]
    body = {"object": "list", "data": data, "in_flight": gateway.bulkhead.in_flight}
    return Response(body, headers={"x-request-id": request_id_of(request.scope)})
