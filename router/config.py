"""config.yaml → a typed, validated ``Settings``.

``${VAR}`` and ``${VAR:-default}`` are replaced from the environment inside string values (never
in the YAML text, so a value cannot inject structure). Every mistake is a ``ConfigError`` whose
message starts with the path it concerns: ``models.gpt-4o.targets[1].provider: unknown provider 'opnai'``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
import yaml
from msgspec import Meta

_VAR: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MSGSPEC_AT: Final = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the path and the problem."""


class Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Config Structs: immutable, and a typo in a key is an error rather than a silent default."""


class ServerConfig(Strict, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 4000
    workers: PositiveInt = 1
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    max_header_bytes: PositiveInt = 64 * 1024  # a request line and headers past it: 431
    max_headers: PositiveInt = 100  # more header fields than this: 431
    header_timeout_s: PositiveFloat = 30.0  # a connection must send a request's headers within this
    body_timeout_s: PositiveFloat = 60.0  # ... and its body within this, once the headers are in
    write_timeout_s: PositiveFloat = 30.0  # a client that reads nothing for this long is cut off


class RetryConfig(Strict, frozen=True, kw_only=True):
    max_attempts: PositiveInt = 2
    initial_backoff_s: Annotated[float, Meta(ge=0)] = 0.5
    max_backoff_s: Annotated[float, Meta(ge=0)] = 8.0
    max_retry_after_s: Annotated[float, Meta(ge=0)] = 10.0


class BreakerConfig(Strict, frozen=True, kw_only=True):
    fail_max: PositiveInt = 5
    reset_timeout_s: PositiveFloat = 30.0
    half_open_max_calls: PositiveInt = 1
    success_threshold: PositiveInt = 1


class BreakerOverride(Strict, frozen=True, kw_only=True):
    """Per provider or per target: the fields set here replace the ``resilience.breaker`` defaults."""

    fail_max: PositiveInt | None = None
    reset_timeout_s: PositiveFloat | None = None
    half_open_max_calls: PositiveInt | None = None
    success_threshold: PositiveInt | None = None

    def apply(self, base: BreakerConfig) -> BreakerConfig:
        changes = {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}
        return msgspec.structs.replace(base, **changes) if changes else base


class TimeoutsConfig(Strict, frozen=True, kw_only=True):
    connect_s: PositiveFloat = 5.0
    first_token_s: PositiveFloat = 60.0
    attempt_s: PositiveFloat = 600.0
    idle_s: PositiveFloat = 120.0
    total_s: PositiveFloat = 900.0


class ResilienceConfig(Strict, frozen=True, kw_only=True):
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    max_concurrent: PositiveInt | None = None  # requests in flight in this process; above it, 429
    max_answer_bytes: PositiveInt = 32 * 1024 * 1024  # a non-streamed answer, after decompression
    max_event_bytes: PositiveInt = 4 * 1024 * 1024  # one event of an upstream stream


class HTTPProviderConfig(Strict, tag_field="type", frozen=True, kw_only=True):
    """Fields shared by providers reached over HTTP. ``api_key`` absent means the upstream needs
    none (a local vLLM or Ollama); present but empty means the provider is unavailable."""

    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = {}
    max_connections: PositiveInt = 1024
    breaker: BreakerOverride | None = None
    drop_unsupported_params: bool = True  # false: a request using one gets a 400 naming it


class OpenAIProviderConfig(HTTPProviderConfig, tag="openai", frozen=True, kw_only=True):
    base_url: str = "https://api.openai.com/v1"


class AnthropicProviderConfig(HTTPProviderConfig, tag="anthropic", frozen=True, kw_only=True):
    base_url: str = "https://api.anthropic.com"
    default_max_tokens: PositiveInt = 4096  # Anthropic requires max_tokens; used when the client sends none


class GeminiProviderConfig(HTTPProviderConfig, tag="gemini", frozen=True, kw_only=True):
    base_url: str = "https://generativelanguage.googleapis.com"


class AzureProviderConfig(HTTPProviderConfig, tag="azure", frozen=True, kw_only=True):
    """``base_url`` is the resource endpoint (``https://NAME.openai.azure.com``); a target's
    ``model`` is the deployment name."""

    api_version: str = "2024-10-21"


class MockProviderConfig(Strict, tag_field="type", tag="mock", frozen=True, kw_only=True):
    latency_s: Annotated[float, Meta(ge=0)] = 0.0
    token_delay_s: Annotated[float, Meta(ge=0)] = 0.0
    failure_rate: Annotated[float, Meta(ge=0, le=1)] = 0.0
    failure_status: Annotated[int, Meta(ge=400, le=599)] = 503
    seed: int | None = None
    breaker: BreakerOverride | None = None


ProviderConfig = (
    OpenAIProviderConfig | AnthropicProviderConfig | GeminiProviderConfig | AzureProviderConfig | MockProviderConfig
)
PROVIDER_TYPES: Final = ("openai", "azure", "anthropic", "gemini", "mock")


class TargetConfig(Strict, frozen=True, kw_only=True):
    provider: str
    model: Annotated[str, Meta(min_length=1)]
    weight: Annotated[float, Meta(gt=0)] = 1.0  # for `strategy: weighted`
    max_concurrent: PositiveInt | None = None  # a full target is skipped like an open one
    breaker: BreakerOverride | None = None


Strategy = Literal["priority", "weighted", "least-busy", "latency"]


class ModelConfig(Strict, frozen=True, kw_only=True):
    targets: Annotated[list[TargetConfig], Meta(min_length=1)]
    fallbacks: list[str] = []
    strategy: Strategy = "priority"


class Config(Strict, frozen=True, kw_only=True):
    server: ServerConfig = ServerConfig()
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    resilience: ResilienceConfig = ResilienceConfig()


@dataclass(frozen=True)
class Settings:
    """A validated config, and for each provider the environment variables its ``api_key``
    came from, so that an empty key can be reported by the variable's name."""

    config: Config
    key_vars: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def interpolate(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}``/``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set and has no default")

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, _join(path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _explain(exc: msgspec.ValidationError, prefix: str) -> str:
    match = _MSGSPEC_AT.match(str(exc))
    what, path = (match.group("what"), match.group("path") or "") if match else (str(exc), "")
    where = prefix + path if prefix else path.lstrip(".")
    if missing := re.fullmatch(r"Object missing required field `([^`]+)`", what):
        return f"{_join(where, missing.group(1))}: required key is missing"
    if unknown := re.fullmatch(r"Object contains unknown field `([^`]+)`", what):
        return f"{_join(where, unknown.group(1))}: unknown key"
    if where.endswith(".type") and what.startswith("Invalid value"):
        return f"{where}: {what.replace('Invalid value', 'unknown provider type')} (one of {', '.join(PROVIDER_TYPES)})"
    return f"{where or '<root>'}: {what[:1].lower()}{what[1:]}"


T = TypeVar("T")


def _convert(value: Any, kind: type[T], path: str) -> T:
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, path)) from None


