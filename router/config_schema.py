"""The config's schema: immutable msgspec Structs, one per section, and the validated
``Settings``. ``router.config`` loads a file into them and reports every mistake."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]


class ConfigError(Exception):
    """The configuration cannot be used. ``errors`` lists every mistake found, each starting with
    the path it concerns; ``str()`` puts one per line."""

    def __init__(self, errors: str | Sequence[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


class Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Config Structs: immutable, and a typo in a key is an error rather than a silent default."""


class CORSConfig(Strict, frozen=True, kw_only=True):
    """Browser clients on other origins. Off unless ``allow_origins`` names some (``*``: any)."""

    allow_origins: tuple[Annotated[str, Meta(min_length=1)], ...] = ()
    allow_methods: tuple[str, ...] = ("GET", "POST", "PATCH", "DELETE", "OPTIONS")
    allow_headers: tuple[str, ...] = (
        "authorization",
        "content-type",
        "api-key",
        "x-api-key",
        "x-request-id",
        "anthropic-version",
        "openai-organization",
        "openai-project",
        "traceparent",
        "x-switchboard-resumable",
        "last-event-id",
    )
    allow_credentials: bool = False
    max_age_s: Annotated[int, Meta(ge=0)] = 600


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
    # On SIGTERM, how long requests in flight may go on finishing (the longest a request can take,
    # resilience.timeouts.total_s, by default); what is left then ends with an error event.
    drain_s: Annotated[float, Meta(ge=0)] = 900.0
    cors: CORSConfig = CORSConfig()


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
    # Every worker and replica opens, probes and closes each target together, through the state
    # backend (Redis); only in `resilience.breaker`: a provider or target cannot opt out.
    shared: bool = False


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
    max_ad_hoc_targets: PositiveInt = 1024  # `provider/model` targets not in the config, kept LRU


class HTTPProviderConfig(Strict, tag_field="type", frozen=True, kw_only=True):
    """Fields shared by providers reached over HTTP. ``api_key`` absent means the upstream needs
    none (a local vLLM or Ollama); present but empty means the provider is unavailable."""

    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = {}
    max_connections: PositiveInt = 1024
    breaker: BreakerOverride | None = None
    drop_unsupported_params: bool = True  # false: a request using one gets a 400 naming it


ResponsesAPI = Literal["native", "translate"]


class OpenAIProviderConfig(HTTPProviderConfig, tag="openai", frozen=True, kw_only=True):
    base_url: str = "https://api.openai.com/v1"
    # Ask for usage in every stream (and hide it from clients that did not): off for servers that
    # refuse `stream_options`.
    stream_usage: bool = True
    # /v1/responses: passed through (native) or through Chat Completions (translate). Unset:
    # native for OpenAI's own API, translate for other OpenAI-compatible servers.
    responses_api: ResponsesAPI | None = None

    @property
    def responses_native(self) -> bool:
        if self.responses_api is not None:
            return self.responses_api == "native"
        return self.base_url.rstrip("/").startswith("https://api.openai.com")


class AnthropicProviderConfig(HTTPProviderConfig, tag="anthropic", frozen=True, kw_only=True):
    base_url: str = "https://api.anthropic.com"
    default_max_tokens: PositiveInt = 4096  # Anthropic requires max_tokens; used when the client sends none


class GeminiProviderConfig(HTTPProviderConfig, tag="gemini", frozen=True, kw_only=True):
    base_url: str = "https://generativelanguage.googleapis.com"


class AzureProviderConfig(HTTPProviderConfig, tag="azure", frozen=True, kw_only=True):
    """``base_url`` is the resource endpoint (``https://NAME.openai.azure.com``); a target's
    ``model`` is the deployment name."""

    api_version: str = "2024-10-21"
    stream_usage: bool = True  # as for `openai`
    responses_api: ResponsesAPI = "native"  # Azure serves the Responses API itself

    @property
    def responses_native(self) -> bool:
        return self.responses_api == "native"


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


class ParamsPolicy(Strict, frozen=True, kw_only=True):
    """What the gateway decides about an alias's requests, whatever the client sends."""

    max_tokens: PositiveInt | None = None  # a cap on max_tokens / max_completion_tokens (set when absent)
    clamp: bool = False  # over the cap or a size limit: cut to fit instead of a 400
    system_prompt: str | None = None
    system_prompt_mode: Literal["prepend", "enforce"] = "prepend"  # enforce: the client's system turns go
    deny: list[Annotated[str, Meta(min_length=1)]] = []  # parameters a request may not use (400)
    force: dict[str, Any] = {}  # parameters set to these values, whatever the client sent
    max_messages: PositiveInt | None = None
    max_chars: PositiveInt | None = None  # characters of text content across the messages


# What a policy may not touch: the routing and the conversation have their own settings.
UNTOUCHABLE: Final = frozenset({"model", "messages", "stream", "stream_options"})


def policy_problems(params: ParamsPolicy) -> list[tuple[str, str]]:
    """(``force`` or ``deny``, why) for each parameter the policy may not touch."""
    return [
        (
            what,
            f"'{name}' cannot be {'forced' if what == 'force' else 'denied'} "
            "(use system_prompt, max_messages or max_chars for the conversation)",
        )
        for what, names in (("force", list(params.force)), ("deny", params.deny))
        for name in names
        if name in UNTOUCHABLE
    ]


