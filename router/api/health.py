"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from router.api.responses import request_id_of
from router.gateway.failover import Gateway


@get("/health/live")
async def live(request: Request[Any, Any, State]) -> Response[dict[str, str]]:
    return Response({"status": "ok"}, headers={"x-request-id": request_id_of(request.scope)})


@get("/health/ready")
async def ready(request: Request[Any, Any, State]) -> Response[dict[str, object]]:
    """Ready when at least one provider can be called (and not shutting down); the body says which
    cannot, and why."""
    headers = {"x-request-id": request_id_of(request.scope)}
    if request.app.state.drain.draining:  # a load balancer stops sending requests here
        return Response({"status": "draining"}, status_code=503, headers=headers)
    gateway: Gateway = request.app.state.gateway
    unavailable = {name: u.unavailable for name, u in gateway.upstreams.items() if u.unavailable}
    available = sorted(set(gateway.upstreams) - set(unavailable))
    status = "ready" if available else "unavailable"
    return Response(
        {"status": status, "available": available, "unavailable": unavailable},
        status_code=200 if available else 503,
        headers=headers,
    )