def _mapping(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def settings_from_dict(data: Any, env: Mapping[str, str] | None = None) -> Settings:
    """Validate a parsed YAML document (before interpolation) against the schema."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"<root>: expected a mapping, got {type(data).__name__}")
    environ = os.environ if env is None else env
    raw: dict[str, Any] = interpolate(data, environ)
    unknown = sorted(set(raw) - set(Config.__struct_fields__))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key")
    providers: dict[str, ProviderConfig] = {
        name: _convert(value, ProviderConfig, f"providers.{name}")  # type: ignore[arg-type]
        for name, value in _mapping(raw, "providers").items()
    }
    models = {name: _convert(value, ModelConfig, f"models.{name}") for name, value in _mapping(raw, "models").items()}
    config = Config(
        server=_convert(raw.get("server") or {}, ServerConfig, "server"),
        providers=providers,
        models=models,
        resilience=_convert(raw.get("resilience") or {}, ResilienceConfig, "resilience"),
    )
    _check_references(config)
    key_vars: dict[str, tuple[str, ...]] = {}
    for name, value in _mapping(data, "providers").items():
        template = value.get("api_key") if isinstance(value, dict) else None
        if isinstance(template, str):
            key_vars[name] = tuple(m.group(1) for m in _VAR.finditer(template))
    return Settings(config=config, key_vars=key_vars)


def _check_references(config: Config) -> None:
    # A target (provider + model) has one breaker and one limit, whichever aliases list it.
    limits: dict[tuple[str, str], tuple[str, object]] = {}
    for alias, model in config.models.items():
        for i, target in enumerate(model.targets):
            path = f"models.{alias}.targets[{i}]"
            if target.provider not in config.providers:
                raise ConfigError(f"{path}.provider: unknown provider '{target.provider}'")
            own = (target.breaker, target.max_concurrent)
            if own == (None, None):
                continue
            first = limits.setdefault((target.provider, target.model), (path, own))
            if first[1] != own:
                raise ConfigError(
                    f"{path}: {target.provider}/{target.model} already has a different breaker or "
                    f"max_concurrent at {first[0]} (a target has one of each)"
                )
        for i, fallback in enumerate(model.fallbacks):
            if fallback not in config.models:
                raise ConfigError(f"models.{alias}.fallbacks[{i}]: unknown model '{fallback}'")
            if fallback == alias:
                raise ConfigError(f"models.{alias}.fallbacks[{i}]: a model cannot fall back to itself")
    for name, provider in config.providers.items():
        if isinstance(provider, HTTPProviderConfig) and not provider.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"providers.{name}.base_url: must start with http:// or https://")


def load_settings(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    return settings_from_dict(data, env)


def default_config_path(env: Mapping[str, str] | None = None) -> str:
    environ = os.environ if env is None else env
    return environ.get("SWITCHBOARD_CONFIG") or "config.yaml"
