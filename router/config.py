"""config.yaml → a typed, validated ``Settings``.

``${VAR}`` and ``${VAR:-default}`` are replaced from the environment inside string values (never
in the YAML text, so a value cannot inject structure). Every mistake found is listed in one
``ConfigError``, each line starting with the path it concerns:
``models.gpt-4o.targets[1].provider: unknown provider 'opnai' — did you mean 'openai'?``.
A value that came from the environment or from a key field is never echoed: it may be a secret.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import types
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar, Union, get_args, get_origin

import msgspec
import yaml
from redis.asyncio import Redis

from router.config_schema import (
    MIN_MASTER_KEY,
    PROVIDER_TYPES,
    AnthropicProviderConfig,
    AuthConfig,
    AzureProviderConfig,
    BreakerConfig,
    BreakerOverride,
    BudgetPeriod,
    Config,
    ConfigError,
    DatabaseConfig,
    DeclaredKey,
    GeminiProviderConfig,
    HedgeConfig,
    HTTPProviderConfig,
    KeyLimits,
    MockProviderConfig,
    ModelConfig,
    OpenAIProviderConfig,
    Port,
    PositiveFloat,
    PositiveInt,
    PriceConfig,
    ProviderConfig,
    ResilienceConfig,
    ResponsesConfig,
    RetryConfig,
    ServerConfig,
    Settings,
    StateConfig,
    Strategy,
    StreamsConfig,
    Strict,
    TargetConfig,
    TimeoutsConfig,
    policy_problems,
)

__all__ = [
    "PROVIDER_TYPES",
    "AnthropicProviderConfig",
    "AuthConfig",
    "AzureProviderConfig",
    "BreakerConfig",
    "BreakerOverride",
    "BudgetPeriod",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DeclaredKey",
    "GeminiProviderConfig",
    "HTTPProviderConfig",
    "HedgeConfig",
    "KeyLimits",
    "MockProviderConfig",
    "ModelConfig",
    "OpenAIProviderConfig",
    "Port",
    "PositiveFloat",
    "PositiveInt",
    "PriceConfig",
    "ProviderConfig",
    "ResilienceConfig",
    "RetryConfig",
    "ServerConfig",
    "Settings",
    "StateConfig",
    "Strategy",
    "StreamsConfig",
    "Strict",
    "TargetConfig",
    "TimeoutsConfig",
    "default_config_path",
    "interpolate",
    "load_settings",
    "multiplied_limits",
    "settings_from_dict",
]

_VAR: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MSGSPEC_AT: Final = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
# Paths whose values are credentials: never printed, whether typed inline or interpolated.
_SECRET_PATH: Final = re.compile(r"(?:^|\.)(?:api_key|headers|master_key|url)(?:$|[.\[])")
_QUOTED: Final = re.compile(r"'[^']*'|\"[^\"]*\"")
_TOKEN: Final = re.compile(r"'(?:<[a-z ]+>|[^']{0,2})'")  # '<stream end>', ':', '\\t': the parser's own words


@dataclass
class _Report:
    """The mistakes found so far, and which values came from the environment (never echoed)."""

    origins: dict[str, tuple[str, ...]] = field(default_factory=dict)  # path → its ${VAR}s
    unset: set[str] = field(default_factory=set)  # paths already reported for an unset variable
    errors: list[str] = field(default_factory=list)

    def add(self, path: str, problem: str) -> None:
        if path not in self.unset:  # its empty stand-in would only add a second, confusing error
            self.errors.append(f"{path or '<root>'}: {problem}")

    def hidden(self, path: str) -> str | None:
        """Why the value at ``path`` must not be printed, or None if it was typed in the YAML."""
        if names := self.origins.get(path):
            return "from " + ", ".join(f"${{{name}}}" for name in names)
        return "not shown: a key field" if _SECRET_PATH.search(path) else None

    def shown(self, path: str, value: object) -> str:
        hidden = self.hidden(path)
        return f"({hidden})" if hidden else f"'{value}'"


def _interpolate(value: Any, env: Mapping[str, str], path: str, report: _Report) -> Any:
    if isinstance(value, str):
        if names := tuple(m.group(1) for m in _VAR.finditer(value)):
            report.origins[path] = names

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            report.add(path, f"environment variable {name} is not set and has no default")
            report.unset.add(path)
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, _join(path, str(k)), report) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]", report) for i, v in enumerate(value)]
    return value


def interpolate(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}``/``${VAR:-default}`` in every string of a YAML tree."""
    report = _Report()
    result = _interpolate(value, env, path, report)
    if report.errors:
        raise ConfigError(report.errors)
    return result


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _did_you_mean(word: object, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1) if isinstance(word, str) else []
    return f" — did you mean '{close[0]}'?" if close else ""


