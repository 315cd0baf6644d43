"""`GET /metrics`: Prometheus text from the Outcomes, exact counts, bounded labels, and one
scrape reporting every worker of a `--workers 2` server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from router.app import create_app
from router.config import settings_from_dict
from router.telemetry.metrics import SPECS, Series, Snapshot, merge
from tests.conftest import fixture_bytes
from tests.live import running_proxy

HELLO = [{"role": "user", "content": "hi"}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def upstream(request: httpx.Request) -> httpx.Response:
    if request.url.host == "down.test":
        return httpx.Response(503, json={"error": {"message": "down"}})
    if request.headers.get("accept") == "text/event-stream":
        return httpx.Response(200, content=fixture_bytes("openai", "stream_text.sse"))
    return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


async def test_metrics_count_what_the_outcomes_say() -> None:
    settings = settings_from_dict(
        {
            "providers": {
                "up": {"type": "openai", "base_url": "http://up.test/v1"},
                "down": {"type": "openai", "base_url": "http://down.test/v1"},
                "dark": {"type": "openai", "api_key": "${NOPE:-}"},
            },
            "models": {
                "m": {"targets": [{"provider": "down", "model": "x"}, {"provider": "up", "model": "gpt-4o-mini"}]},
                "dark": {"targets": [{"provider": "dark", "model": "x"}]},
            },
            "resilience": {"retry": {"max_attempts": 2, "initial_backoff_s": 0}, "breaker": {"fail_max": 100}},
        },
        {},
    )
    app = create_app(settings, transport=httpx.MockTransport(upstream))
    async with AsyncTestClient(app=app) as http:
        for _ in range(3):
            await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
        await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": True})
        await http.post("/v1/chat/completions", json={"model": "dark", "messages": HELLO})
        await http.post("/v1/chat/completions", json={"model": "nope", "messages": HELLO})
        for i in range(5):  # direct routes: the client names them, so they share one label
            await http.post("/v1/chat/completions", json={"model": f"up/invented-{i}", "messages": HELLO})
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(response.text)
    ok = (("alias", "m"), ("code", ""), ("status", "200"), ("target", "up/gpt-4o-mini"))
    assert got[("switchboard_requests_total", ok)] == 4
    assert (
        got[
            (
                "switchboard_requests_total",
                (("alias", "dark"), ("code", "no_target_available"), ("status", "503"), ("target", "")),
            )
        ]
        == 1
    )
    assert (
        got[
            (
                "switchboard_requests_total",
                (("alias", ""), ("code", "model_not_found"), ("status", "404"), ("target", "")),
            )
        ]
        == 1
    )
    # once per request that moved on from `down` (after its two tries), not once per try
    assert got[("switchboard_failovers_total", (("alias", "m"), ("reason", "UpstreamServerError")))] == 4
    assert got[("switchboard_retries_total", (("target", "down/x"),))] == 4
    assert got[("switchboard_skips_total", (("alias", "dark"), ("reason", "unavailable")))] == 1
    assert got[("switchboard_tokens_total", (("alias", "m"), ("target", "up/gpt-4o-mini"), ("type", "input")))] == 4 * 9
    cost = got[("switchboard_cost_usd_total", (("alias", "m"), ("target", "up/gpt-4o-mini")))]
    assert cost == pytest.approx(3 * (9 * 0.15e-6 + 7 * 0.6e-6), rel=0.5)  # the stream's usage differs a little
    genai = (
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "gpt-4o-mini"),
    )
    durations = [
        v
        for (name, labels), v in got.items()
        if name == "gen_ai_client_operation_duration_seconds_count" and set(genai) <= set(labels)
    ]
    assert sum(durations) == 4
    assert got[("switchboard_overhead_seconds_count", ())] == 6 + 5
    assert got[("switchboard_active_streams", ())] == 0
    assert got[("switchboard_breaker_state", (("target", "down/x"),))] == 0
    direct = (("alias", "direct"), ("code", ""), ("status", "200"), ("target", "up/other"))
    assert got[("switchboard_requests_total", direct)] == 5
    assert "invented" not in response.text
    assert "req_" not in response.text  # no request ids, no client input in labels


async def test_breaker_state_and_transitions_per_target() -> None:
    settings = settings_from_dict(
        {
            "providers": {
                "up": {"type": "openai", "base_url": "http://up.test/v1"},
                "down": {"type": "openai", "base_url": "http://down.test/v1"},
            },
            "models": {"m": {"targets": [{"provider": "down", "model": "x"}, {"provider": "up", "model": "y"}]}},
            "resilience": {"retry": {"max_attempts": 1}, "breaker": {"fail_max": 2, "reset_timeout_s": 600}},
        },
        {},
    )
    app = create_app(settings, transport=httpx.MockTransport(upstream))
    async with AsyncTestClient(app=app) as http:
        for _ in range(4):
            assert (await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})).status_code == 200
        got = samples((await http.get("/metrics")).text)
    assert got[("switchboard_breaker_state", (("target", "down/x"),))] == 2
    assert got[("switchboard_breaker_state", (("target", "up/y"),))] == 0
    assert got[("switchboard_breaker_transitions_total", (("state", "open"), ("target", "down/x")))] == 1
    assert not [k for k in got if k[0] == "switchboard_breaker_transitions_total" and ("target", "up/y") in k[1]]
    assert got[("switchboard_skips_total", (("alias", "m"), ("reason", "circuit_open")))] == 2


def test_merging_workers_sums_counters_and_histograms_and_keeps_the_worst_breaker() -> None:
    def snapshot(pid: int, requests: float, state: float, streams: float) -> Snapshot:
        return Snapshot(
            pid,
            {
                "switchboard_requests": Series(values={"m\x1fup/x\x1f200\x1f": requests}),
                "switchboard_breaker_state": Series(values={"up/x": state}),
                "switchboard_active_streams": Series(values={"": streams}),
                "switchboard_overhead_seconds": Series(buckets={"": [1.0] * 12 + [0.5, requests]}),
            },
        )

    merged = merge([snapshot(1, 2, 0, 1), snapshot(2, 5, 2, 3)])
    assert merged["switchboard_requests"].values == {"m\x1fup/x\x1f200\x1f": 7}
    assert merged["switchboard_breaker_state"].values == {"up/x": 2}
    assert merged["switchboard_active_streams"].values == {"": 4}
    assert merged["switchboard_overhead_seconds"].buckets[""][-1] == 7
    assert set(merged) == set(SPECS)


def test_one_scrape_reports_every_worker(tmp_path: Path) -> None:
    """Two workers share the port; whichever answers the scrape reports both workers' requests."""
    config = tmp_path / "config.yaml"
    config.write_text("providers: {demo: {type: mock}}\nmodels: {demo: {targets: [{provider: demo, model: echo}]}}\n")
    with running_proxy(config, {}, tmp_path / "proxy.log", workers=2) as base:
        workers: set[str] = set()
        sent = 0
        while len(workers) < 2 and sent < 400:
            # a new connection each time: the kernel spreads connections over the workers
            answer = httpx.post(f"{base}/v1/chat/completions", json={"model": "demo", "messages": HELLO}, timeout=10)
            assert answer.status_code == 200
            workers.add(answer.headers["x-request-id"][:20])  # req_ + the worker's prefix
            sent += 1
        assert len(workers) == 2, "every request went to one worker"
        time.sleep(2.5)  # each worker leaves its figures every second
        totals = set()
        answered_by = set()
        for _ in range(12):
            scrape = httpx.get(f"{base}/metrics", timeout=10)  # new connections: either worker answers
            answered_by.add(scrape.headers["x-request-id"][:20])
            totals.add(sum(v for (name, _), v in samples(scrape.text).items() if name == "switchboard_requests_total"))
        assert totals == {float(sent)}
