"""Operator endpoints. ``GET /admin/targets``: every target's breaker and load, as the gateway sees it."""

from __future__ import annotations

from litestar import Request, get
from litestar.datastructures import State

from router.gateway.failover import Gateway


@get("/admin/targets")
async def list_targets(request: Request[None, None, State]) -> dict[str, object]:
    gateway: Gateway = request.app.state.gateway
    return {"object": "list", "data": gateway.snapshot(), "in_flight": gateway.bulkhead.in_flight}
