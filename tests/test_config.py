"""config.yaml → Settings: interpolation, defaults, and errors that name their path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.config import (
    AnthropicProviderConfig,
    ConfigError,
    GeminiProviderConfig,
    MockProviderConfig,
    OpenAIProviderConfig,
    default_config_path,
    interpolate,
    load_settings,
    settings_from_dict,
)

ROOT = Path(__file__).resolve().parent.parent


def minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "providers": {"demo": {"type": "mock"}},
        "models": {"demo": {"targets": [{"provider": "demo", "model": "echo"}]}},
    }
    data.update(extra)
    return data


def error_of(data: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, env or {})
    return str(info.value)


def test_bundled_config_is_valid_without_any_key() -> None:
    settings = load_settings(ROOT / "config.yaml", env={})
    config = settings.config
    assert isinstance(config.providers["demo"], MockProviderConfig)
    assert config.models["demo"].targets[0].provider == "demo"
    assert config.server.port == 4000
    openai = config.providers["openai"]
    assert isinstance(openai, OpenAIProviderConfig)
    assert openai.api_key == ""
    assert settings.key_vars["openai"] == ("OPENAI_API_KEY",)


def test_interpolation_with_defaults_and_values() -> None:
    env = {"KEY": "sk-1", "EMPTY": ""}
    out = interpolate({"a": "${KEY}", "b": ["x-${MISSING:-dflt}-y"], "c": "${EMPTY:-d}", "d": 3}, env)
    assert out == {"a": "sk-1", "b": ["x-dflt-y"], "c": "", "d": 3}


def test_unset_variable_without_default_names_variable_and_path() -> None:
    data = minimal(providers={"openai": {"type": "openai", "api_key": "${OPENAI_API_KEY}"}})
    message = error_of(data)
    assert "OPENAI_API_KEY" in message
    assert message.startswith("providers.openai.api_key:")


def test_interpolated_strings_are_coerced_to_the_field_type() -> None:
    settings = settings_from_dict(minimal(server={"port": "${PORT:-4100}"}), {})
    assert settings.config.server.port == 4100


def test_interpolation_cannot_inject_yaml_structure(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "providers:\n  o: {type: openai, api_key: '${K}'}\nmodels: {m: {targets: [{provider: o, model: x}]}}\n"
    )
    settings = load_settings(path, env={"K": "x\nmodels: {evil: {}}"})
    provider = settings.config.providers["o"]
    assert isinstance(provider, OpenAIProviderConfig)
    assert provider.api_key == "x\nmodels: {evil: {}}"
    assert list(settings.config.models) == ["m"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (minimal(servr={}), "servr: unknown key"),
        (minimal(server={"prot": 1}), "server.prot: unknown key"),
        (minimal(server={"port": "eighty"}), "server.port: expected `int`"),
        (minimal(server={"port": 70000}), "server.port:"),
        (
            {"providers": {"openai": {"type": "opnai"}}, "models": {}},
            "providers.openai.type: unknown provider type 'opnai'",
        ),
        ({"providers": {"o": {"base_url": "http://x"}}}, "providers.o.type: required key is missing"),
        ({"providers": {"o": {"type": "openai", "apikey": "k"}}}, "providers.o.apikey: unknown key"),
        (
            minimal(
                models={
                    "gpt-4o": {"targets": [{"provider": "demo", "model": "m"}, {"provider": "opnai", "model": "m"}]}
                }
            ),
            "models.gpt-4o.targets[1].provider: unknown provider 'opnai'",
        ),
        (
            minimal(models={"m": {"targets": [{"provider": "demo"}]}}),
            "models.m.targets[0].model: required key is missing",
        ),
        (minimal(models={"m": {"targets": []}}), "models.m.targets:"),
        (
            minimal(models={"m": {"targets": [{"provider": "demo", "model": "x"}], "fallbacks": ["nope"]}}),
            "models.m.fallbacks[0]: unknown model 'nope'",
        ),
        (
            minimal(models={"m": {"targets": [{"provider": "demo", "model": "x"}], "fallbacks": ["m"]}}),
            "models.m.fallbacks[0]: a model cannot fall back to itself",
        ),
        (minimal(resilience={"timeouts": {"idle_s": 0}}), "resilience.timeouts.idle_s:"),
        (minimal(resilience={"retry": {"max_attempts": "many"}}), "resilience.retry.max_attempts: expected `int`"),
        (minimal(resilience={"breaker": {"fail_maks": 3}}), "resilience.breaker.fail_maks: unknown key"),
        ({"providers": {"o": {"type": "openai", "base_url": "ftp://x"}}}, "providers.o.base_url: must start with http"),
        (["not", "a", "mapping"], "<root>: expected a mapping"),
        ({"providers": ["x"]}, "providers: expected a mapping"),
    ],
)
def test_mistakes_name_their_path(data: Any, expected: str) -> None:
    assert expected in error_of(data)


def test_resilience_section_is_parsed_with_its_names() -> None:
    data = minimal(
        resilience={
            "retry": {"max_attempts": 3, "initial_backoff_s": 0.1, "max_backoff_s": 2},
            "breaker": {"fail_max": 7, "reset_timeout_s": 12},
            "timeouts": {"connect_s": 1, "first_token_s": 2, "attempt_s": 3, "idle_s": 4, "total_s": 5},
        }
    )
    res = settings_from_dict(data, {}).config.resilience
    assert (res.retry.max_attempts, res.retry.initial_backoff_s, res.retry.max_backoff_s) == (3, 0.1, 2.0)
    assert (res.breaker.fail_max, res.breaker.reset_timeout_s) == (7, 12.0)
    t = res.timeouts
    assert (t.connect_s, t.first_token_s, t.attempt_s, t.idle_s, t.total_s) == (1, 2, 3, 4, 5)


def test_base_url_defaults_follow_the_official_sdks() -> None:
    data = {"providers": {"o": {"type": "openai"}, "a": {"type": "anthropic"}, "g": {"type": "gemini"}}}
    providers = settings_from_dict(data, {}).config.providers
    assert isinstance(providers["o"], OpenAIProviderConfig)
    assert providers["o"].base_url == "https://api.openai.com/v1"
    assert isinstance(providers["a"], AnthropicProviderConfig)
    assert providers["a"].base_url == "https://api.anthropic.com"
    assert isinstance(providers["g"], GeminiProviderConfig)
    assert providers["g"].base_url == "https://generativelanguage.googleapis.com"


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


NO_PROVIDERS = "<root>: no providers are configured (add a `providers:` section)"
NO_MODELS = "<root>: no models are configured (add a `models:` section)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [NO_PROVIDERS, NO_MODELS]),
        ("server: {port: 4000}\n", [NO_PROVIDERS, NO_MODELS]),
        ("providers: {p: {type: mock}}\nmodels: {}\n", [NO_MODELS]),
        ("models: {m: {targets: [{provider: p, model: x}]}}\n", [NO_PROVIDERS, "models.m.targets[0].provider:"]),
    ],
)
def test_a_file_that_could_serve_nothing_is_an_error(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert [e[: len(x)] for e, x in zip(info.value.errors, expected, strict=True)] == expected


def test_the_schema_alone_accepts_a_config_without_models() -> None:
    # Fragments (README examples, tests) are valid; only a file meant to be served must route something.
    assert settings_from_dict({"providers": {"p": {"type": "mock"}}}, {}).config.models == {}


def test_every_mistake_is_reported_at_once() -> None:
    data = {
        "servr": {},
        "server": {"prot": 1, "workers": 0},
        "providers": {"o": {"type": "opnai"}, "p": {"type": "openai", "apikey": "k", "breaker": {"fail_mx": 1}}},
        "models": {
            "gpt-4o": {
                "targets": [{"provider": "p", "model": ""}, {"provider": "pp", "model": "m"}],
                "fallbacks": ["gpt4o"],
                "strategy": "wieghted",
            },
            "empty": {"targets": []},
        },
        "resilience": {"retry": {"max_attempts": "many"}, "breaker": {"fail_maks": 3}},
    }
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, {})
    expected = [
        "servr: unknown key — did you mean 'server'?",
        "server.prot: unknown key — did you mean 'port'?",
        "server.workers: expected `int` >= 1",
        "providers.o.type: unknown provider type 'opnai' — did you mean 'openai'?",
        "providers.p.apikey: unknown key — did you mean 'api_key'?",
        "providers.p.breaker.fail_mx: unknown key — did you mean 'fail_max'?",
        "models.gpt-4o.targets[0].model: expected `str` of length >= 1",
        "models.gpt-4o.strategy: invalid value 'wieghted' — did you mean 'weighted'?",
        "models.empty.targets: expected `array` of length >= 1",
        "models.gpt-4o.targets[1].provider: unknown provider 'pp' — did you mean 'p'?",
        "models.gpt-4o.fallbacks[0]: unknown model 'gpt4o'",
        "resilience.retry.max_attempts: expected `int`, got `str`",
        "resilience.breaker.fail_maks: unknown key — did you mean 'fail_max'?",
    ]
    assert info.value.errors == expected
    assert str(info.value) == "\n".join(expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            minimal(models={"gpt-4o": {"targets": [{"provider": "dmeo", "model": "x"}]}}),
            "models.gpt-4o.targets[0].provider: unknown provider 'dmeo' — did you mean 'demo'?",
        ),
        (
            minimal(
                models={
                    "gpt-4o": {"targets": [{"provider": "demo", "model": "x"}]},
                    "m": {"targets": [{"provider": "demo", "model": "x"}], "fallbacks": ["gpt4o"]},
                }
            ),
            "models.m.fallbacks[0]: unknown model 'gpt4o' — did you mean 'gpt-4o'?",
        ),
        (
            {"providers": {"p": {"type": "zzz"}}},
            "providers.p.type: unknown provider type 'zzz'; expected one of openai, azure, anthropic, gemini, mock",
        ),
        (minimal(server={"prot": 1}), "server.prot: unknown key — did you mean 'port'?"),
    ],
)
def test_a_misspelling_gets_a_suggestion(data: Any, expected: str) -> None:
    assert error_of(data) == expected


def test_unset_variables_are_all_reported_once_each() -> None:
    data = minimal(server={"port": "${PORT}"})
    data["providers"]["o"] = {"type": "openai", "api_key": "${KEY}"}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, {})
    assert info.value.errors == [  # one line each: the empty stand-in is not reported again
        "providers.o.api_key: environment variable KEY is not set and has no default",
        "server.port: environment variable PORT is not set and has no default",
    ]


def test_a_yaml_error_names_line_and_column_but_never_the_source(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("providers:\n  o: {type: openai, api_key: sk-proj-SECRET\nmodels: {}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}: not valid YAML at line 3, column 7: expected ',' or '}}', but got ':'"


def test_a_yaml_message_that_quotes_the_source_is_redacted(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("providers:\n  o: {type: openai, api_key: *sk-proj-SECRET}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}: not valid YAML at line 2, column 30: found undefined alias '…'"


def test_default_config_path() -> None:
    assert default_config_path({"SWITCHBOARD_CONFIG": "/etc/sb.yaml"}) == "/etc/sb.yaml"
    assert default_config_path({}) == "config.yaml"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://:hunter2-secret@cache:6379/0", "state.url: Redis URL must specify one of the following schemes"),
        ("redis://:hunter2-secret@cache:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
        ("redis://:hunter2-secret@cache:6379/0?decode_responses=true", "decode_responses is not supported"),
        ("redis://:hunter2-secret@cache:6379/0?colour=blue", "unknown option 'colour'"),
        ("redis://:hunter2/secret@cache:6379/0", "the URL cannot be read (percent-encode"),
        ("redis://:hunter2#secret@cache:6379/0", "the URL cannot be read (percent-encode"),
    ],
)
def test_a_redis_url_the_client_cannot_use_as_is_is_refused_without_its_password(url: str, expected: str) -> None:
    message = error_of(minimal(state={"backend": "redis", "url": url}))
    assert expected in message
    assert "hunter2" not in message


def test_a_redis_url_with_options_is_accepted() -> None:
    url = "rediss://:pw@cache:6380/2?socket_keepalive=true&health_check_interval=30"
    assert settings_from_dict(minimal(state={"backend": "redis", "url": url}), {}).config.state.url == url
