"""Model name → Route: the targets to try, in order, including those of fallback models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from router.config import Config, ModelConfig
from router.errors import ModelNotFound


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream model at one provider; the unit a breaker will guard."""

    provider: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Route:
    """``plan`` is every target in attempt order: the alias's own, then each fallback's."""

    alias: str
    targets: tuple[Target, ...]
    fallbacks: tuple[str, ...]
    plan: tuple[Target, ...]


def _plan(alias: str, models: Mapping[str, ModelConfig]) -> tuple[Target, ...]:
    seen_aliases: set[str] = set()
    plan: list[Target] = []
    queue = [alias]
    while queue:  # breadth-first over fallbacks; a cycle or repeat is visited once
        current = queue.pop(0)
        if current in seen_aliases:
            continue
        seen_aliases.add(current)
        model = models[current]
        plan.extend(t for t in (Target(c.provider, c.model) for c in model.targets) if t not in plan)
        queue.extend(model.fallbacks)
    return tuple(plan)


class Router:
    def __init__(self, config: Config) -> None:
        self._providers = frozenset(config.providers)
        self._routes = {
            alias: Route(
                alias=alias,
                targets=tuple(Target(t.provider, t.model) for t in model.targets),
                fallbacks=tuple(model.fallbacks),
                plan=_plan(alias, config.models),
            )
            for alias, model in config.models.items()
        }

    @property
    def routes(self) -> Mapping[str, Route]:
        return self._routes

    def resolve(self, model: str) -> Route:
        """An alias wins; otherwise ``<provider>/<model>`` goes straight to that provider."""
        route = self._routes.get(model)
        if route is not None:
            return route
        provider, slash, upstream_model = model.partition("/")
        if slash and upstream_model and provider in self._providers:
            target = Target(provider, upstream_model)
            return Route(alias=model, targets=(target,), fallbacks=(), plan=(target,))
        raise ModelNotFound(f"The model '{model}' does not exist or is not configured on this gateway.", param="model")