def _check_choice(value: object, choices: Sequence[str], path: str, what: str, report: _Report) -> bool:
    if value in choices:
        return True
    hint = "" if report.hidden(path) else _did_you_mean(value, choices)
    report.add(path, f"{what} {report.shown(path, value)}{hint or '; expected one of ' + ', '.join(choices)}")
    return False


def _explain(exc: msgspec.ValidationError, prefix: str, report: _Report) -> None:
    match = _MSGSPEC_AT.match(str(exc))
    what, path = (match.group("what"), match.group("path") or "") if match else (str(exc), "")
    where = prefix + path if prefix else path.lstrip(".")
    if missing := re.fullmatch(r"Object missing required field `([^`]+)`", what):
        report.add(_join(where, missing.group(1)), "required key is missing")
    elif unknown := re.fullmatch(r"Object contains unknown field `([^`]+)`", what):
        report.add(_join(where, unknown.group(1)), "unknown key")
    elif ("'" in what or '"' in what) and report.hidden(where):  # msgspec quotes the value it rejects
        report.add(where, f"invalid value {report.shown(where, None)}")
    else:
        report.add(where, f"{what[:1].lower()}{what[1:]}")


def _struct_in(hint: Any) -> type[Strict] | None:
    """The Struct a field holds, seen through ``Annotated[...]`` and ``... | None``."""
    origin = get_origin(hint)
    if origin is Annotated:
        return _struct_in(get_args(hint)[0])
    if origin in (Union, types.UnionType):
        found = [s for s in map(_struct_in, get_args(hint)) if s is not None]
        return found[0] if len(found) == 1 else None
    return hint if isinstance(hint, type) and issubclass(hint, Strict) else None


def _items_of(hint: Any) -> Any:
    """The item type of a ``list[...]`` field (through ``Annotated``), or None."""
    if get_origin(hint) is Annotated:
        return _items_of(get_args(hint)[0])
    return get_args(hint)[0] if get_origin(hint) is list else None


def _check_fields(value: dict[Any, Any], cls: type[Strict], path: str, report: _Report) -> None:
    fields = {info.name: info for info in msgspec.structs.fields(cls)}
    tag_field = cls.__struct_config__.tag_field
    for key in value:
        if key not in fields and key != tag_field:
            report.add(_join(path, str(key)), "unknown key" + _did_you_mean(str(key), fields))
    for name, info in fields.items():
        if name in value:
            _check(value[name], info.type, _join(path, name), report)
        elif info.default is msgspec.NODEFAULT and info.default_factory is msgspec.NODEFAULT:
            report.add(_join(path, name), "required key is missing")


def _check(value: Any, hint: Any, path: str, report: _Report) -> object:
    """Report every mistake under ``path`` (msgspec stops at the first), then convert."""
    before = len(report.errors)
    struct, items = _struct_in(hint), _items_of(hint)
    if struct is not None and isinstance(value, dict):
        _check_fields(value, struct, path, report)
    elif items is not None and isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, items, f"{path}[{i}]", report)
    elif get_origin(hint) is Literal and not _check_choice(value, get_args(hint), path, "invalid value", report):
        return None
    if len(report.errors) > before:
        return None
    try:
        return msgspec.convert(value, hint, strict=False)
    except msgspec.ValidationError as exc:
        _explain(exc, path, report)
        return None


