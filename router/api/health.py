"""Liveness and readiness probes."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from router.gateway.failover import Gateway


@get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready")
async def ready(state: State) -> Response[dict[str, object]]:
    """Ready when at least one provider can be called; the body says which cannot, and why."""
    gateway: Gateway = state.gateway
    unavailable = {name: u.unavailable for name, u in gateway.upstreams.items() if u.unavailable}
    available = sorted(set(gateway.upstreams) - set(unavailable))
    status = "ready" if available else "unavailable"
    return Response(
        {"status": status, "available": available, "unavailable": unavailable},
        status_code=200 if available else 503,
    )
