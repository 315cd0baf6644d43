"""The admin API's OpenAPI document, and the answers held to the schemas it publishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from router.admin.openapi import KeyList, KeyView, TeamDeleted, TeamList, TeamView, UsageReport
from tests.test_keys import ADMIN, bearer, gateway


def strict(value: Any, kind: type) -> Any:
    return msgspec.convert(value, kind, strict=True)


async def test_the_document_describes_every_operation(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, _):
        answer = await http.get("/admin/openapi.json", headers=ADMIN)
        assert answer.status_code == 200
        doc = answer.json()
        key = (await http.post("/admin/keys", json={"name": "k"}, headers=ADMIN)).json()["key"]
        assert (await http.get("/admin/openapi.json", headers=bearer(key))).status_code == 403
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {
        "/admin/keys",
        "/admin/keys/{id}",
        "/admin/keys/{id}/rotate",
        "/admin/teams",
        "/admin/teams/{id}",
        "/admin/usage",
    }
    assert set(doc["paths"]["/admin/keys"]) == {"get", "post"}
    assert set(doc["paths"]["/admin/keys/{id}"]) == {"get", "patch", "delete"}
    schemas = doc["components"]["schemas"]
    key_in = schemas["KeyIn"]["properties"]
    assert {"name", "team_id", "models", "rpm", "tpm", "max_parallel", "budget_usd", "budget_period"} <= set(key_in)
    assert {"expires_at", "metadata", "enabled"} <= set(key_in)
    assert schemas["KeyIn"]["additionalProperties"] is False
    created = doc["paths"]["/admin/keys"]["post"]
    assert created["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/KeyIn"}
    assert "201" in created["responses"]
    assert "key" in schemas["KeyView"]["properties"]


async def test_the_answers_are_what_the_document_says(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, _):
        team = (await http.post("/admin/teams", json={"name": "t", "rpm": 5}, headers=ADMIN)).json()
        strict(team, TeamView)
        created = (await http.post("/admin/keys", json={"name": "k", "team_id": team["id"]}, headers=ADMIN)).json()
        assert strict(created, KeyView).key.startswith("sk-sb-")
        strict((await http.get("/admin/keys", headers=ADMIN)).json(), KeyList)
        shown = strict((await http.get(f"/admin/keys/{created['id']}", headers=ADMIN)).json(), KeyView)
        assert shown.key is msgspec.UNSET
        strict((await http.post(f"/admin/keys/{created['id']}/rotate", headers=ADMIN)).json(), KeyView)
        strict((await http.get("/admin/teams", headers=ADMIN)).json(), TeamList)
        strict((await http.get("/admin/usage", params={"group_by": "key"}, headers=ADMIN)).json(), UsageReport)
        strict((await http.delete(f"/admin/teams/{team['id']}", headers=ADMIN)).json(), TeamDeleted)
