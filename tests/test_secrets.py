"""No provider key and no upstream address in any field a client or a log can see.

One test runs the app with marker keys of several shapes (not all look like ``sk-…``) and marker
host names, through every error path, streamed and not, for every provider, with upstreams that
echo what they were sent in every field of their errors; then greps every body, header and log
line for any piece of a marker."""

from __future__ import annotations

import logging
from typing import Any, Final

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.config import settings_from_dict
from tests.conftest import fixture_bytes

KEYS: Final = {
    "openai": "sk-proj-MARKERopenai0123456789abcdef",
    "azure": "ZXQMARKERazu7f3e9a0b1c2d3e4f5a6b7c8d",  # Azure keys are 32 hex-ish characters: no prefix
    "anthropic": "sk-ant-api03-MARKERanthropic_xyz-0123",
    "gemini": "AIzaSyMARKERgemini0123456789abcdef",
}
HOSTS: Final = {kind: f"hostmarker-{kind}.internal" for kind in KEYS}
EXTRA_HEADER: Final = "x-org-token"  # a key configured as a provider header: no recognisable shape
EXTRA_TOKEN: Final = "9f8eMARKERorg1c2d3e4f"
PORT: Final = 8123
AUTH_HEADERS: Final = ("authorization", "api-key", "x-api-key", "x-goog-api-key")
FIRST_EVENT: Final = {
    "openai": fixture_bytes("openai", "stream_text.sse").split(b"\n\n")[1] + b"\n\n",
    "azure": fixture_bytes("openai", "stream_text.sse").split(b"\n\n")[1] + b"\n\n",
    "anthropic": b"".join(e + b"\n\n" for e in fixture_bytes("anthropic", "stream_text.sse").split(b"\n\n")[:4]),
    "gemini": fixture_bytes("gemini", "stream_text.sse").split(b"\r\n\r\n")[0] + b"\r\n\r\n",
}


def echoed(request: httpx.Request) -> str:
    """Everything secret the upstream was sent: the key it got, and its own address."""
    key = next(request.headers[h] for h in AUTH_HEADERS if h in request.headers).removeprefix("Bearer ")
    extra = request.headers[EXTRA_HEADER].removeprefix("Bearer ")
    return f"key {key} at {request.url.host}:{request.url.port} ({request.url}), also {extra}"


def error_json(text: str) -> bytes:
    # Every field an error parser might read carries the secret.
    inner = {"message": text, "type": text, "param": text, "code": text, "status": text}
    return msgspec.json.encode({"type": "error", "error": inner})


def stream_error(kind: str, text: str) -> bytes:
    if kind == "anthropic":
        return b"event: error\ndata: " + error_json(text) + b"\n\n"
    return b"data: " + error_json(text) + b"\n\n"


def behaviour(name: str, kind: str, request: httpx.Request) -> httpx.Response:
    text = echoed(request)
    json_headers = {"content-type": "application/json"}
    sse_headers = {"content-type": "text/event-stream"}
    if name.startswith("status-"):
        return httpx.Response(int(name[7:]), content=error_json(text), headers=json_headers)
    if name == "text-straddling-cut":  # the key crosses character 200 of a non-JSON body
        key = text.split()[1]
        return httpx.Response(
            500, content=("x" * (200 - len(key) // 2) + text).encode(), headers={"content-type": "text/plain"}
        )
    if name == "text-long-key-first":
        return httpx.Response(502, content=text.encode() * 20, headers={"content-type": "text/html"})
    if name == "redirect":
        return httpx.Response(302, content=error_json(text), headers={"location": str(request.url), **json_headers})
    if name == "answer-not-json":
        return httpx.Response(200, content=text.encode(), headers=json_headers)
    if name == "stream-error-first":
        return httpx.Response(200, content=stream_error(kind, text), headers=sse_headers)
    if name == "stream-error-midway":
        return httpx.Response(200, content=FIRST_EVENT[kind] + stream_error(kind, text), headers=sse_headers)
    if name == "connect-refused":
        raise httpx.ConnectError(f"connection refused: {text}", request=request)
    if name == "read-error":
        raise httpx.ReadError(f"reset by peer while reading from {text}", request=request)
    raise AssertionError(name)


BEHAVIOURS: Final = [
    "status-400",
    "status-401",
    "status-403",
    "status-404",
    "status-422",
    "status-429",
    "status-500",
    "status-503",
    "status-529",
    "text-straddling-cut",
    "text-long-key-first",
    "redirect",
    "answer-not-json",
    "stream-error-first",
    "stream-error-midway",
    "connect-refused",
    "read-error",
]


def settings() -> Any:
    providers: dict[str, Any] = {}
    for kind in KEYS:
        base = f"http://{HOSTS[kind]}:{PORT}" + ("/v1" if kind == "openai" else "")
        providers[kind] = {
            "type": kind,
            "base_url": base,
            "api_key": f"${{KEY_{kind.upper()}}}",
            "headers": {EXTRA_HEADER: f"Bearer {EXTRA_TOKEN}"},
        }
    models = {kind: {"targets": [{"provider": kind, "model": f"{kind}-model"}]} for kind in KEYS}
    env = {f"KEY_{kind.upper()}": key for kind, key in KEYS.items()}
    return settings_from_dict(
        {
            "providers": providers,
            "models": models,
            "resilience": {"retry": {"max_attempts": 2}, "breaker": {"fail_max": 10_000}},
        },
        env,
    )


def leaks(text: str) -> list[str]:
    """Every marker, or a prefix of one long enough to matter, found in ``text``."""
    found = [k for k in KEYS.values() if k[:10] in text] + [h for h in HOSTS.values() if h in text.lower()]
    found += ["MARKER"] if "MARKER" in text else []
    found += ["hostmarker"] if "hostmarker" in text.lower() else []
    return found


async def test_no_key_or_upstream_address_reaches_a_client_or_a_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    current: dict[str, str] = {}

    def upstream(request: httpx.Request) -> httpx.Response:
        return behaviour(current["behaviour"], current["kind"], request)

    async def no_sleep(_: float) -> None:
        return None

    app = create_app(settings(), transport=httpx.MockTransport(upstream), sleep=no_sleep)
    seen: list[str] = []
    statuses: set[int] = set()
    async with AsyncTestClient(app=app) as client:
        for kind in KEYS:
            for name in BEHAVIOURS:
                for stream in (False, True):
                    current.update(behaviour=name, kind=kind)
                    body = {"model": kind, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                    response = await client.post("/v1/chat/completions", json=body)
                    statuses.add(response.status_code)
                    where = f"{kind} {name} stream={stream}"
                    seen.append(f"{where}: {response.status_code} {response.headers.multi_items()} {response.text}")
                    assert response.status_code != 500, where
        seen.append((await client.get("/admin/targets")).text)
        seen.append((await client.get("/health/ready")).text)
    assert {200, 400, 404, 422, 502} <= statuses  # the paths were really taken
    for line in seen:
        assert not leaks(line), line
    for record in caplog.records:
        text = record.getMessage() + (str(record.exc_info) if record.exc_info else "")
        assert not leaks(text), text
    assert not leaks(caplog.text)
    assert any("failover" in r.getMessage() for r in caplog.records), "the logs were not captured"
