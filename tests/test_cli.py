"""``switchboard check`` and the CLI's contract."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from router.cli import SIGPIPE_STATUS, main

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
    (tmp_path / "config.yaml").write_text(
        "providers: {p: {type: mock}}\nmodels: {m: {targets: [{provider: p, model: x}]}}\n"
    )
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


MANY_MISTAKES = """\
server: {prot: 4000}
providers:
  openai: {type: opnai}
  demo: {type: mock}
models:
  m: {targets: [{provider: dmeo, model: x}], fallbacks: [n]}
"""
EVERY_MISTAKE = [
    "server.prot: unknown key — did you mean 'port'?",
    "providers.openai.type: unknown provider type 'opnai' — did you mean 'openai'?",
    "models.m.targets[0].provider: unknown provider 'dmeo' — did you mean 'demo'?",
    "models.m.fallbacks[0]: unknown model 'n'",
]


@pytest.mark.parametrize("command", ["check", "serve"])
def test_every_mistake_is_printed_one_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MANY_MISTAKES)
    assert main([command, "--config", str(bad)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["switchboard: invalid config (4 errors):", *(f"  {e}" for e in EVERY_MISTAKE)]


@pytest.mark.parametrize("text", ["", "server: {port: 4000}\n", "providers: {}\nmodels: {}\n"])
def test_check_refuses_a_config_that_serves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert main(["check", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "valid" not in captured.out
    assert "<root>: no providers are configured" in captured.err
    assert "<root>: no models are configured (add a `models:` section)" in captured.err


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"switchboard {metadata.version('switchboard')}\n"


def test_version_without_package_metadata(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == "switchboard 0+unknown\n"


def test_a_reader_that_went_away_is_not_a_traceback() -> None:
    # `switchboard check | head -1`, made deterministic: the reading end is closed before we start.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "router", "check", "--config", str(ROOT / "config.yaml")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            cwd=ROOT,
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == SIGPIPE_STATUS