S = TypeVar("S", bound=msgspec.Struct)


def _build(value: Any, kind: type[S], path: str, report: _Report) -> S | None:
    result = _check(value, kind, path, report)
    return result if isinstance(result, kind) else None


def _provider(name: str, value: Any, report: _Report) -> ProviderConfig | None:
    path = f"providers.{name}"
    if not isinstance(value, dict):
        report.add(path, f"expected a mapping, got {_kind(value)}")
        return None
    if "type" not in value:
        report.add(f"{path}.type", f"required key is missing (one of {', '.join(PROVIDER_TYPES)})")
        return None
    if not _check_choice(value["type"], PROVIDER_TYPES, f"{path}.type", "unknown provider type", report):
        return None
    kind = next(c for c in get_args(ProviderConfig) if c.__struct_config__.tag == value["type"])
    provider: ProviderConfig | None = _build(value, kind, path, report)
    if isinstance(provider, HTTPProviderConfig) and not provider.base_url.startswith(("http://", "https://")):
        report.add(f"{path}.base_url", "must start with http:// or https://")
    return provider


def _mapping(raw: dict[str, Any], key: str, report: _Report) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        report.add(key, f"expected a mapping, got {_kind(value)}")
        return {}
    return {str(k): v for k, v in value.items()}


def _check_sections(raw: dict[str, Any], report: _Report, servable: bool) -> None:
    for key in raw:
        if key not in Config.__struct_fields__:
            report.add(str(key), "unknown key" + _did_you_mean(str(key), Config.__struct_fields__))
    if not servable:
        return
    # Nothing could be served: say so rather than start a gateway that answers every request with 404.
    if not raw.get("providers"):
        report.add("", "no providers are configured (add a `providers:` section)")
    if not raw.get("models"):
        report.add("", "no models are configured (add a `models:` section)")


def multiplied_limits(workers: int, auth: AuthConfig, state: StateConfig) -> str | None:
    """Several workers counting keys' limits each in its own memory would multiply every limit
    by their number: refused, with what to set instead."""
    if workers > 1 and auth.master_key and state.backend == "memory":
        return (
            f"{workers} workers would each count rate limits in their own memory, multiplying every key's "
            "limits: set state.backend: redis (and state.url), or run one worker"
        )
    return None


def _check_state_url(url: str, report: _Report) -> None:
    """The Redis URL as the client will read it, its options included. The URL may hold a password,
    so only messages known not to repeat it are passed on. Redis's answers are read as bytes: a URL
    asking the client to decode them is refused."""
    try:
        client = Redis.from_url(url)
        # Builds a connection (no I/O), which checks the URL's options.
        client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    except ValueError as exc:
        known = str(exc).startswith(("Redis URL must specify", "Invalid value for"))
        report.add("state.url", str(exc) if known else _UNREADABLE_URL)
        return
    except TypeError as exc:
        option = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        report.add("state.url", f"unknown option {option.group(1)!r}" if option else _UNREADABLE_URL)
        return
    if "decode_responses" in client.connection_pool.connection_kwargs:
        report.add(
            "state.url", "decode_responses is not supported (Switchboard reads Redis's answers as bytes): remove it"
        )


_UNREADABLE_URL: Final = "the URL cannot be read (percent-encode any of / ? # @ : in the password)"


