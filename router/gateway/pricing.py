"""What an answer cost, in USD: ``pricing:`` overrides from the config first, then the price table
of ``genai-prices`` (a maintained library; it never fetches anything unless told to, and here it
is not). An unknown price is None, never 0.

The table's lookup costs about 100 µs, more than Switchboard's whole request, so each model's
prices per token are looked up once and kept; a model whose prices change with the prompt's size
(tiers) is priced by the table for every answer instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Final

import genai_prices

from providers.base import TokenUsage
from router.config import PriceConfig

log = logging.getLogger(__name__)

# Switchboard's provider types → the table's provider ids (mock has no price).
TABLE_PROVIDERS: Final = {"openai": "openai", "azure": "azure", "anthropic": "anthropic", "gemini": "google"}
_PROBE: Final = 1000  # tokens: well under any tier's start
_MAX_MODELS: Final = 4096  # models clients can name are bounded: direct routing takes any name


class UnitPrices:
    """USD per token; or, for a model whose prices have tiers, where to ask the table each time."""

    __slots__ = ("cached", "input", "output", "tiered")

    def __init__(self, input_: float, cached: float, output: float, tiered: tuple[str, str] | None = None) -> None:
        self.input = input_
        self.cached = cached
        self.output = output
        self.tiered = tiered

    def cost(self, usage: TokenUsage) -> float:
        cached = min(usage.cached, usage.prompt)
        return (usage.prompt - cached) * self.input + cached * self.cached + usage.completion * self.output


_UNSEEN: Final = UnitPrices(0.0, 0.0, 0.0)  # marker: not resolved yet


class Pricing:
    def __init__(self, overrides: Mapping[str, PriceConfig] | None = None) -> None:
        self._fixed = {model: _per_token(price) for model, price in (overrides or {}).items()}
        self._table: dict[tuple[str, str], UnitPrices | None] = {}
        # (provider, target model, answered model) → the prices that apply: one lookup per answer.
        self._memo: dict[tuple[str | None, str | None, str | None], UnitPrices | None] = {}

    def warm(self) -> None:
        """Load the price table now (it loads on first use, which would be some request's cost)."""
        _price("openai", "gpt-4o-mini", 1, 0, 0)

    def cost(
        self, provider: str | None, model: str | None, answered: str | None, usage: TokenUsage | None
    ) -> float | None:
        """USD for ``usage`` at the target's upstream model, else at the model the answer named."""
        if usage is None:
            return None
        key = (provider, model, answered)
        units = self._memo.get(key, _UNSEEN)
        if units is _UNSEEN:
            units = self._resolve(provider, (model, answered))
            if len(self._memo) < _MAX_MODELS:  # clients name models: the memo must stay bounded
                self._memo[key] = units
        if units is None:
            return None
        if units.tiered is not None:
            return _table_cost(units.tiered[0], units.tiered[1], usage)
        return units.cost(usage)

    def _resolve(self, provider: str | None, models: tuple[str | None, ...]) -> UnitPrices | None:
        for model in models:
            if not model:
                continue
            fixed = self._fixed.get(model)
            if fixed is not None:
                return fixed
            table_provider = TABLE_PROVIDERS.get(provider or "")
            if table_provider is None:
                continue
            units = self._units(table_provider, model)
            if units is not None:
                return units
        return None

    def _units(self, provider: str, model: str) -> UnitPrices | None:
        key = (provider, model)
        if key in self._table:
            return self._table[key]
        units = _probe(provider, model)
        if len(self._table) < _MAX_MODELS:
            self._table[key] = units
        return units


def _per_token(price: PriceConfig) -> UnitPrices:
    cached = price.cached_input if price.cached_input is not None else price.input
    return UnitPrices(price.input / 1e6, cached / 1e6, price.output / 1e6)


def _price(provider: str, model: str, prompt: int, cached: int, completion: int) -> Decimal | None:
    usage = genai_prices.Usage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion)
    try:
        return genai_prices.calc_price(usage, model.removeprefix("models/"), provider_id=provider).total_price
    except (LookupError, ValueError):
        return None


def _probe(provider: str, model: str) -> UnitPrices | None:
    """Per-token prices from the table, or None (no price), or a pointer back to it (tiers)."""
    input_ = _price(provider, model, _PROBE, 0, 0)
    if input_ is None:
        return None
    if _price(provider, model, _PROBE * 1000, 0, 0) != input_ * 1000:
        return UnitPrices(0.0, 0.0, 0.0, tiered=(provider, model))
    cached = _price(provider, model, _PROBE, _PROBE, 0)
    output = _price(provider, model, 0, 0, _PROBE)
    return UnitPrices(
        float(input_) / _PROBE,
        float(cached if cached is not None else input_) / _PROBE,
        float(output or 0) / _PROBE,
    )


def _table_cost(provider: str, model: str, usage: TokenUsage) -> float | None:
    price = _price(provider, model, usage.prompt, min(usage.cached, usage.prompt), usage.completion)
    return float(price) if price is not None else None
