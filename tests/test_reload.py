"""Config reload without a restart: requests in flight finish on the old config, new ones get the
new one, an invalid config changes nothing, breaker state survives for unchanged targets. In
process (the app's reloader, on a live server), then as an operator does it: ``switchboard reload``
and SIGHUP to the real server."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
import yaml

from router.app import create_app
from router.config import load_settings
from router.lifecycle.reload import Reloader
from tests.conftest import fixture_bytes
from tests.live import ROOT, LiveServer, free_port, proxy_process

SLOW = " ".join(f"w{i}" for i in range(30))  # the mock echoes it: 30 tokens, 50 ms apart


def _v1() -> dict[str, Any]:
    return {
        "providers": {
            "up": {"type": "openai", "base_url": "http://up.test/v1", "api_key": "sk-up"},
            "demo": {"type": "mock", "token_delay_s": 0.05},
        },
        "models": {
            "kept": {"targets": [{"provider": "up", "model": "bad-kept"}]},
            "changed": {"targets": [{"provider": "up", "model": "bad-changed"}]},
            "talk": {"targets": [{"provider": "demo", "model": "echo"}]},
        },
        "resilience": {"retry": {"max_attempts": 1}, "breaker": {"fail_max": 1, "reset_timeout_s": 600}},
    }


def _v2() -> dict[str, Any]:
    config = _v1()
    changed = {"provider": "up", "model": "bad-changed", "breaker": {"reset_timeout_s": 300}}
    config["models"]["changed"] = {"targets": [changed]}
    config["models"]["talk"] = {"targets": [{"provider": "demo", "model": "canned"}]}
    config["models"]["added"] = {"targets": [{"provider": "up", "model": "good"}]}
    return config


def _upstream(request: httpx.Request) -> httpx.Response:
    model = msgspec.json.decode(request.content)["model"]
    if model.startswith("bad"):
        return httpx.Response(503, json={"error": {"message": "down", "type": "server_error"}})
    return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path, Reloader]]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_v1()))
    app = create_app(load_settings(path), transport=httpx.MockTransport(_upstream), config_path=str(path))
    async with LiveServer(app) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client, path, app.state.reloader


async def _chat(client: httpx.AsyncClient, model: str) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
    )


async def _breakers(client: httpx.AsyncClient) -> dict[str, str]:
    return {t["target"]: t["state"] for t in (await client.get("/admin/targets")).json()["data"]}


async def test_a_reload_serves_the_new_config_and_keeps_unchanged_breakers(
    live: tuple[httpx.AsyncClient, Path, Reloader],
) -> None:
    client, path, reloader = live
    for model in ("kept", "changed"):
        assert (await _chat(client, model)).status_code == 502  # each target's breaker opens
    assert (await _chat(client, "added")).status_code == 404
    opened = await _breakers(client)
    assert opened["up/bad-kept"] == opened["up/bad-changed"] == "open"

    path.write_text(yaml.safe_dump(_v2()))
    assert reloader.reload()

    breakers = await _breakers(client)
    assert breakers["up/bad-kept"] == "open"  # unchanged target: its state survives
    assert breakers["up/bad-changed"] == "closed"  # new breaker settings: a new breaker
    skipped = await _chat(client, "kept")
    assert skipped.status_code == 503  # skipped at once: its breaker is still open
    assert (await _chat(client, "added")).status_code == 200
    models = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
    assert models == {"kept", "changed", "talk", "added"}


async def test_a_request_in_flight_finishes_on_the_old_config(
    live: tuple[httpx.AsyncClient, Path, Reloader],
) -> None:
    client, path, reloader = live
    body = {"model": "talk", "stream": True, "messages": [{"role": "user", "content": SLOW}]}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["x-switchboard-target"] == "demo/echo"
        chunks = response.aiter_lines()
        await anext(chunks)
        path.write_text(yaml.safe_dump(_v2()))  # talk → demo/canned from now on
        assert reloader.reload()
        after = await client.post("/v1/chat/completions", json=body | {"stream": False})
        rest = [line async for line in chunks]
    assert after.headers["x-switchboard-target"] == "demo/canned"
    events = [msgspec.json.decode(line[6:]) for line in rest if line.startswith("data: {")]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert text.split()[-1] == "w29"  # the old target's answer, to its end
    assert {e["model"] for e in events} == {"echo"}
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"


async def test_an_invalid_config_is_refused_and_the_old_one_kept(
    live: tuple[httpx.AsyncClient, Path, Reloader], caplog: pytest.LogCaptureFixture
) -> None:
    client, path, reloader = live
    broken = _v2()
    broken["models"]["added"]["targets"][0]["provider"] = "nowhere"
    path.write_text(yaml.safe_dump(broken))
    with caplog.at_level(logging.ERROR, logger="router.lifecycle.reload"):
        assert not reloader.reload()
    assert "unknown provider 'nowhere'" in caplog.text
    assert "the running config stays" in caplog.text
    assert (await _chat(client, "added")).status_code == 404  # nothing of it applied
    assert (await client.get("/v1/models")).status_code == 200
    assert reloader.reloads == 0


async def test_a_section_read_at_start_is_reported_as_needing_a_restart(
    live: tuple[httpx.AsyncClient, Path, Reloader], caplog: pytest.LogCaptureFixture
) -> None:
    client, path, reloader = live
    config = _v2()
    config["server"] = {"port": 4999}
    path.write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.WARNING, logger="router.lifecycle.reload"):
        assert reloader.reload()
    assert "server changed: that takes a restart" in caplog.text
    assert (await _chat(client, "added")).status_code == 200  # the rest applied


async def test_a_replaced_provider_is_closed_once_nothing_can_use_it(
    live: tuple[httpx.AsyncClient, Path, Reloader],
) -> None:
    _, path, reloader = live
    config = _v2()
    config["providers"]["demo"] = {"type": "mock", "token_delay_s": 0.01}
    config["resilience"]["timeouts"] = {"total_s": 0.2}
    path.write_text(yaml.safe_dump(config))
    old = reloader.upstreams["demo"]
    kept = reloader.upstreams["up"]
    assert reloader.reload()
    assert reloader.upstreams["demo"] is not old  # changed: rebuilt
    assert reloader.upstreams["up"] is kept  # unchanged: its connection pool goes on
    path.write_text(yaml.safe_dump(_v2()))
    assert reloader.reload()  # retires the 0.2 s one; the first waits the old total_s (900 s)
    await asyncio.sleep(0.4)
    assert len(reloader._retired) == 1


def _serve_config(path: Path, demo_model: str) -> None:
    path.write_text(
        "providers:\n  demo: {type: mock, token_delay_s: 0.05}\n"
        f"models:\n  talk: {{targets: [{{provider: demo, model: {demo_model}}}]}}\n"
    )


def _target(base: str) -> str:
    with openai.OpenAI(base_url=f"{base}/v1", api_key="sk-any", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="talk", messages=[{"role": "user", "content": "hi"}]
        )
    return raw.headers["x-switchboard-target"]


def _wait_for_target(base: str, expected: str) -> None:
    deadline = time.monotonic() + 5
    while _target(base) != expected:
        assert time.monotonic() < deadline, f"still not {expected}"
        time.sleep(0.05)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "router", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_switchboard_reload_applies_a_valid_config_and_refuses_an_invalid_one(tmp_path: Path, workers: int) -> None:
    config = tmp_path / "config.yaml"
    _serve_config(config, "echo")
    port = free_port()
    with proxy_process(config, {}, tmp_path / "proxy.log", workers=workers, port=port) as proxy:
        assert _target(proxy.base) == "demo/echo"
        _serve_config(config, "canned")
        done = _cli("reload", "--config", str(config), "--port", str(port))
        assert done.returncode == 0, done.stderr
        assert f"sent to the {workers} process(es) serving port {port}" in done.stderr
        for _ in range(8):  # every worker, whichever answers
            _wait_for_target(proxy.base, "demo/canned")
        config.write_text("models: {talk: {targets: [{provider: nowhere, model: x}]}}\n")
        refused = _cli("reload", "--config", str(config), "--port", str(port))
        assert refused.returncode == 2
        assert "unknown provider 'nowhere'" in refused.stderr
        assert _target(proxy.base) == "demo/canned"
    assert _cli("reload", "--config", str(config), "--port", str(port)).returncode == 2


def test_sighup_with_an_invalid_config_logs_it_and_keeps_serving(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    _serve_config(config, "echo")
    with proxy_process(config, {}, tmp_path / "proxy.log") as proxy:
        config.write_text("models: [not, a, mapping]\n")
        proxy.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "the running config stays" not in proxy.log.read_text():
            assert time.monotonic() < deadline, proxy.log.read_text()
            time.sleep(0.05)
        assert proxy.process.poll() is None
        assert _target(proxy.base) == "demo/echo"
        _serve_config(config, "canned")
        proxy.process.send_signal(signal.SIGHUP)
        _wait_for_target(proxy.base, "demo/canned")


def test_reload_without_a_server_says_so(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    _serve_config(config, "echo")
    done = _cli("reload", "--config", str(config), "--port", str(free_port()))
    assert done.returncode == 1
    assert "no server of this user is serving port" in done.stderr
