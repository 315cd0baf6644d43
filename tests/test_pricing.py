"""Cost in USD for every answer: `pricing:` overrides, then the genai-prices table; unknown is
None, never 0."""

from __future__ import annotations

from typing import Any

import genai_prices
import httpx
import pytest
from litestar.testing import AsyncTestClient

from providers.base import TokenUsage
from router.app import create_app
from router.config import PriceConfig, settings_from_dict
from router.gateway.outcome import Outcome
from router.gateway.pricing import Pricing
from tests.conftest import fixture_bytes

USAGE = TokenUsage(prompt=10_000, completion=500, cached=8_000)


def test_an_override_prices_input_cached_input_and_output() -> None:
    pricing = Pricing({"m": PriceConfig(input=2.0, output=8.0, cached_input=0.5)})
    assert pricing.cost("openai", "m", None, USAGE) == pytest.approx(2_000 * 2e-6 + 8_000 * 0.5e-6 + 500 * 8e-6)
    without_cache_price = Pricing({"m": PriceConfig(input=2.0, output=8.0)})
    assert without_cache_price.cost("mock", "m", None, USAGE) == pytest.approx(10_000 * 2e-6 + 500 * 8e-6)


def test_the_price_table_and_its_cache_discount() -> None:
    # gpt-4o-mini: $0.15 in, $0.075 cached in, $0.60 out per million (as the table has it)
    cost = Pricing().cost("openai", "gpt-4o-mini", None, USAGE)
    assert cost == pytest.approx(2_000 * 0.15e-6 + 8_000 * 0.075e-6 + 500 * 0.6e-6)
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=10_000, cache_read_tokens=8_000, output_tokens=500),
        "gpt-4o-mini",
        provider_id="openai",
    ).total_price
    assert cost == pytest.approx(float(expected))


def test_an_answer_s_dated_model_name_is_priced_when_the_target_s_is_not() -> None:
    cost = Pricing().cost("openai", "my-deployment-name", "gpt-4o-mini-2024-07-18", USAGE)
    assert cost == pytest.approx(Pricing().cost("openai", "gpt-4o-mini", None, USAGE) or 0)


@pytest.mark.parametrize(
    ("provider", "model", "usage"),
    [
        ("openai", "no-such-model-anywhere", USAGE),
        ("mock", "echo", USAGE),
        (None, "gpt-4o-mini", USAGE),
        ("openai", "gpt-4o-mini", None),
    ],
)
def test_unknown_is_none_never_zero(provider: str | None, model: str, usage: TokenUsage | None) -> None:
    assert Pricing().cost(provider, model, None, usage) is None


def test_prices_per_token_are_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = genai_prices.calc_price

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(genai_prices, "calc_price", counting)
    pricing = Pricing()
    pricing.cost("anthropic", "claude-haiku-4-5", None, USAGE)
    first = calls
    for _ in range(100):
        pricing.cost("anthropic", "claude-haiku-4-5", None, USAGE)
    assert calls == first  # the table is not asked again


def test_a_tiered_model_is_priced_by_the_table_for_each_answer() -> None:
    small = TokenUsage(prompt=1_000, completion=100)
    large = TokenUsage(prompt=300_000, completion=100)  # past Gemini 2.5 Pro's 200k tier
    pricing = Pricing()
    for usage in (small, large):
        expected = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=usage.prompt, output_tokens=usage.completion),
            "gemini-2.5-pro",
            provider_id="google",
        ).total_price
        assert pricing.cost("gemini", "gemini-2.5-pro", None, usage) == pytest.approx(float(expected))


async def test_the_outcome_carries_the_cost() -> None:
    settings = settings_from_dict(
        {
            "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1"}, "demo": {"type": "mock"}},
            "models": {
                "m": {"targets": [{"provider": "up", "model": "gpt-4o-mini"}]},
                "priced": {"targets": [{"provider": "up", "model": "house-model"}]},
                "demo": {"targets": [{"provider": "demo", "model": "echo"}]},
            },
            "pricing": {"house-model": {"input": 1, "output": 2}},
        },
        {},
    )
    body = fixture_bytes("openai", "completion.json")  # 9 prompt tokens, 7 completion tokens
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=body))
    seen: list[Outcome] = []
    app = create_app(settings, transport=transport)
    app.state.outcomes.listeners.append(seen.append)
    async with AsyncTestClient(app=app) as http:
        for model in ("m", "priced", "demo"):
            await http.post(
                "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
            )
    table, override, demo = seen
    assert table.cost_usd == pytest.approx(9 * 0.15e-6 + 7 * 0.6e-6)
    assert override.cost_usd == pytest.approx(9 * 1e-6 + 7 * 2e-6)
    assert demo.usage is not None
    assert demo.cost_usd is None  # the mock has no price: unknown, not free