class HedgeConfig(Strict, frozen=True, kw_only=True):
    """Hedged requests: when the attempt under way has not answered (a stream: its first event)
    after ``after_s``, or after the ``after_percentile``-th percentile of its target's observed
    time to answer, the next target starts beside it; the first to answer wins. At most
    ``max_extra`` extra attempts a request, and ``budget_pct`` percent of the alias's requests."""

    after_s: PositiveFloat | None = None
    after_percentile: Annotated[float, Meta(gt=0, lt=100)] | None = None
    max_extra: PositiveInt = 1
    budget_pct: Annotated[float, Meta(gt=0, le=100)] = 10.0


class ModelConfig(Strict, frozen=True, kw_only=True):
    targets: Annotated[list[TargetConfig], Meta(min_length=1)]
    fallbacks: list[str] = []
    strategy: Strategy = "priority"
    params: ParamsPolicy | None = None
    hedge: HedgeConfig | None = None
    # A committed chat stream whose upstream fails goes on at the next target from the text sent so far.
    continue_on_failure: bool = False
    resumable: bool = False  # every stream of this alias (else per request: x-switchboard-resumable: true)


NonNegative = Annotated[float, Meta(ge=0)]


class PriceConfig(Strict, frozen=True, kw_only=True):
    """USD per million tokens for one upstream model; cached input defaults to the input price."""

    input: NonNegative
    output: NonNegative
    cached_input: NonNegative | None = None


class AuthConfig(Strict, frozen=True, kw_only=True):
    # Empty: open mode (no keys checked; the admin API reads only, from loopback). Otherwise at
    # least 16 characters; surrounding whitespace (a newline from a secrets file) is not part of it.
    master_key: str = ""


MIN_MASTER_KEY: Final = 16


class DatabaseConfig(Strict, frozen=True, kw_only=True):
    url: str = "sqlite:///switchboard.db"  # a relative path is beside the config file


class StateConfig(Strict, frozen=True, kw_only=True):
    """Where rate limits are counted: this process's memory (exact for one worker) or Redis
    (shared by every worker and replica)."""

    backend: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    on_state_error: Literal["open", "closed"] = "open"  # Redis away: local limits, or refuse
    timeout_s: PositiveFloat = 0.25  # a Redis call slower than this counts as Redis away


BudgetPeriod = Literal["daily", "weekly", "monthly", "total"]
ModelPattern = Annotated[str, Meta(min_length=1, max_length=256)]


class ModelLimits(Strict, frozen=True, kw_only=True):
    """A key's own limits on the models one pattern names (counted together), beside its own."""

    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_parallel: PositiveInt | None = None


class KeyLimits(Strict, frozen=True, kw_only=True):
    models: list[ModelPattern] = []  # aliases, `provider/model` and globs; empty: every model
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_parallel: PositiveInt | None = None
    budget_usd: NonNegative | None = None
    budget_period: BudgetPeriod | None = None
    model_limits: dict[ModelPattern, ModelLimits] = {}  # pattern → limits; the first that matches counts
    params: ParamsPolicy | None = None  # the key's own server-controlled parameters, after the alias's


class DeclaredKey(KeyLimits, frozen=True, kw_only=True):
    """A key kept in config.yaml: its secret in an environment variable, or only its SHA-256."""

    name: Annotated[str, Meta(min_length=1, max_length=58, pattern=r"^[A-Za-z0-9._-]+$")]  # its id: cfg-<name>
    key_env: str | None = None
    key_hash: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")] | None = None


class ResponsesConfig(Strict, frozen=True, kw_only=True):
    """The Responses API's store: how long a response stays continuable (``previous_response_id``)
    and readable (``GET /v1/responses/{id}``)."""

    store_ttl_s: PositiveFloat = 30 * 86400.0


class StreamsConfig(Strict, frozen=True, kw_only=True):
    """How a stream is kept alive: an SSE comment after ``keepalive_s`` without an event (before
    the first one too, when failover goes on behind it); ``null`` turns it off. And how resumable
    streams are kept."""

    keepalive_s: PositiveFloat | None = 10.0
    # Resumable streams: how long after its client left (or after its end) a stream can be picked
    # up again, and the most its kept events may weigh (past it, it is no longer resumable).
    resume_window_s: PositiveFloat = 60.0
    resume_buffer_bytes: PositiveInt = 1024 * 1024


class Config(Strict, frozen=True, kw_only=True):
    server: ServerConfig = ServerConfig()
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    resilience: ResilienceConfig = ResilienceConfig()
    pricing: dict[str, PriceConfig] = {}  # upstream model → its price, over the price table
    auth: AuthConfig = AuthConfig()
    database: DatabaseConfig = DatabaseConfig()
    state: StateConfig = StateConfig()
    keys: list[DeclaredKey] = []
    responses: ResponsesConfig = ResponsesConfig()
    streams: StreamsConfig = StreamsConfig()


@dataclass(frozen=True)
class Settings:
    """A validated config, and for each provider the environment variables its ``api_key``
    came from, so that an empty key can be reported by the variable's name."""

    config: Config
    key_vars: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    base_dir: Path | None = None  # the config file's directory (a relative database path is beside it)
