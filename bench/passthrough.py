"""Bare pass-throughs on Switchboard's server stack (Litestar, uvicorn, uvloop, httptools).

No parsing, no routing: bytes in, bytes out. They are the reference subjects the benchmark
compares Switchboard with; one per way of making the upstream call:
``httpx`` (AsyncClient, default transport), ``httpx-aiohttp`` (AsyncClient over httpx-aiohttp's
AiohttpTransport), ``direct`` (httpx.Request straight to that transport) and ``aiohttp`` (raw).
Run: ``BENCH_CLIENT=direct uvicorn --factory bench.passthrough:create``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from litestar import Litestar, Request, Response, post
from litestar.response import Stream

Opened = tuple[int, AsyncIterator[bytes], Callable[[], Awaitable[object]]]
POOL = httpx.Limits(max_connections=2048, max_keepalive_connections=2048)
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}


def opener(kind: str) -> Callable[[str, bytes], Awaitable[Opened]]:
    if kind == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2048))

        async def raw(url: str, body: bytes) -> Opened:
            r = await session.post(url, data=body, headers=HEADERS)
            return r.status, r.content.iter_any(), lambda: _release(r)

        return raw
    if kind == "direct":
        transport = AiohttpTransport(limits=POOL)

        async def direct(url: str, body: bytes) -> Opened:
            r = await transport.handle_async_request(httpx.Request("POST", url, content=body, headers=HEADERS))
            return r.status_code, r.aiter_raw(), r.aclose

        return direct
    client = httpx.AsyncClient(
        limits=POOL, transport=AiohttpTransport(limits=POOL) if kind == "httpx-aiohttp" else None
    )

    async def via_client(url: str, body: bytes) -> Opened:
        r = await client.send(client.build_request("POST", url, content=body, headers=HEADERS), stream=True)
        return r.status_code, r.aiter_raw(), r.aclose

    return via_client


async def _release(response: aiohttp.ClientResponse) -> None:
    response.release()


def create() -> Litestar:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # AsyncClient logs every request at INFO
    upstream = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8089")
    send = opener(os.environ.get("BENCH_CLIENT", "direct"))

    @post("/{kind:str}/v1/chat/completions")
    async def relay(request: Request[Any, Any, Any], kind: str) -> Response[bytes] | Stream:
        body = await request.body()
        status, chunks, close = await send(f"{upstream}/{kind}/v1/chat/completions", body)
        if b'"stream":true' in body:

            async def relay_stream() -> AsyncIterator[bytes]:
                try:
                    async for chunk in chunks:
                        yield chunk
                finally:
                    await close()

            return Stream(relay_stream(), status_code=status, media_type="text/event-stream")
        data = b"".join([chunk async for chunk in chunks])
        await close()
        return Response(data, status_code=status, media_type="application/json")

    return Litestar(route_handlers=[relay], openapi_config=None)
