"""Each configured provider made ready to call: its adapter, its transport, or why it can't be used."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from providers.anthropic import AnthropicProvider
from providers.base import Provider
from providers.gemini import GeminiProvider
from providers.mock import MockBehaviour, MockTransport
from providers.openai import AzureProvider, OpenAIProvider
from router.config import (
    AnthropicProviderConfig,
    AzureProviderConfig,
    GeminiProviderConfig,
    HTTPProviderConfig,
    MockProviderConfig,
    OpenAIProviderConfig,
    ProviderConfig,
    Settings,
)
from router.upstreams.transport import AiohttpTransport

MOCK_BASE_URL = "http://mock.switchboard.invalid/v1"


@dataclass(frozen=True, slots=True)
class Upstream:
    """A provider as the gateway sees it. ``unavailable`` says why it cannot be called, if so."""

    name: str
    kind: str
    adapter: Provider | None
    transport: httpx.AsyncBaseTransport | None
    unavailable: str | None = None
    drop_unsupported: bool = True


def _missing_key(name: str, key_vars: tuple[str, ...]) -> str:
    if key_vars:
        return f"provider '{name}' has no API key: set {' or '.join(key_vars)}"
    return f"provider '{name}' has an empty api_key"


def _adapter(name: str, cfg: HTTPProviderConfig) -> Provider:
    """The adapter for an HTTP provider."""
    if isinstance(cfg, AzureProviderConfig):
        return AzureProvider(
            name, cfg.base_url, cfg.api_key, cfg.api_version, cfg.headers, cfg.stream_usage, cfg.responses_native
        )
    if isinstance(cfg, AnthropicProviderConfig):
        return AnthropicProvider(name, cfg.base_url, cfg.api_key, cfg.default_max_tokens, cfg.headers)
    if isinstance(cfg, GeminiProviderConfig):
        return GeminiProvider(name, cfg.base_url, cfg.api_key, cfg.headers)
    assert isinstance(cfg, OpenAIProviderConfig)
    return OpenAIProvider(name, cfg.base_url, cfg.api_key, cfg.headers, cfg.stream_usage, cfg.responses_native)


def build_upstream(
    name: str,
    cfg: ProviderConfig,
    *,
    key_vars: tuple[str, ...] = (),
    connect_timeout_s: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Upstream:
    """``transport`` replaces the network for every HTTP provider (the tests' seam)."""
    if isinstance(cfg, MockProviderConfig):
        behaviour = MockBehaviour(
            latency_s=cfg.latency_s,
            token_delay_s=cfg.token_delay_s,
            failure_rate=cfg.failure_rate,
            failure_status=cfg.failure_status,
            seed=cfg.seed,
        )
        return Upstream(name, "mock", OpenAIProvider(name, MOCK_BASE_URL, None), MockTransport(behaviour))
    kind = str(cfg.__struct_config__.tag)
    adapter = _adapter(name, cfg)
    if cfg.api_key == "":
        return Upstream(name, kind, None, None, _missing_key(name, key_vars))
    http = transport or AiohttpTransport(max_connections=cfg.max_connections, connect_timeout_s=connect_timeout_s)
    return Upstream(name, kind, adapter, http, drop_unsupported=cfg.drop_unsupported_params)


def build_upstreams(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Mapping[str, Upstream]:
    config = settings.config
    return {
        name: build_upstream(
            name,
            cfg,
            key_vars=settings.key_vars.get(name, ()),
            connect_timeout_s=config.resilience.timeouts.connect_s,
            transport=transport,
        )
        for name, cfg in config.providers.items()
    }


async def close_upstreams(upstreams: Mapping[str, Upstream]) -> None:
    closed: set[int] = set()
    for upstream in upstreams.values():
        if upstream.transport is not None and id(upstream.transport) not in closed:
            closed.add(id(upstream.transport))
            await upstream.transport.aclose()
