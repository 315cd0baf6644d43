"""``GET /admin/usage``: requests, tokens and cost by key, team, model or day, over a range of days.

Figures come from the database, where every worker adds its counters each second: a request shows
up here within about a second of its end."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Final

from litestar import Request, Response, get
from litestar.datastructures import State

from router.access.guard import Guard
from router.admin.auth import require_admin
from router.api.responses import request_id_of
from router.errors import InvalidRequest

GROUPS: Final = ("key", "team", "model", "day")
FILTERS: Final = ("key_id", "team_id", "model")


@get("/admin/usage")
async def usage_report(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    require_admin(request)
    guard: Guard = request.app.state.guard
    if guard.database is None:
        raise InvalidRequest("Usage is kept only with auth.master_key (and its database).")
    query = request.query_params
    unknown = sorted(set(query) - {*FILTERS, "from", "to", "group_by"})
    if unknown:
        raise InvalidRequest(f"Unknown query parameter '{unknown[0]}'.", param=unknown[0])
    group_by = query.get("group_by") or "day"
    if group_by not in GROUPS:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}.", param="group_by")
    start, end = _day(query.get("from"), "from"), _day(query.get("to"), "to")
    if start is not None and end is not None and start > end:
        raise InvalidRequest("from is after to.", param="from")
    filters = {name: query.get(name) for name in FILTERS}
    for name, value in filters.items():
        if value is not None and (len(value) > 256 or any(ord(c) < 32 for c in value)):
            raise InvalidRequest(f"{name} is not a valid id or model name.", param=name)
    rows = await guard.database.usage_report(group_by, start=start, end=end, **filters)
    body = {"object": "list", "group_by": group_by, "data": rows}
    return Response(body, headers={"x-request-id": request_id_of(request.scope)})


def _day(value: str | None, param: str) -> date | None:
    """A day (``2026-11-30``) or an RFC 3339 time, whose UTC day counts."""
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{param} must be a day (YYYY-MM-DD) or an RFC 3339 time.", param=param) from None
    return moment.astimezone(UTC).date() if moment.tzinfo is not None else moment.date()
