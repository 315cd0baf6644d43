"""``/admin/keys`` and ``/admin/teams``: virtual keys and teams, JSON in and out.

A key's secret is returned once, by the call that creates (or rotates) it, and never stored:
the database keeps its SHA-256 digest. Every write reloads this worker's copy at once; the other
workers and replicas see it within a second (``router.access.guard``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, patch, post
from litestar.datastructures import State
from msgspec import UNSET, Meta, UnsetType

from router.access.guard import Guard
from router.access.secrets import new_key
from router.admin.auth import require_admin
from router.api.responses import request_id_of
from router.config_schema import BudgetPeriod, ModelLimits, ModelPattern, ParamsPolicy, policy_problems
from router.errors import InvalidRequest, RouteNotFound
from router.store.database import Conflict, Database
from router.store.records import KeyRecord, TeamRecord

_PATH = re.compile(r"`\$\.([A-Za-z_]+)")  # the top field of the path msgspec names
_UNKNOWN = re.compile(r"unknown field `([A-Za-z_]+)")
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Positive = Annotated[int, Meta(gt=0)]
Money = Annotated[float, Meta(ge=0)]
Text = Annotated[str, Meta(max_length=1000, pattern=r"^[^\x00]*$")]
Metadata = Annotated[dict[Annotated[str, Meta(max_length=100, pattern=r"^[^\x00]*$")], Text], Meta(max_length=64)]
Models = Annotated[list[ModelPattern], Meta(max_length=1000)]


class LimitsIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    models: Models | UnsetType = UNSET
    rpm: Positive | UnsetType | None = UNSET
    tpm: Positive | UnsetType | None = UNSET
    max_parallel: Positive | UnsetType | None = UNSET
    budget_usd: Money | UnsetType | None = UNSET
    budget_period: BudgetPeriod | UnsetType | None = UNSET
    metadata: Metadata | UnsetType = UNSET


class KeyIn(LimitsIn, forbid_unknown_fields=True, kw_only=True):
    name: Name | UnsetType = UNSET
    team_id: str | UnsetType | None = UNSET
    expires_at: datetime | UnsetType | None = UNSET
    enabled: bool | UnsetType = UNSET
    model_limits: Annotated[dict[ModelPattern, ModelLimits], Meta(max_length=100)] | UnsetType = UNSET
    params: ParamsPolicy | UnsetType | None = UNSET


class TeamIn(LimitsIn, forbid_unknown_fields=True, kw_only=True):
    name: Name | UnsetType = UNSET


def validated(body: msgspec.Struct) -> dict[str, Any]:
    values = {f: getattr(body, f) for f in body.__struct_fields__}
    fields = {k: v for k, v in values.items() if v is not UNSET}
    if isinstance(fields.get("expires_at"), datetime):
        expires: datetime = fields["expires_at"]
        if expires.tzinfo is None:
            raise InvalidRequest(
                "expires_at must be an RFC 3339 time with its offset (…Z or …+02:00).", param="expires_at"
            )
        fields["expires_at"] = expires.astimezone(UTC)
    params = fields.get("params")
    if isinstance(params, ParamsPolicy):
        for what, why in policy_problems(params):
            raise InvalidRequest(f"params.{what}: {why}.", param="params")
    for name in ("model_limits", "params"):  # stored as JSON
        if isinstance(fields.get(name), (dict, msgspec.Struct)):
            fields[name] = msgspec.to_builtins(fields[name])
    return fields


async def _decode(request: Request[Any, Any, State], kind: type[KeyIn] | type[TeamIn]) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        found = _PATH.search(str(exc)) or _UNKNOWN.search(str(exc))
        raise InvalidRequest(f"Invalid body: {exc}", param=found.group(1) if found else None) from None
    except msgspec.DecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None
    return validated(body)


def key_view(key: KeyRecord, secret: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": key.id,
        "object": "key",
        "name": key.name,
        "team_id": key.team_id,
        "models": list(key.models),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "max_parallel": key.max_parallel,
        "budget_usd": key.budget_usd,
        "budget_period": key.budget_period,
        "model_limits": msgspec.to_builtins(key.model_limits),
        "params": msgspec.to_builtins(key.params) if key.params is not None else None,
        "expires_at": _time(key.expires_at),
        "enabled": key.enabled,
        "revoked_at": _time(key.revoked_at),
        "metadata": key.metadata,
        "created_at": _time(key.created_at),
        "updated_at": _time(key.updated_at),
    }
    if secret is not None:
        view["key"] = secret  # this once
    return view


def team_view(team: TeamRecord) -> dict[str, Any]:
    return {
        "id": team.id,
        "object": "team",
        "name": team.name,
        "models": list(team.models),
        "rpm": team.rpm,
        "tpm": team.tpm,
        "max_parallel": team.max_parallel,
        "budget_usd": team.budget_usd,
        "budget_period": team.budget_period,
        "metadata": team.metadata,
        "created_at": _time(team.created_at),
        "updated_at": _time(team.updated_at),
    }


def _time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def _store(request: Request[Any, Any, State]) -> tuple[Database, Guard]:
    require_admin(request)
    guard: Guard = request.app.state.guard
    if guard.database is None:
        raise InvalidRequest("Keys and teams need auth.master_key (and a database, SQLite by default).")
    return guard.database, guard


def _answer(body: dict[str, Any], request: Request[Any, Any, State], status: int = 200) -> Response[dict[str, Any]]:
    return Response(body, status_code=status, headers={"x-request-id": request_id_of(request.scope)})


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _id(request: Request[Any, Any, State], name: str) -> str:
    """A key's or team's id from the path; anything else is no id (a 404, never a query)."""
    value = str(request.path_params[name])
    if not _ID.fullmatch(value):
        raise _missing("key" if name == "key_id" else "team", value[:64].replace("\x00", ""))
    return value


def _missing(what: str, ident: str) -> RouteNotFound:
    return RouteNotFound(f"No {what} with id '{ident}'.")


@post("/admin/keys", status_code=201)
async def create_key(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    database, guard = _store(request)
    fields = await _decode(request, KeyIn)
    if "name" not in fields:
        raise InvalidRequest("A key needs a name.", param="name", code="missing_required_parameter")
    key_id, secret, key_hash = new_key()
    try:
        record = await database.create_key(key_id, key_hash, fields)
    except Conflict as exc:
        raise InvalidRequest(str(exc), param="team_id") from None
    await guard.reload()
    return _answer(key_view(record, secret), request, 201)


@get("/admin/keys")
async def list_keys(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    database, _ = _store(request)
    return _answer({"object": "list", "data": [key_view(k) for k in await database.keys()]}, request)


@get("/admin/keys/{key_id:str}")
async def show_key(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    key_id = _id(request, "key_id")
    database, _ = _store(request)
    record = await database.key(key_id)
    if record is None:
        raise _missing("key", key_id)
    return _answer(key_view(record), request)


@patch("/admin/keys/{key_id:str}")
async def update_key(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    key_id = _id(request, "key_id")
    database, guard = _store(request)
    fields = await _decode(request, KeyIn)
    try:
        record = await database.update_key(key_id, fields)
    except Conflict as exc:
        raise InvalidRequest(str(exc), param="team_id") from None
    if record is None:
        raise _missing("key", key_id)
    await guard.reload()
    return _answer(key_view(record), request)


@delete("/admin/keys/{key_id:str}", status_code=200)
async def revoke_key(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    key_id = _id(request, "key_id")
    database, guard = _store(request)
    current = await database.key(key_id)
    if current is None:
        raise _missing("key", key_id)
    record = await database.update_key(key_id, {"revoked_at": current.revoked_at or datetime.now(UTC)})
    assert record is not None
    await guard.reload()
    return _answer(key_view(record), request)


@post("/admin/keys/{key_id:str}/rotate", status_code=200)
async def rotate_key(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    """A new secret for the same key (id, limits, spend); the old secret stops working at once."""
    key_id = _id(request, "key_id")
    database, guard = _store(request)
    current = await database.key(key_id)
    if current is None:
        raise _missing("key", key_id)
    if current.revoked_at is not None:
        raise InvalidRequest(f"The key '{key_id}' is revoked: create a new one.")
    _, secret, key_hash = new_key(key_id)
    record = await database.update_key(key_id, {"key_hash": key_hash})
    assert record is not None
    await guard.reload()
    return _answer(key_view(record, secret), request)


@post("/admin/teams", status_code=201)
async def create_team(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    database, guard = _store(request)
    fields = await _decode(request, TeamIn)
    if "name" not in fields:
        raise InvalidRequest("A team needs a name.", param="name", code="missing_required_parameter")
    try:
        record = await database.create_team(fields)
    except Conflict as exc:
        raise InvalidRequest(str(exc), param="name") from None
    await guard.reload()
    return _answer(team_view(record), request, 201)


@get("/admin/teams")
async def list_teams(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    database, _ = _store(request)
    return _answer({"object": "list", "data": [team_view(t) for t in await database.teams()]}, request)


@get("/admin/teams/{team_id:str}")
async def show_team(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    team_id = _id(request, "team_id")
    database, _ = _store(request)
    record = await database.team(team_id)
    if record is None:
        raise _missing("team", team_id)
    return _answer(team_view(record), request)


@patch("/admin/teams/{team_id:str}")
async def update_team(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    team_id = _id(request, "team_id")
    database, guard = _store(request)
    fields = await _decode(request, TeamIn)
    try:
        record = await database.update_team(team_id, fields)
    except Conflict as exc:
        raise InvalidRequest(str(exc), param="name") from None
    if record is None:
        raise _missing("team", team_id)
    await guard.reload()
    return _answer(team_view(record), request)


@delete("/admin/teams/{team_id:str}", status_code=200)
async def delete_team(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    """The team goes; its keys stay, without a team."""
    team_id = _id(request, "team_id")
    database, guard = _store(request)
    if not await database.delete_team(team_id):
        raise _missing("team", team_id)
    await guard.reload()
    return _answer({"id": team_id, "object": "team", "deleted": True}, request)


ROUTES = [
    create_key,
    list_keys,
    show_key,
    update_key,
    revoke_key,
    rotate_key,
    create_team,
    list_teams,
    show_team,
    update_team,
    delete_team,
]