def _declared_keys(value: Any, report: _Report, env: Mapping[str, str]) -> list[DeclaredKey]:
    """Keys from config.yaml. One given by ``key_env`` is hashed here from its variable (the
    secret is not kept); one whose variable is unset or empty keeps no hash and is left out by the
    guard, with a warning."""
    if not isinstance(value, list):
        report.add("keys", f"expected a list, got {_kind(value)}")
        return []
    declared: list[DeclaredKey] = []
    names: set[str] = set()
    for i, item in enumerate(value):
        key = _build(item, DeclaredKey, f"keys[{i}]", report)
        if key is None:
            continue
        if (key.key_env is None) == (key.key_hash is None):
            report.add(f"keys[{i}]", "give exactly one of key_env (the variable holding the key) and key_hash")
        elif key.key_env is not None and (secret := env.get(key.key_env, "").strip()):
            key = msgspec.structs.replace(key, key_hash=hashlib.sha256(secret.encode()).hexdigest())
        if key.params is not None:
            for what, why in policy_problems(key.params):
                report.add(f"keys[{i}].params.{what}", why)
        if key.name in names:
            report.add(f"keys[{i}].name", f"'{key.name}' is declared twice")
        names.add(key.name)
        declared.append(key)
    return declared


def _collect(data: dict[str, Any], env: Mapping[str, str], report: _Report, servable: bool) -> Config | None:
    raw: dict[str, Any] = _interpolate(data, env, "", report)
    _check_sections(raw, report, servable)
    server = _build(raw.get("server") or {}, ServerConfig, "server", report)
    providers_raw, models_raw = _mapping(raw, "providers", report), _mapping(raw, "models", report)
    providers = {name: _provider(name, value, report) for name, value in providers_raw.items()}
    models = {name: _build(value, ModelConfig, f"models.{name}", report) for name, value in models_raw.items()}
    _check_references(models_raw, providers_raw.keys(), report)
    _check_limits(models, report)
    _check_policies(models, report)
    _check_hedges(models, report)
    _check_cors(server, report)
    resilience = _build(raw.get("resilience") or {}, ResilienceConfig, "resilience", report)
    pricing = {
        name: _build(value, PriceConfig, f"pricing.{name}", report)
        for name, value in _mapping(raw, "pricing", report).items()
    }
    auth = _build(raw.get("auth") or {}, AuthConfig, "auth", report)
    if auth is not None:
        auth = msgspec.structs.replace(auth, master_key=auth.master_key.strip())
        if 0 < len(auth.master_key) < MIN_MASTER_KEY:
            report.add("auth.master_key", f"too short: a master key needs at least {MIN_MASTER_KEY} characters")
    database = _build(raw.get("database") or {}, DatabaseConfig, "database", report)
    state = _build(raw.get("state") or {}, StateConfig, "state", report)
    keys = _declared_keys(raw.get("keys") or [], report, env)
    responses = _build(raw.get("responses") or {}, ResponsesConfig, "responses", report)
    streams = _build(raw.get("streams") or {}, StreamsConfig, "streams", report)
    if state is not None and state.backend == "redis":
        _check_state_url(state.url, report)
    if server is not None and auth is not None and state is not None:
        problem = multiplied_limits(server.workers, auth, state)
        if problem:
            report.add("state.backend", problem)
    if resilience is not None and state is not None and resilience.breaker.shared and state.backend != "redis":
        report.add(
            "resilience.breaker.shared",
            f"breakers are shared through the state backend, and state.backend is '{state.backend}': "
            "set state.backend: redis (and state.url), or leave shared off (breakers per worker)",
        )
    if (
        report.errors
        or server is None
        or resilience is None
        or auth is None
        or database is None
        or state is None
        or responses is None
        or streams is None
    ):
        return None
    return Config(
        responses=responses,
        streams=streams,
        auth=auth,
        database=database,
        state=state,
        keys=keys,
        server=server,
        providers={name: p for name, p in providers.items() if p is not None},
        models={name: m for name, m in models.items() if m is not None},
        resilience=resilience,
        pricing={name: p for name, p in pricing.items() if p is not None},
    )


