"""``switchboard check`` and the CLI's contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from router.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_check_prints_the_route_table_and_unavailable_providers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert main(["check", "--config", str(ROOT / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert "demo             mock       available" in out
    assert "set OPENAI_API_KEY" in out
    assert "set ANTHROPIC_API_KEY" in out
    assert "set GEMINI_API_KEY" in out
    assert "gpt-4o-mini" in out
    assert "openai/gpt-4o-mini (unavailable)" in out
    assert "fallbacks: demo" in out


def test_check_marks_a_provider_available_once_its_key_is_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-SECRET")
    assert main(["check", "--config", str(ROOT / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert "openai           openai     available" in out
    assert "sk-live-SECRET" not in out


def test_check_fails_on_an_invalid_file_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: {p: {type: mock}}\nmodels: {m: {targets: [{provider: opnai, model: x}]}}\n")
    assert main(["check", "--config", str(bad)]) == 2
    assert "models.m.targets[0].provider: unknown provider 'opnai'" in capsys.readouterr().err


def test_config_defaults_to_the_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("providers: {p: {type: mock}}\nmodels: {only-here: {targets: [{provider: p, model: x}]}}\n")
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(path))
    assert main(["check"]) == 0
    assert "only-here" in capsys.readouterr().out


def test_config_defaults_to_config_yaml_in_the_working_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.yaml").write_text("models: {}\n")
    monkeypatch.delenv("SWITCHBOARD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 0
    assert "config.yaml: valid" in capsys.readouterr().out


def test_python_dash_m_router_is_the_same_cli() -> None:
    result = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "router", "check", "--config", str(ROOT / "config.yaml")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout


def test_serve_refuses_an_invalid_config_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: high}\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert "server.port" in capsys.readouterr().err
