"""Model name → Route: the groups of targets to try, in order, the alias's own first, then those
of its fallback models (breadth-first, each alias once)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from router.config import Config, HedgeConfig, ModelConfig
from router.errors import ModelNotFound


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream model at one provider; the unit a breaker guards."""

    provider: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Group:
    """One alias's targets, balanced among themselves by its strategy."""

    alias: str
    strategy: str
    targets: tuple[Target, ...]
    weights: tuple[float, ...]


def _direct(alias: str, target: Target) -> Group:
    return Group(alias, "priority", (target,), (1.0,))


@dataclass(frozen=True, slots=True)
class Route:
    alias: str
    groups: tuple[Group, ...]
    fallbacks: tuple[str, ...] = ()
    hedge: HedgeConfig | None = None
    continue_on_failure: bool = False
    resumable: bool = False
    plan: tuple[Target, ...] = field(init=False)  # every target once, in configured order

    def __post_init__(self) -> None:
        plan: list[Target] = []
        for group in self.groups:
            plan.extend(t for t in group.targets if t not in plan)
        object.__setattr__(self, "plan", tuple(plan))

    @property
    def targets(self) -> tuple[Target, ...]:
        return self.groups[0].targets


def _group(alias: str, model: ModelConfig) -> Group:
    return Group(
        alias,
        model.strategy,
        tuple(Target(t.provider, t.model) for t in model.targets),
        tuple(t.weight for t in model.targets),
    )


def _groups(alias: str, models: Mapping[str, ModelConfig]) -> tuple[Group, ...]:
    seen: set[str] = set()
    groups: list[Group] = []
    queue = [alias]
    while queue:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        groups.append(_group(current, models[current]))
        queue.extend(models[current].fallbacks)
    return tuple(groups)


class Router:
    def __init__(self, config: Config) -> None:
        self._providers = frozenset(config.providers)
        self._routes = {
            alias: Route(
                alias,
                _groups(alias, config.models),
                tuple(model.fallbacks),
                model.hedge,
                model.continue_on_failure,
                model.resumable,
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
        # "." and ".." would be dot segments in providers that put the model in the URL path.
        if slash and upstream_model and upstream_model not in (".", "..") and provider in self._providers:
            return Route(model, (_direct(model, Target(provider, upstream_model)),))
        raise ModelNotFound(f"The model '{model}' does not exist or is not configured on this gateway.", param="model")
