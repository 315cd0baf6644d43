"""Upstreams that misbehave: redirects, answers that are not answers, bodies and events past
their caps, compression bombs. Each is a failed attempt (failover, breaker charge), never a
success and never unbounded memory."""

from __future__ import annotations

import contextlib
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import pytest
from aiohttp import web
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.config import settings_from_dict
from tests.conftest import fixture_bytes
from tests.fakes import serving_in_thread

COMPLETION = fixture_bytes("openai", "completion.json")
HELLO = [{"role": "user", "content": "hi"}]


def two_targets(bad: dict[str, Any], **resilience: Any) -> Any:
    """Alias `m`: the misbehaving provider first, a healthy OpenAI one second."""
    return settings_from_dict(
        {
            "providers": {"bad": bad, "good": {"type": "openai", "base_url": "http://good.test/v1", "api_key": "k"}},
            "models": {"m": {"targets": [{"provider": "bad", "model": "x"}, {"provider": "good", "model": "y"}]}},
            "resilience": {"retry": {"max_attempts": 1}, **resilience},
        },
        {},
    )


def routed(bad: httpx.Response) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "good.test":
            if request.headers.get("accept") == "text/event-stream":
                raw = fixture_bytes("openai", "stream_text.sse")
                return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})
            return httpx.Response(200, content=COMPLETION, headers={"content-type": "application/json"})
        return bad

    return httpx.MockTransport(handle)


async def failures_of(client: AsyncTestClient[Any], label: str) -> int:
    targets = (await client.get("/admin/targets")).json()["data"]
    return int(next(t for t in targets if t["target"] == label)["failures"])


PROVIDER_TYPES: dict[str, dict[str, Any]] = {
    "openai": {"type": "openai", "base_url": "http://bad.test/v1", "api_key": "k"},
    "anthropic": {"type": "anthropic", "base_url": "http://bad.test", "api_key": "k"},
    "gemini": {"type": "gemini", "base_url": "http://bad.test", "api_key": "k"},
}


@pytest.mark.parametrize("status", [301, 302, 307, 308, 304, 204, 101])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_redirect_or_other_non_2xx_answer_is_a_failed_attempt(status: int, stream: bool) -> None:
    """Regression: a 3xx counted as a success, and its body was returned as the answer."""
    bad = httpx.Response(
        status, content=COMPLETION, headers={"location": "http://elsewhere.test/", "content-type": "application/json"}
    )
    settings = two_targets(PROVIDER_TYPES["openai"])
    async with AsyncTestClient(app=create_app(settings, transport=routed(bad))) as client:
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": stream})
        assert response.status_code == 200
        assert response.headers["x-switchboard-target"] == "good/y"
        assert response.headers["x-switchboard-attempts"] == "2"
        assert await failures_of(client, "bad/x") == 1


DEEP = b"[" * 3000 + b"]" * 3000


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "openai"])
@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "x"}',
        b"{}",
        b'{"candidates": []}',
        b'{"candidates": [{}]}',
        b'{"type": "message"}',
        b'{"type": "message", "id": "msg_1"}',
        b'{"id":"x","type":"message","content":[],"choices":[],"candidates":[],"extra":' + DEEP + b"}",
    ],
    ids=["id-only", "empty", "no-candidates", "empty-candidate", "type-only", "no-content", "nested-too-deep"],
)
async def test_a_malformed_answer_from_any_provider_is_a_failed_attempt(kind: str, body: bytes) -> None:
    """Regression: `{"id": "x"}` from an Anthropic or Gemini target became an empty answer with
    finish_reason stop."""
    bad = httpx.Response(200, content=body, headers={"content-type": "application/json"})
    async with AsyncTestClient(app=create_app(two_targets(PROVIDER_TYPES[kind]), transport=routed(bad))) as client:
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
        assert response.status_code == 200
        assert response.headers["x-switchboard-target"] == "good/y"
        assert await failures_of(client, "bad/x") == 1


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "openai"])
async def test_a_stream_event_nested_too_deeply_is_a_failed_attempt(kind: str) -> None:
    """The decoder's recursion limit, reached by an upstream: a malformed event, not a 500."""
    event = b'data: {"type":"message_start","choices":[],"x":' + DEEP + b"}\n\n"
    if kind == "anthropic":
        event = b"event: message_start\n" + event
    bad = httpx.Response(200, content=event, headers={"content-type": "text/event-stream"})
    async with AsyncTestClient(app=create_app(two_targets(PROVIDER_TYPES[kind]), transport=routed(bad))) as client:
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": True})
        assert response.status_code == 200
        assert response.headers["x-switchboard-target"] == "good/y"
        assert await failures_of(client, "bad/x") == 1


