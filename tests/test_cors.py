"""CORS for browser clients: off by default; with origins configured, preflights are answered and
every answer, streams included, carries the headers a browser needs to hand it to the page."""

from __future__ import annotations

from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.config import settings_from_dict
from tests.conftest import fixture_bytes

ORIGIN = "https://chat.example.com"
HELLO = [{"role": "user", "content": "hi"}]


def upstream(request: httpx.Request) -> httpx.Response:
    if request.headers.get("accept") == "text/event-stream":
        return httpx.Response(200, content=fixture_bytes("openai", "stream_text.sse"))
    return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


def client(cors: dict[str, Any] | None) -> AsyncTestClient[Any]:
    config: dict[str, Any] = {
        "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1"}},
        "models": {"m": {"targets": [{"provider": "up", "model": "x"}]}},
    }
    if cors is not None:
        config["server"] = {"cors": cors}
    return AsyncTestClient(app=create_app(settings_from_dict(config, {}), transport=httpx.MockTransport(upstream)))


PREFLIGHT = {
    "origin": ORIGIN,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type",
}


async def test_cors_is_off_unless_origins_are_configured() -> None:
    async with client(None) as http:
        answer = await http.post(
            "/v1/chat/completions", json={"model": "m", "messages": HELLO}, headers={"origin": ORIGIN}
        )
        assert answer.status_code == 200
        assert "access-control-allow-origin" not in answer.headers


async def test_a_browser_on_an_allowed_origin_gets_its_answers_and_streams() -> None:
    async with client({"allow_origins": [ORIGIN]}) as http:
        preflight = await http.options("/v1/chat/completions", headers=PREFLIGHT)
        assert preflight.status_code in (200, 204)
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed
        assert "content-type" in allowed
        answer = await http.post(
            "/v1/chat/completions", json={"model": "m", "messages": HELLO}, headers={"origin": ORIGIN}
        )
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed
        assert "x-ratelimit-remaining-requests" in exposed
        stream = await http.post(
            "/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": True}, headers={"origin": ORIGIN}
        )
        assert stream.headers["access-control-allow-origin"] == ORIGIN
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.text.endswith("data: [DONE]\n\n")
        refused = await http.post(
            "/v1/chat/completions", json={"model": "nope", "messages": HELLO}, headers={"origin": ORIGIN}
        )
        assert refused.status_code == 404
        assert refused.headers["access-control-allow-origin"] == ORIGIN  # errors are readable too


async def test_another_origin_is_not_let_in() -> None:
    async with client({"allow_origins": [ORIGIN]}) as http:
        preflight = await http.options("/v1/chat/completions", headers={**PREFLIGHT, "origin": "https://evil.example"})
        assert preflight.headers.get("access-control-allow-origin") != "https://evil.example"
        answer = await http.post(
            "/v1/chat/completions", json={"model": "m", "messages": HELLO}, headers={"origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in answer.headers
