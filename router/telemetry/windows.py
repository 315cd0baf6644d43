"""Recent figures per target for ``GET /admin/targets``: success rate, and p50/p99 of latency and
time to first chunk, over each target's last ``SIZE`` calls within ``WINDOW_S``. An Outcome
listener; memory is bounded by the number of targets (itself bounded) times ``SIZE``."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Final

from router.gateway.outcome import Outcome

SIZE: Final = 512
WINDOW_S: Final = 300.0


class _Call:
    __slots__ = ("at", "latency_s", "ok", "ttft_s")

    def __init__(self, at: float, ok: bool, latency_s: float, ttft_s: float | None) -> None:
        self.at = at
        self.ok = ok
        self.latency_s = latency_s
        self.ttft_s = ttft_s


_NOT_COUNTED: Final = frozenset({"skipped", "abandoned", "rejected", "overtaken"})  # say nothing of the target


class TargetWindows:
    """Only configured targets are kept: direct `provider/model` routes are the client's to name."""

    def __init__(self, targets: Iterable[str]) -> None:
        self._targets = frozenset(targets)
        self._calls: dict[str, deque[_Call]] = {}

    def retarget(self, targets: Iterable[str]) -> None:
        """After a config reload: the configured targets; a removed one's window goes with it."""
        self._targets = frozenset(targets)
        for target in [t for t in self._calls if t not in self._targets]:
            del self._calls[target]

    def __call__(self, outcome: Outcome) -> None:
        now = time.monotonic()
        for attempt in outcome.attempts:
            if attempt.result in _NOT_COUNTED or attempt.target not in self._targets:
                continue
            ok = attempt.result == "ok"
            ttft = outcome.ttft_s if ok and attempt.target == outcome.target else None
            calls = self._calls.get(attempt.target)
            if calls is None:
                calls = self._calls[attempt.target] = deque(maxlen=SIZE)
            calls.append(_Call(now, ok, attempt.duration_s, ttft))

    def figures(self, target: str) -> dict[str, object]:
        """The target's recent figures (``calls`` 0 when it has none in the window)."""
        horizon = time.monotonic() - WINDOW_S
        recent = [c for c in self._calls.get(target, ()) if c.at >= horizon]
        if not recent:
            return {"calls": 0, "window_s": WINDOW_S}
        latencies = sorted(c.latency_s for c in recent)
        ttfts = sorted(c.ttft_s for c in recent if c.ttft_s is not None)
        return {
            "calls": len(recent),
            "window_s": WINDOW_S,
            "success_rate": round(sum(c.ok for c in recent) / len(recent), 4),
            "latency_ms": {"p50": _ms(latencies, 0.5), "p99": _ms(latencies, 0.99)},
            "ttft_ms": {"p50": _ms(ttfts, 0.5), "p99": _ms(ttfts, 0.99)} if ttfts else None,
        }


def _ms(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile, in milliseconds."""
    index = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))
    return round(ordered[index] * 1000, 2)
