"""Model name → Route."""

from __future__ import annotations

import pytest

from router.config import settings_from_dict
from router.errors import ModelNotFound
from router.gateway.routing import Router, Target

CONFIG = settings_from_dict(
    {
        "providers": {"openai": {"type": "openai"}, "demo": {"type": "mock"}, "local": {"type": "openai"}},
        "models": {
            "gpt": {
                "targets": [{"provider": "openai", "model": "gpt-4o"}, {"provider": "local", "model": "llama"}],
                "fallbacks": ["cheap", "demo"],
            },
            "cheap": {"targets": [{"provider": "local", "model": "llama"}], "fallbacks": ["demo", "gpt"]},
            "demo": {"targets": [{"provider": "demo", "model": "echo"}]},
            "meta-llama/Llama-3": {"targets": [{"provider": "local", "model": "llama3"}]},
        },
    },
    {},
).config


def test_alias_resolves_to_its_targets() -> None:
    route = Router(CONFIG).resolve("gpt")
    assert route.targets == (Target("openai", "gpt-4o"), Target("local", "llama"))
    assert route.fallbacks == ("cheap", "demo")


def test_plan_lists_fallback_targets_in_order_once_even_with_cycles() -> None:
    plan = Router(CONFIG).resolve("gpt").plan
    assert plan == (Target("openai", "gpt-4o"), Target("local", "llama"), Target("demo", "echo"))
    assert Router(CONFIG).resolve("cheap").plan == (
        Target("local", "llama"),
        Target("demo", "echo"),
        Target("openai", "gpt-4o"),
    )


def test_provider_slash_model_routes_straight_to_the_provider() -> None:
    route = Router(CONFIG).resolve("openai/gpt-4.1")
    assert route.plan == (Target("openai", "gpt-4.1"),)
    assert route.plan[0].label == "openai/gpt-4.1"


def test_model_names_with_slashes_after_the_provider_are_kept_whole() -> None:
    assert Router(CONFIG).resolve("local/org/model:tag").plan == (Target("local", "org/model:tag"),)


def test_alias_with_a_slash_wins_over_provider_prefix() -> None:
    assert Router(CONFIG).resolve("meta-llama/Llama-3").plan == (Target("local", "llama3"),)


@pytest.mark.parametrize("name", ["gpt-5", "nope/gpt-4o", "openai/", "/gpt"])
def test_unknown_model_is_a_404_naming_it(name: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        Router(CONFIG).resolve(name)
    error = info.value
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert f"'{name}'" in error.message
