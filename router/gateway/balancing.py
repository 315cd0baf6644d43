"""Load balancing: the order in which one alias's targets are tried for this request.

``priority`` keeps the configured order; ``weighted`` draws an order at random in proportion to
``weight``; ``least-busy`` puts the targets with fewest requests in flight first; ``latency`` puts
the lowest moving average of time to first token first, and now and then (``EXPLORE``) lets
another target go first so that a slow one can show it has recovered.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

from router.resilience.targets import TargetState

EXPLORE: Final = 0.1


def weighted_order(states: Sequence[TargetState], weights: Sequence[float], rng: random.Random) -> list[int]:
    # Efraimidis-Spirakis: sorting by u ** (1 / w) draws without replacement, proportionally to w.
    keys = [rng.random() ** (1.0 / w) for w in weights]
    return sorted(range(len(states)), key=keys.__getitem__, reverse=True)


def least_busy_order(states: Sequence[TargetState]) -> list[int]:
    return sorted(range(len(states)), key=lambda i: states[i].in_flight)


def latency_order(states: Sequence[TargetState], rng: random.Random) -> list[int]:
    # Unmeasured targets first (they must be measured once), then by EWMA.
    order = sorted(range(len(states)), key=lambda i: (states[i].ewma_s is not None, states[i].ewma_s or 0.0))
    if len(order) > 1 and rng.random() < EXPLORE:
        explorer = order.pop(rng.randrange(1, len(order)))
        order.insert(0, explorer)
    return order


def order(strategy: str, states: Sequence[TargetState], weights: Sequence[float], rng: random.Random) -> list[int]:
    """Indexes into ``states`` in the order to try them."""
    if len(states) < 2 or strategy == "priority":
        return list(range(len(states)))
    if strategy == "weighted":
        return weighted_order(states, weights, rng)
    if strategy == "least-busy":
        return least_busy_order(states)
    return latency_order(states, rng)


def seeded_random(seed: int | None = None) -> random.Random:
    return random.Random(seed)  # noqa: S311 - load balancing, not cryptography
