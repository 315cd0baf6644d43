"""The aiohttp-backed httpx transport against real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from providers.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from router.upstreams.transport import AiohttpTransport, upstream_failure
from tests.fakes import bound_port


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def ok(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=b"echo:" + body, headers={"x-up": "1"})

    async def drop(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"partial")
        assert request.transport is not None
        request.transport.close()  # dies mid-body
        return response

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/drop", drop)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = bound_port(site)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_round_trip_keeps_body_status_and_headers(server: str) -> None:
    transport = AiohttpTransport()
    try:
        request = httpx.Request("POST", f"{server}/ok", content=b"hi", headers={"authorization": "Bearer k"})
        response = await transport.handle_async_request(request)
        assert response.status_code == 200
        assert await response.aread() == b"echo:hi"
        assert response.headers["x-up"] == "1"
        await response.aclose()
    finally:
        await transport.aclose()


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = AiohttpTransport()
    try:
        with pytest.raises(httpx.ConnectError) as info:
            await transport.handle_async_request(httpx.Request("POST", f"http://127.0.0.1:{port}/x", content=b"{}"))
        assert isinstance(upstream_failure(info.value, "p"), UpstreamConnectError)
    finally:
        await transport.aclose()


async def test_body_cut_mid_way_is_a_protocol_error(server: str) -> None:
    transport = AiohttpTransport()
    try:
        response = await transport.handle_async_request(httpx.Request("POST", f"{server}/drop", content=b"{}"))
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await response.aread()
        assert isinstance(upstream_failure(info.value, "p"), UpstreamProtocolError)
        await response.aclose()
    finally:
        await transport.aclose()


def test_failure_messages_never_carry_the_exception_text() -> None:
    request = httpx.Request("POST", "http://secret-host.internal/v1")
    for exc in (
        httpx.ConnectError("secret-host.internal refused", request=request),
        httpx.ReadTimeout("secret-host.internal", request=request),
        httpx.ReadError("secret-host.internal", request=request),
    ):
        error = upstream_failure(exc, "prov")
        assert "secret-host" not in error.message
        assert "prov" in error.message
    assert isinstance(upstream_failure(httpx.ReadTimeout("t", request=request), "p"), UpstreamTimeout)


async def test_aclose_is_idempotent() -> None:
    transport = AiohttpTransport()
    await transport.aclose()
    await transport.aclose()
    await asyncio.sleep(0)
