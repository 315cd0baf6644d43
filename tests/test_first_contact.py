"""A newcomer's first minutes: config errors never echo a secret, and the image's health check
follows the port it was told to use."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from router.cli import main
from router.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent

# Secrets of the shapes people paste: OpenAI, a bare random token, Google.
MARKERS = ["sk-MARKERproj0123456789abcdefABCDEF", "ZXQMARKER123", "AIzaMARKERSyD0123456789abcdefghijkl"]
ROUTED = "models: {m: {targets: [{provider: p, model: x}]}}\n"

# A mistake in a value that comes from $SECRET, and the line that reports it without the value.
FROM_THE_ENVIRONMENT = [
    ("providers: {p: {type: '${SECRET}'}}\n" + ROUTED, "providers.p.type: unknown provider type (from ${SECRET})"),
    (
        "providers: {p: {type: mock}}\nmodels: {m: {targets: [{provider: p, model: x}], strategy: '${SECRET}'}}\n",
        "models.m.strategy: invalid value (from ${SECRET})",
    ),
    (
        "providers: {p: {type: mock}}\nmodels: {m: {targets: [{provider: '${SECRET}', model: x}]}}\n",
        "models.m.targets[0].provider: unknown provider (from ${SECRET})",
    ),
    (
        "providers: {p: {type: mock}}\nmodels: {m: {targets: [{provider: p, model: x}], fallbacks: ['${SECRET}']}}\n",
        "models.m.fallbacks[0]: unknown model (from ${SECRET})",
    ),
    ("server: {port: '${SECRET}'}\nproviders: {p: {type: mock}}\n" + ROUTED, "server.port: expected `int`"),
    (
        "providers: {p: {type: openai, base_url: '${SECRET}', api_key: '${SECRET}'}}\n" + ROUTED,
        "providers.p.base_url: must start with http:// or https://",
    ),
]

# The same, typed inline where a key belongs (the file itself is broken, or the key field is).
INLINE = [
    ("providers:\n  p: {type: openai, api_key: SECRET\n" + ROUTED, "not valid YAML at line 3, column 7"),
    ("providers:\n  p: {type: openai, api_key: *SECRET}\n" + ROUTED, "found undefined alias '…'"),
    (
        "providers: {p: {type: openai, headers: {Authorization: [Bearer SECRET]}}}\n" + ROUTED,
        "providers.p.headers[...]: expected `str`, got `array`",
    ),
    ("providers: {p: {type: openai, api_key: {SECRET: 1}}}\n" + ROUTED, "providers.p.api_key: expected `str | null`"),
]


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    status = main(["check", "--config", str(path)])
    return status, str(info.value)


@pytest.mark.parametrize("marker", MARKERS)
@pytest.mark.parametrize(("text", "expected"), FROM_THE_ENVIRONMENT)
def test_a_value_from_the_environment_is_never_echoed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    marker: str,
    text: str,
    expected: str,
) -> None:
    monkeypatch.setenv("SECRET", marker)
    status, message = check(tmp_path, text)
    captured = capsys.readouterr()
    assert status == 2
    assert expected in message
    assert expected in captured.err
    assert marker not in message + captured.out + captured.err


@pytest.mark.parametrize("marker", MARKERS)
@pytest.mark.parametrize(("text", "expected"), INLINE)
def test_a_key_typed_inline_is_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], marker: str, text: str, expected: str
) -> None:
    status, message = check(tmp_path, text.replace("SECRET", marker))
    captured = capsys.readouterr()
    assert status == 2
    assert expected in message
    assert marker not in message + captured.out + captured.err


@pytest.mark.parametrize("marker", MARKERS)
def test_check_of_a_valid_config_does_not_print_its_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    monkeypatch.setenv("SECRET", marker)
    path = tmp_path / "config.yaml"
    path.write_text(
        "providers:\n  p: {type: openai, api_key: '${SECRET}', headers: {X-Key: '${SECRET}'}}\n"
        f"  q: {{type: anthropic, api_key: {marker}}}\n" + ROUTED
    )
    assert main(["check", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    assert marker not in captured.out + captured.err


def healthcheck_command() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = (line for line in text.splitlines() if line.startswith("HEALTHCHECK"))
    return msgspec.json.decode(line.split(" CMD ", 1)[1], type=list[str])


def test_the_image_health_check_reads_the_port_setting() -> None:
    command = " ".join(healthcheck_command())
    assert "SWITCHBOARD_PORT" in command
    assert ":4000/" not in command


class _Live(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health/live" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads the exit status."""


@pytest.fixture
def live_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Live)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_healthcheck(port: int) -> int:
    program, *args = healthcheck_command()
    assert program == "python"
    env = {**os.environ, "SWITCHBOARD_PORT": str(port)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, check=False).returncode  # noqa: S603


def test_the_image_health_check_follows_switchboard_port(live_port: int) -> None:
    assert run_healthcheck(live_port) == 0
    assert run_healthcheck(_free_port()) != 0
