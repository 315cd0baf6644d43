"""``GET /admin/openapi.json``: the admin API in OpenAPI 3.1. The request schemas are generated
from the Structs that validate the bodies; the response schemas from Structs that the tests hold
the answers to."""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from msgspec import UNSET, UnsetType

from providers.schema import ErrorEnvelope
from router.admin.auth import require_admin
from router.admin.keys import KeyIn, TeamIn
from router.config_schema import BudgetPeriod, ModelLimits, ParamsPolicy


class KeyView(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    object: Literal["key"]
    name: str
    team_id: str | None
    models: list[str]
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    budget_usd: float | None
    budget_period: BudgetPeriod | None
    model_limits: dict[str, ModelLimits]
    params: ParamsPolicy | None
    expires_at: str | None
    enabled: bool
    revoked_at: str | None
    metadata: dict[str, str]
    created_at: str
    updated_at: str
    key: str | UnsetType = UNSET  # the secret: only from create and rotate


class TeamView(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    object: Literal["team"]
    name: str
    models: list[str]
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    budget_usd: float | None
    budget_period: BudgetPeriod | None
    metadata: dict[str, str]
    created_at: str
    updated_at: str


class KeyList(msgspec.Struct):
    object: Literal["list"]
    data: list[KeyView]


class TeamList(msgspec.Struct):
    object: Literal["list"]
    data: list[TeamView]


class TeamDeleted(msgspec.Struct):
    id: str
    object: Literal["team"]
    deleted: bool


class UsageRow(msgspec.Struct):
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class UsageReport(msgspec.Struct):
    object: Literal["list"]
    group_by: Literal["key", "team", "model", "day"]
    data: list[UsageRow]


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
# (method, path, summary, request body, success status, response)
OPERATIONS: Final = (
    ("post", "/admin/keys", "Create a key; the answer holds its secret, this once", KeyIn, 201, KeyView),
    ("get", "/admin/keys", "Every key, without secrets", None, 200, KeyList),
    ("get", "/admin/keys/{id}", "One key", None, 200, KeyView),
    ("patch", "/admin/keys/{id}", "Change a key's fields", KeyIn, 200, KeyView),
    ("delete", "/admin/keys/{id}", "Revoke a key", None, 200, KeyView),
    ("post", "/admin/keys/{id}/rotate", "A new secret for the key", None, 200, KeyView),
    ("post", "/admin/teams", "Create a team", TeamIn, 201, TeamView),
    ("get", "/admin/teams", "Every team", None, 200, TeamList),
    ("get", "/admin/teams/{id}", "One team", None, 200, TeamView),
    ("patch", "/admin/teams/{id}", "Change a team's fields", TeamIn, 200, TeamView),
    ("delete", "/admin/teams/{id}", "Delete a team (its keys stay, without a team)", None, 200, TeamDeleted),
    ("get", "/admin/usage", "Requests, tokens and cost by key, team, model or day", None, 200, UsageReport),
)
USAGE_QUERY: Final = [
    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
    for name in ("key_id", "team_id", "model", "from", "to")
] + [
    {
        "name": "group_by",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["key", "team", "model", "day"], "default": "day"},
    }
]


def document() -> dict[str, Any]:
    types: list[Any] = [KeyIn, TeamIn, KeyView, TeamView, KeyList, TeamList, TeamDeleted, UsageReport, ErrorEnvelope]
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    ref = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    errors = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for method, path, summary, body, status, answer in OPERATIONS:
        operation: dict[str, Any] = {
            "summary": summary,
            "security": [{"masterKey": []}],
            "responses": {
                str(status): {"description": "OK", "content": {"application/json": {"schema": ref[answer]}}},
                **{
                    str(code): {"description": text, "content": {"application/json": {"schema": errors}}}
                    for code, text in (
                        (400, "Invalid input, naming the field in `param`"),
                        (401, "No master key, or a wrong one"),
                        (403, "A virtual key, or open mode"),
                        (404, "No such id"),
                    )
                },
            },
        }
        if "{id}" in path:
            operation["parameters"] = [_ID]
        if path == "/admin/usage":
            operation["parameters"] = USAGE_QUERY
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref[body]}}}
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchboard admin API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"masterKey": {"type": "http", "scheme": "bearer", "description": "auth.master_key"}},
        },
    }


@get("/admin/openapi.json")
async def admin_openapi(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    require_admin(request)
    return Response(document())
