"""``switchboard keys …`` and ``switchboard teams …``: straight on the config's database, one JSON
object out, and a key made there answers at once on a server using the same database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.cli import main
from router.config import load_settings
from tests.conftest import fixture_bytes

CONFIG = """\
providers: {up: {type: openai, base_url: "http://up.test/v1"}}
models:
  m: {targets: [{provider: up, model: x}]}
  other: {targets: [{provider: up, model: y}]}
auth: {master_key: cli-master-key-0123}
database: {url: "sqlite:///keys.db"}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, Any, str]:
    status = main([*argv, "--config", str(config)])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if out.strip() else None), err


def test_keys_and_teams_from_the_command_line(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, team, _ = run(capsys, config, "teams", "create", "--name", "research", "--rpm", "600")
    assert status == 0
    assert (team["name"], team["rpm"]) == ("research", 600)
    status, key, _ = run(
        capsys,
        config,
        "keys", "create", "--name", "alice", "--team", team["id"], "--models", "m, gpt-4o*",
        "--budget-usd", "5", "--budget-period", "monthly", "--metadata", "owner=alice",
    )  # fmt: skip
    assert status == 0
    assert key["key"].startswith(f"sk-sb-{key['id']}-")
    assert key["models"] == ["m", "gpt-4o*"]
    assert (key["budget_usd"], key["budget_period"], key["metadata"]) == (5.0, "monthly", {"owner": "alice"})
    assert (config.parent / "keys.db").exists()  # beside the config, created on first use
    status, listed, _ = run(capsys, config, "keys", "list")
    assert [k["id"] for k in listed["data"]] == [key["id"]]
    assert key["key"] not in json.dumps(listed)
    status, shown, _ = run(capsys, config, "keys", "update", key["id"], "--disable", "--rpm", "10")
    assert (shown["enabled"], shown["rpm"]) == (False, 10)
    status, rotated, _ = run(capsys, config, "keys", "rotate", key["id"])
    assert rotated["key"] != key["key"]
    status, revoked, _ = run(capsys, config, "keys", "revoke", key["id"])
    assert revoked["revoked_at"] is not None
    status, _, err = run(capsys, config, "keys", "rotate", key["id"])
    assert status == 1
    assert "revoked" in err
    status, deleted, _ = run(capsys, config, "teams", "delete", team["id"])
    assert deleted == {"id": team["id"], "object": "team", "deleted": True}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("keys", "create", "--name", "x", "--rpm", "ten"), "--rpm takes a number"),
        (("keys", "create", "--name", "x", "--rpm", "0"), "rpm"),
        (("keys", "create", "--name", "x", "--budget-period", "hourly"), "budget-period"),
        (("keys", "create", "--name", "x", "--expires-at", "soon"), "--expires-at"),
        (("keys", "create", "--name", "x", "--metadata", "novalue"), "KEY=VALUE"),
        (("keys", "create", "--name", "x", "--team", "team_nope"), "no team"),
        (("keys", "show", "nope"), "no key with id 'nope'"),
        (("teams", "delete", "nope"), "no team with id 'nope'"),
    ],
)
def test_mistakes_are_named(
    config: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    status, out, err = run(capsys, config, *argv)
    assert status == 1
    assert out is None
    assert message in err
    assert "Traceback" not in err


def test_a_key_made_on_the_command_line_answers_on_the_server(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, key, _ = run(capsys, config, "keys", "create", "--name", "ci", "--models", "m")
    assert status == 0
    asyncio.run(answers(config, key["key"]))


async def answers(config: Path, key: str) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))

    app = create_app(load_settings(config), transport=httpx.MockTransport(upstream))
    async with AsyncTestClient(app=app) as http:
        headers = {"authorization": f"Bearer {key}"}
        ok = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        )
        assert ok.status_code == 200
        refused = await http.post(
            "/v1/chat/completions",
            json={"model": "other", "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        )
        assert refused.status_code == 403


def test_several_workers_with_limits_in_memory_are_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", "2", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "state.backend: redis" in err
    assert "2 workers" in err
    config.write_text(CONFIG + "server: {workers: 3}\n")
    assert main(["check", "--config", str(config)]) == 2
    assert "state.backend: 3 workers" in capsys.readouterr().err


def test_serve_refuses_several_workers_before_touching_the_database(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--workers", "2", "--config", str(config)]) == 2
    assert not (config.parent / "keys.db").exists()


def test_model_limits_and_params_from_the_command_line(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    limits = '{"demo*": {"rpm": 10}}'
    status, key, _ = run(capsys, config, "keys", "create", "--name", "k", "--model-limits", limits)
    assert status == 0
    assert key["model_limits"] == {"demo*": {"rpm": 10, "tpm": None, "max_parallel": None}}
    status, key, _ = run(capsys, config, "keys", "update", key["id"], "--params", '{"max_tokens": 64}')
    assert status == 0
    assert key["params"]["max_tokens"] == 64
    status, _, err = run(capsys, config, "keys", "update", key["id"], "--params", "{nope")
    assert status != 0
    assert "--params takes JSON" in err
    status, _, err = run(capsys, config, "keys", "update", key["id"], "--params", '{"force": {"model": "x"}}')
    assert status != 0
    assert "cannot be forced" in err
