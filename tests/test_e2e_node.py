"""End to end from Node: the Vercel AI SDK's default OpenAI provider (which speaks the Responses
API) against a live Switchboard: ``generateText``, ``streamText``, and a tool-using
``generateText`` whose second step continues from the first through stored items."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES
from tests.live import running_proxy

NODE_DIR = Path(__file__).parent / "node"


def node_clients() -> str:
    """The node binary, with the packages of tests/node installed (``npm ci``, from the lockfile)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "node and npm are not installed: the Vercel AI SDK test cannot run"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    if not (NODE_DIR / "node_modules" / "ai").is_dir():
        subprocess.run(  # noqa: S603
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True, timeout=300
        )
    return node


def test_the_vercel_ai_sdk_generates_streams_and_calls_tools(tmp_path: Path) -> None:
    node = node_clients()
    config = tmp_path / "config.yaml"
    config.write_text("providers: {demo: {type: mock}}\nmodels: {demo: {targets: [{provider: demo, model: echo}]}}\n")
    with running_proxy(config, {}, tmp_path / "proxy.log") as base:
        done = subprocess.run(  # noqa: S603
            [node, "vercel.mjs", f"{base}/v1", "demo"], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["generated"] == "Hello from Node"
    assert result["generatedUsage"]["inputTokens"] == 3
    assert result["generatedUsage"]["outputTokens"] == 3
    assert result["streamed"] == "Streaming from Node"
    assert result["streamedUsage"]["totalTokens"] == 6
    assert result["agentToolResults"] == ["Sunny in example"]  # the mock's call, with schema-valid arguments
    assert result["agentSteps"] == 2
    assert result["agentText"] == "The tool weather returned: Sunny in example"