async def test_an_answer_past_max_answer_bytes_is_a_failed_attempt() -> None:
    big = b'{"id":"x","object":"chat.completion","choices":[],"pad":"' + b"x" * 2_000_000 + b'"}'
    bad = httpx.Response(200, content=big, headers={"content-type": "application/json"})
    settings = two_targets(PROVIDER_TYPES["openai"], max_answer_bytes=1_000_000)
    async with AsyncTestClient(app=create_app(settings, transport=routed(bad))) as client:
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
        assert response.status_code == 200
        assert response.headers["x-switchboard-target"] == "good/y"
        assert await failures_of(client, "bad/x") == 1


async def test_a_stream_event_past_max_event_bytes_fails_the_stream_and_says_so() -> None:
    line = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 300_000 + b'"}}]}\n\n'
    bad = httpx.Response(200, content=line, headers={"content-type": "text/event-stream"})
    settings = settings_from_dict(
        {
            "providers": {"bad": PROVIDER_TYPES["openai"]},
            "models": {"m": {"targets": [{"provider": "bad", "model": "x"}]}},
            "resilience": {"retry": {"max_attempts": 1}, "max_event_bytes": 100_000},
        },
        {},
    )
    async with AsyncTestClient(app=create_app(settings, transport=routed(bad))) as client:
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": True})
    assert response.status_code == 502
    assert "larger than 100000 bytes" in response.json()["error"]["message"]


# ---- over real sockets: what the aiohttp transport reads ----------------------------------------


def gzip_bomb(size: int) -> bytes:
    """``size`` bytes of JSON-ish padding, gzipped (about 1,000 to 1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"0" * (1 << 20)
    parts = [packer.compress(b'{"pad":"')]
    parts.extend(packer.compress(block) for _ in range(size >> 20))
    parts.append(packer.compress(b'"}') + packer.flush())
    return b"".join(parts)


@contextlib.contextmanager
def bomb_server(body: bytes, error_status: int = 200, encoding: str = "gzip") -> Iterator[int]:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            status=error_status, body=body, headers={"content-encoding": encoding, "content-type": "application/json"}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    with serving_in_thread(app) as port:
        yield port


@contextlib.asynccontextmanager
async def real_client(port: int, **resilience: Any) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = settings_from_dict(
        {
            "providers": {"bad": {"type": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "api_key": "k"}},
            "models": {"m": {"targets": [{"provider": "bad", "model": "x"}]}},
            "resilience": {"retry": {"max_attempts": 1}, **resilience},
        },
        {},
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("status", [200, 500])
async def test_a_gzip_bomb_is_cut_at_the_cap_without_inflating_it(status: int) -> None:
    """Regression: a 204 KB gzip answer became a 200 MB body (+407 MB peak RSS, 298 MB kept).
    Inflated a slice at a time, the read stops at ``max_answer_bytes`` (or, for an error answer,
    at the little Switchboard reads of one)."""
    bomb = gzip_bomb(128 << 20)
    assert len(bomb) < 1 << 20
    with bomb_server(bomb, status) as port:
        async with real_client(port, max_answer_bytes=1 << 20) as client:
            tracemalloc.start()
            try:
                response = await client.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert response.status_code == 502, response.text
    if status == 200:
        assert "more than 1048576 bytes" in response.json()["error"]["message"]
    assert peak < 16 << 20, f"peak {peak >> 20} MB while reading a {len(bomb) >> 10} KB bomb"


@pytest.mark.parametrize(
    ("encoding", "wbits"), [("gzip", 16 + zlib.MAX_WBITS), ("deflate", zlib.MAX_WBITS), ("deflate", -zlib.MAX_WBITS)]
)
async def test_compressed_answers_within_the_cap_still_arrive_whole(encoding: str, wbits: int) -> None:
    """gzip, zlib-wrapped deflate (as the RFC says) and raw deflate (as some servers send)."""
    with bomb_server(zlib.compress(COMPLETION, wbits=wbits), encoding=encoding) as port:
        async with real_client(port) as client:
            response = await client.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})
    assert response.status_code == 200
    assert msgspec.json.decode(response.content) == msgspec.json.decode(COMPLETION)
