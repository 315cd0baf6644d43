"""A key's own limits per model (``model_limits``) and its own server-controlled parameters
(``params``): through the admin API, declared in config.yaml, stored across a migration, and
counted in Redis like any other limit."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from router.config import ConfigError, settings_from_dict
from router.store.database import Database
from router.store.url import async_url
from tests.test_keys import ADMIN, bearer, chat, config, database_url, gateway, new_key
from tests.test_shared_limits import ask, key_everywhere, replicas

__all__ = ["database_url"]  # the fixture: SQLite and PostgreSQL


async def test_a_key_limits_one_model_and_not_the_others(tmp_path: Path, database_url: str) -> None:
    async with gateway(tmp_path, url=database_url) as (http, _):
        created = await new_key(http, rpm=100, model_limits={"m-small": {"rpm": 1}, "m-*": {"rpm": 2}})
        assert created["model_limits"] == {
            "m-small": {"rpm": 1, "tpm": None, "max_parallel": None},
            "m-*": {"rpm": 2, "tpm": None, "max_parallel": None},
        }
        key = created["key"]
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))).status_code == 200
        refused = await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert f"{created['id']} on 'm-small': 1 requests per minute" in error["message"]
        assert refused.headers["x-ratelimit-limit-requests"] == "1"
        # a model no pattern names: only the key's own rpm, which the refused request did not take
        other = await http.post("/v1/chat/completions", json=chat("secret-model"), headers=bearer(key))
        assert other.status_code == 200
        assert other.headers["x-ratelimit-remaining-requests"] == "98"
        shown = (await http.get(f"/admin/keys/{created['id']}", headers=ADMIN)).json()
        assert shown["model_limits"]["m-small"]["rpm"] == 1
        # edited: the new limit holds at once
        await http.patch(f"/admin/keys/{created['id']}", json={"model_limits": {}}, headers=ADMIN)
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))).status_code == 200


async def test_a_glob_counts_the_models_it_names_together(tmp_path: Path) -> None:
    extra: dict[str, Any] = {"models": {"m-a": {"targets": [{"provider": "up", "model": "x"}]}}}
    async with gateway(tmp_path, **extra) as (http, _):
        key = (await new_key(http, model_limits={"m-*": {"rpm": 1}}))["key"]
        assert (await http.post("/v1/chat/completions", json=chat("m-a"), headers=bearer(key))).status_code == 200
        refused = await http.post("/v1/chat/completions", json=chat("m-a"), headers=bearer(key))
        assert refused.status_code == 429
        assert "on 'm-*'" in refused.json()["error"]["message"]


async def test_model_limits_are_shared_through_redis(tmp_path: Path, redis_url: str) -> None:
    async with replicas(tmp_path, 2, {"backend": "redis", "url": redis_url}) as clients:
        key = await key_everywhere(clients, model_limits={"m-small": {"rpm": 3}})
        statuses = [(await ask(clients[i % 2], key)).status_code for i in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        refused = await ask(clients[0], key)
        assert "on 'm-small'" in refused.json()["error"]["message"]


async def test_a_key_has_its_own_server_controlled_parameters(tmp_path: Path, database_url: str) -> None:
    async with gateway(tmp_path, url=database_url) as (http, upstreams):
        params = {"max_tokens": 5, "clamp": True, "force": {"temperature": 0}, "deny": ["logit_bias"]}
        created = await new_key(http, params=params)
        assert created["params"]["max_tokens"] == 5
        assert created["params"]["force"] == {"temperature": 0}
        key = created["key"]
        answer = await http.post(
            "/v1/chat/completions", json=chat(max_tokens=500, temperature=1.5), headers=bearer(key)
        )
        assert answer.status_code == 200
        assert (upstreams.bodies[-1]["max_tokens"], upstreams.bodies[-1]["temperature"]) == (5, 0)
        denied = await http.post("/v1/chat/completions", json=chat(logit_bias={"1": 1}), headers=bearer(key))
        assert denied.status_code == 400
        assert denied.json()["error"]["param"] == "logit_bias"
        # another key, the same model: untouched
        plain = (await new_key(http, name="plain"))["key"]
        answer = await http.post(
            "/v1/chat/completions", json=chat(max_tokens=500, temperature=1.5), headers=bearer(plain)
        )
        assert answer.status_code == 200
        assert (upstreams.bodies[-1]["max_tokens"], upstreams.bodies[-1]["temperature"]) == (500, 1.5)


async def test_the_keys_parameters_apply_first_and_the_alias_has_the_last_word(tmp_path: Path) -> None:
    extra: dict[str, Any] = {
        "models": {
            "m-small": {
                "targets": [{"provider": "up", "model": "x"}],
                "params": {"system_prompt": "ALIAS", "max_tokens": 100, "clamp": True},
            }
        }
    }
    async with gateway(tmp_path, **extra) as (http, upstreams):
        key = (await new_key(http, params={"system_prompt": "KEY", "max_tokens": 10, "clamp": True}))["key"]
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))).status_code == 200
        sent = upstreams.bodies[-1]
        assert [m["content"] for m in sent["messages"] if m["role"] == "system"] == ["ALIAS", "KEY"]
        assert sent["max_tokens"] == 10
        # what the alias inserts is not the client's: a key that denies max_tokens still gets the cap
        strict = (await new_key(http, name="strict", params={"deny": ["max_tokens"], "force": {"top_p": 1}}))["key"]
        assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(strict))).status_code == 200
        assert (upstreams.bodies[-1]["max_tokens"], upstreams.bodies[-1]["top_p"]) == (100, 1)
        denied = await http.post("/v1/chat/completions", json=chat(max_tokens=5), headers=bearer(strict))
        assert denied.status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"params": {"force": {"model": "other"}}}, "params"),
        ({"params": {"deny": ["messages"]}}, "params"),
        ({"params": {"max_tokens": 0}}, "params"),
        ({"params": {"surprise": 1}}, "params"),
        ({"model_limits": {"m-small": {"rpm": 0}}}, "model_limits"),
        ({"model_limits": {"m-small": {"rpd": 5}}}, "model_limits"),
        ({"model_limits": {"": {"rpm": 5}}}, "model_limits"),
    ],
)
async def test_bad_model_limits_and_params_are_400s_naming_them(
    tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    async with gateway(tmp_path) as (http, _):
        answer = await http.post("/admin/keys", json={"name": "k", **body}, headers=ADMIN)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param


async def test_declared_keys_take_model_limits_and_params(tmp_path: Path) -> None:
    declared = {
        "name": "ci",
        "key_env": "CI_KEY",
        "model_limits": {"m-small": {"rpm": 1}},
        "params": {"force": {"temperature": 0}},
    }
    async with gateway(tmp_path, env={"CI_KEY": "sk-ci-declared-0123456789"}, keys=[declared]) as (http, ups):
        headers = bearer("sk-ci-declared-0123456789")
        assert (await http.post("/v1/chat/completions", json=chat(temperature=1), headers=headers)).status_code == 200
        assert ups.bodies[-1]["temperature"] == 0
        assert (await http.post("/v1/chat/completions", json=chat(), headers=headers)).status_code == 429
    bad = {**declared, "params": {"force": {"stream": True}}}
    with pytest.raises(ConfigError, match=r"keys\[0\]\.params\.force"):
        settings_from_dict(config(tmp_path, keys=[bad]), {"CI_KEY": "x"})


async def test_keys_made_before_the_migration_keep_working(tmp_path: Path, database_url: str) -> None:
    """A database at the previous revision (0002) is upgraded at start: its keys gain empty model
    limits and no parameters."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from router.store.database import MIGRATIONS

    database = Database(async_url(database_url))

    def to_0002(connection: sa.Connection) -> None:
        alembic = AlembicConfig()
        alembic.set_main_option("script_location", str(MIGRATIONS))
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, "0002")

    async with database.engine.begin() as conn:
        await conn.run_sync(to_0002)
        columns = await conn.run_sync(lambda c: {col["name"] for col in sa.inspect(c).get_columns("keys")})
        assert "model_limits" not in columns
        names = ("id", "name", "key_hash", "models", "enabled", "metadata", "created_at", "updated_at")
        old_keys = sa.table("keys", *(sa.column(n, sa.JSON if n in ("models", "metadata") else None) for n in names))
        stamp = datetime(2026, 11, 1, tzinfo=UTC)
        row = {"id": "aaaaaaaaaaaa", "name": "old", "key_hash": "0" * 64, "models": [], "metadata": {}}
        await conn.execute(sa.insert(old_keys).values(**row, enabled=True, created_at=stamp, updated_at=stamp))
    await database.migrate()
    try:
        _, keys, _ = await database.load()
        assert [(k.name, k.model_limits, k.params) for k in keys] == [("old", {}, None)]
    finally:
        await database.close()
    async with gateway(tmp_path, url=database_url) as (http, _):
        listed = (await http.get("/admin/keys", headers=ADMIN)).json()["data"]
        assert [(k["name"], k["model_limits"], k["params"]) for k in listed] == [("old", {}, None)]
