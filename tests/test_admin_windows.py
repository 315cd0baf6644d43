"""`GET /admin/targets`: each target's recent figures from the Outcomes (success rate, p50/p99
latency and time to first chunk over a sliding window)."""

from __future__ import annotations

import httpx
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.config import settings_from_dict
from router.telemetry.windows import SIZE, _ms
from tests.conftest import fixture_bytes

HELLO = [{"role": "user", "content": "hi"}]


def test_percentiles_are_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1 … 100 ms
    assert (_ms(values, 0.5), _ms(values, 0.99), _ms(values, 1.0)) == (50.0, 99.0, 100.0)
    assert _ms([0.007], 0.99) == 7.0


async def test_recent_figures_per_target() -> None:
    flaky_calls = 0

    def upstream(request: httpx.Request) -> httpx.Response:
        nonlocal flaky_calls
        flaky_calls += request.url.host == "flaky.test"
        if request.url.host == "flaky.test" and flaky_calls % 2:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        if request.headers.get("accept") == "text/event-stream":
            return httpx.Response(200, content=fixture_bytes("openai", "stream_text.sse"))
        return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))

    settings = settings_from_dict(
        {
            "providers": {
                "flaky": {"type": "openai", "base_url": "http://flaky.test/v1"},
                "steady": {"type": "openai", "base_url": "http://steady.test/v1"},
            },
            "models": {
                "m": {"targets": [{"provider": "flaky", "model": "x"}, {"provider": "steady", "model": "y"}]},
                "s": {"targets": [{"provider": "steady", "model": "y"}]},
            },
            "resilience": {"retry": {"max_attempts": 1}, "breaker": {"fail_max": 1000}},
        },
        {},
    )
    async with AsyncTestClient(app=create_app(settings, transport=httpx.MockTransport(upstream))) as http:
        for _ in range(10):
            await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
        await http.post("/v1/chat/completions", json={"model": "s", "messages": HELLO, "stream": True})
        targets = {t["target"]: t for t in (await http.get("/admin/targets")).json()["data"]}
    flaky, steady = targets["flaky/x"]["recent"], targets["steady/y"]["recent"]
    assert flaky["calls"] == 10
    assert flaky["success_rate"] == 0.5
    assert flaky["latency_ms"]["p50"] <= flaky["latency_ms"]["p99"]
    assert steady["calls"] == 5 + 1  # the 5 failed-over requests and the stream
    assert steady["success_rate"] == 1.0
    assert steady["ttft_ms"]["p50"] >= 0
    assert SIZE >= 100
