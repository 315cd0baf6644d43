"""Soak: 2,000 requests from 64 concurrent clients through the real server and transport, against
three upstreams on loopback: one fails 30% of the time, one hangs, one is healthy. No client may
see a failure, and nothing may leak: tasks, upstream requests, in-flight counts, connections."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from aiohttp import web

from router.app import create_app
from router.config import settings_from_dict
from router.gateway.failover import Gateway
from tests.conftest import fixture_bytes
from tests.fakes import serving_in_thread
from tests.live import LiveServer

REQUESTS = 2000
CLIENTS = 64


class Upstreams:
    def __init__(self) -> None:
        self.rng = random.Random(2026)
        self.calls: Counter[str] = Counter()
        self.active = 0
        self.peers: set[object] = set()  # client (port) of each connection the proxy opened

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        self.calls[kind] += 1
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername"))
        self.active += 1
        try:
            body = msgspec.json.decode(await request.read())
            if kind == "hang":
                await asyncio.sleep(30)
            if kind == "flaky" and self.rng.random() < 0.3:
                return web.Response(status=500, body=b'{"error":{"message":"flaky"}}')
            if body.get("stream"):
                return web.Response(body=fixture_bytes("openai", "stream_text.sse"), content_type="text/event-stream")
            return web.Response(body=fixture_bytes("openai", "completion.json"), content_type="application/json")
        finally:
            self.active -= 1


@pytest.fixture
def upstreams() -> Iterator[tuple[Upstreams, int]]:
    fake = Upstreams()
    app = web.Application()
    app.router.add_post("/{kind}/v1/chat/completions", fake.handle)
    with serving_in_thread(app) as port:
        yield fake, port


def established_to(port: int) -> int:
    """TCP connections in ESTABLISHED state whose remote end is 127.0.0.1:port."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


@pytest.mark.timeout(120)
async def test_soak_with_a_flaky_and_a_hanging_target(upstreams: tuple[Upstreams, int]) -> None:
    fake, port = upstreams
    providers = {
        kind: {"type": "openai", "base_url": f"http://127.0.0.1:{port}/{kind}/v1", "api_key": "sk-soak"}
        for kind in ("flaky", "hang", "healthy")
    }
    settings = settings_from_dict(
        {
            "providers": providers,
            "models": {"m": {"targets": [{"provider": k, "model": "x"} for k in ("flaky", "hang", "healthy")]}},
            "resilience": {
                "retry": {"max_attempts": 2, "initial_backoff_s": 0.001, "max_backoff_s": 0.005},
                "breaker": {"fail_max": 3, "reset_timeout_s": 1},
                # Generous for the healthy target on a loaded 2-core machine; the hang costs this much.
                "timeouts": {"attempt_s": 1, "first_token_s": 1},
            },
        },
        {},
    )
    app = create_app(settings)
    async with LiveServer(app) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        gateway: Gateway = app.state.gateway
        await asyncio.sleep(0.1)
        tasks_before = len(asyncio.all_tasks())
        outcomes: Counter[int] = Counter()
        failures: list[str] = []
        queue = list(range(REQUESTS))

        async def worker() -> None:
            while queue:
                n = queue.pop()
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": n % 2 == 0}
                response = await client.post("/v1/chat/completions", json=body)
                outcomes[response.status_code] += 1
                if response.status_code != 200:
                    failures.append(response.text)
                if response.status_code == 200 and n % 2 == 0:
                    assert response.content.endswith(b"data: [DONE]\n\n")

        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        await asyncio.sleep(0.3)  # let cancelled upstream requests finish closing
        tasks_after = len(asyncio.all_tasks())
        states = {s["target"]: s for s in gateway.snapshot()}

    assert outcomes == {200: REQUESTS}, failures[:3]
    assert fake.calls["flaky"] > REQUESTS // 10  # the first choice whenever its breaker is closed
    assert 3 <= fake.calls["hang"] < 200  # tried until its breaker opened, then probed now and then
    assert fake.calls["healthy"] > 0
    assert fake.active == 0, "an upstream request outlived its client request"
    assert tasks_after == tasks_before
    assert all(s["in_flight"] == 0 for s in states.values())
    assert gateway.bulkhead.in_flight == 0
    assert established_to(port) == 0  # the server and its pools are closed: nothing left open


async def test_connections_are_pooled_not_piled_up(upstreams: tuple[Upstreams, int]) -> None:
    fake, port = upstreams
    settings = settings_from_dict(
        {
            "providers": {"h": {"type": "openai", "base_url": f"http://127.0.0.1:{port}/healthy/v1", "api_key": "k"}},
            "models": {"m": {"targets": [{"provider": "h", "model": "x"}]}},
        },
        {},
    )
    app = create_app(settings)
    async with LiveServer(app) as server, httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(5):
            await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(16)))
        open_now = established_to(port)
    assert fake.calls["healthy"] == 80
    assert len(fake.peers) <= 16  # 80 requests over at most 16 connections: reused across rounds
    assert open_now <= 16
