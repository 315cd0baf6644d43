"""Who may use the admin API. With ``auth.master_key``: the master key only (a virtual key is
refused, whatever it may do on ``/v1``). Without one: read requests from the loopback interface
only, and no writes (there is no key to make them with)."""

from __future__ import annotations

import ipaddress
from typing import Any

from litestar import Request
from litestar.datastructures import State

from router.access.guard import MASTER, Guard
from router.errors import Forbidden

READS = frozenset({"GET", "HEAD"})


def require_admin(request: Request[Any, Any, State]) -> None:
    guard: Guard = request.app.state.guard
    if guard.enforcing:
        caller = guard.authenticate(request.scope["headers"])  # 401 for no key or a wrong one
        if caller is not MASTER:
            raise Forbidden("The admin API takes the master key only, not a virtual key.")
        return
    if request.method not in READS:
        raise Forbidden(
            "The admin API is read-only while Switchboard runs without auth.master_key: "
            "set SWITCHBOARD_MASTER_KEY to create and change keys."
        )
    if not _loopback(request.scope.get("client")):
        raise Forbidden("Without auth.master_key the admin API answers only the loopback interface.")


def _loopback(client: Any) -> bool:
    if not client:
        return False
    host = client[0]
    if host == "testclient":  # Litestar's in-process test client
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