def settings_from_dict(
    data: Any, env: Mapping[str, str] | None = None, *, servable: bool = False, base_dir: Path | None = None
) -> Settings:
    """Validate a parsed YAML document (before interpolation) against the schema, reporting every
    mistake at once. ``servable`` also requires a provider and a model (``check`` and ``serve``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"<root>: expected a mapping, got {_kind(data)}")
    report = _Report()
    config = _collect(data, os.environ if env is None else env, report, servable)
    if config is None:
        raise ConfigError(report.errors)
    key_vars: dict[str, tuple[str, ...]] = {}
    providers = data.get("providers")
    for name, value in (providers if isinstance(providers, dict) else {}).items():
        template = value.get("api_key") if isinstance(value, dict) else None
        if isinstance(template, str):
            key_vars[str(name)] = tuple(m.group(1) for m in _VAR.finditer(template))
    return Settings(config=config, key_vars=key_vars, base_dir=base_dir)


def _unknown_name(path: str, value: object, noun: str, names: Collection[str], report: _Report) -> None:
    hint = "" if report.hidden(path) else _did_you_mean(value, names)
    report.add(path, f"unknown {noun} {report.shown(path, value)}{hint}")


def _check_references(models: dict[str, Any], providers: Collection[str], report: _Report) -> None:
    """Targets name providers and fallbacks name models. Read from the raw mapping, so that a
    model with another mistake still has its references checked."""
    for alias, model in models.items():
        if not isinstance(model, dict):
            continue
        for i, target in enumerate(model.get("targets") or []):
            name = target.get("provider") if isinstance(target, dict) else None
            if isinstance(name, str) and name not in providers:
                _unknown_name(f"models.{alias}.targets[{i}].provider", name, "provider", providers, report)
        for i, fallback in enumerate(model.get("fallbacks") or []):
            path = f"models.{alias}.fallbacks[{i}]"
            if fallback == alias:
                report.add(path, "a model cannot fall back to itself")
            elif isinstance(fallback, str) and fallback not in models:
                _unknown_name(path, fallback, "model", [m for m in models if m != alias], report)


def _check_policies(models: Mapping[str, ModelConfig | None], report: _Report) -> None:
    for alias, model in models.items():
        params = model.params if model is not None else None
        if params is None:
            continue
        for what, why in policy_problems(params):
            report.add(f"models.{alias}.params.{what}", why)


def _check_hedges(models: Mapping[str, ModelConfig | None], report: _Report) -> None:
    for alias, model in models.items():
        hedge = model.hedge if model is not None else None
        if hedge is not None and hedge.after_s is None and hedge.after_percentile is None:
            report.add(
                f"models.{alias}.hedge", "needs after_s, after_percentile, or both (after_s until enough samples)"
            )


def _check_cors(server: ServerConfig | None, report: _Report) -> None:
    cors = server.cors if server is not None else None
    if cors is not None and cors.allow_credentials and "*" in cors.allow_origins:
        report.add(
            "server.cors", "allow_credentials with allow_origins '*' would let any site call with a user's cookies"
        )


def _check_limits(models: Mapping[str, ModelConfig | None], report: _Report) -> None:
    # A target (provider + model) has one breaker and one limit, whichever aliases list it.
    limits: dict[tuple[str, str], tuple[str, object]] = {}
    for alias, model in models.items():
        for i, target in enumerate(model.targets if model else []):
            own = (target.breaker, target.max_concurrent)
            if own == (None, None):
                continue
            path = f"models.{alias}.targets[{i}]"
            first = limits.setdefault((target.provider, target.model), (path, own))
            if first[1] != own:
                report.add(
                    path,
                    f"{target.provider}/{target.model} already has a different breaker or "
                    f"max_concurrent at {first[0]} (a target has one of each)",
                )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, never the source text: the offending line may hold a key."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    # PyYAML quotes source text in some messages ("found undefined alias 'sk-…'"): keep only its own words.
    problem = _QUOTED.sub(lambda m: m.group() if _TOKEN.fullmatch(m.group()) else "'…'", problem)
    return f"not valid YAML{where}: {problem}"


def load_settings(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a config file that is meant to be served: it needs a provider and a model."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: {_yaml_problem(exc)}") from None
    return settings_from_dict(data, env, servable=True, base_dir=file.resolve().parent)


def default_config_path(env: Mapping[str, str] | None = None) -> str:
    environ = os.environ if env is None else env
    return environ.get("SWITCHBOARD_CONFIG") or "config.yaml"
