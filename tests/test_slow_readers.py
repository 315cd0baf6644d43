"""A client that stops reading a stream: backpressure holds a bounded buffer, and after
``server.write_timeout_s`` (or the request's ``total_s``) both sides are closed. The real server
(``python -m router serve``) against an upstream that streams as fast as it is read."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.config import ServerConfig, settings_from_dict
from tests.fakes import running_upstream
from tests.live import LiveServer, chat_scope, running_proxy

CONFIG = """
server: {{write_timeout_s: {write_s}}}
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{port}/v1"}}
models:
  flood: {{targets: [{{provider: up, model: flood}}]}}
resilience:
  timeouts: {{total_s: {total_s}, idle_s: 30}}
"""
REQUEST = b'{"model":"flood","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def stall(base: str) -> socket.socket:
    """Open a stream, read its first bytes, then read nothing more."""
    port = int(base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65_536)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(REQUEST), REQUEST)
    )
    sock.settimeout(10)
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Drain what was buffered; True once the server has closed its end."""
    sock.settimeout(5)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize(
    ("write_s", "total_s", "within"),
    [(0.5, 60, 5.0), (30, 1.5, 5.0)],
    ids=["write_timeout", "total_deadline"],
)
def test_a_client_that_stops_reading_is_cut_off_and_the_upstream_closed(
    tmp_path: Path, write_s: float, total_s: float, within: float
) -> None:
    """Regression: an unread stream held its upstream, generation and bulkhead slot past
    ``total_s`` (60 s with ``total_s: 30``)."""
    with running_upstream() as fake:
        config = tmp_path / "config.yaml"
        config.write_text(CONFIG.format(port=fake.port, write_s=write_s, total_s=total_s))
        with running_proxy(config, {}, tmp_path / "proxy.log") as base:
            started = time.monotonic()
            sock = stall(base)
            try:
                assert fake.disconnected.wait(within + 5), "the upstream stream was never closed"
                assert fake.disconnected_at - started < within
                # Backpressure: the upstream got to write only what the socket buffers hold.
                assert fake.flood_bytes < 64 * 1024 * 1024, fake.flood_bytes
                assert closed_by_server(sock)
            finally:
                sock.close()
            deadline = time.monotonic() + 5  # log lines are flushed every 0.2 s
            while "client-stalled" not in (log := (tmp_path / "proxy.log").read_text()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "client-stalled" in log
            assert "Traceback" not in log
            assert "ASGI callable returned without completing response" not in log


async def connect_small_window(port: int, window: int = 4096) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)  # before connecting: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=window)


def big_answer_app(size: int) -> Litestar:
    big = b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[],"pad":"' + b"x" * size + b'"}'
    settings = settings_from_dict(
        {
            "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1"}},
            "models": {"m": {"targets": [{"provider": "up", "model": "x"}]}},
        },
        {},
    )
    answer = httpx.Response(200, content=big, headers={"content-type": "application/json"})
    return create_app(settings, transport=httpx.MockTransport(lambda _: answer))


BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
ASK = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)


async def test_a_slow_reader_that_keeps_reading_is_not_cut_off() -> None:
    """The write timer measures a buffer that does not drain, not one that drains slowly: a client
    taking 64 KB every 50 ms gets the whole 3 MB answer although it takes many write_timeout_s."""
    async with LiveServer(big_answer_app(3 << 20), ServerConfig(write_timeout_s=0.3)) as server:
        reader, writer = await connect_small_window(server.port, 64 * 1024)
        writer.write(ASK)
        received = 0
        async with asyncio.timeout(30):
            while chunk := await reader.read(64 * 1024):
                received += len(chunk)
                if received > 3 << 20:
                    break
                await asyncio.sleep(0.05)
        writer.close()
    assert received > 3 << 20


async def test_a_client_that_does_not_take_a_whole_answer_is_cut_off(caplog: pytest.LogCaptureFixture) -> None:
    """Non-streamed: an 8 MB answer to a client that reads nothing. The protocol's write timer
    (armed only while the socket buffer is full) closes the connection after write_timeout_s."""
    big = (
        b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[],"pad":"' + b"x" * (8 << 20) + b'"}'
    )
    settings = settings_from_dict(
        {
            "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1"}},
            "models": {"m": {"targets": [{"provider": "up", "model": "x"}]}},
        },
        {},
    )
    transport = httpx.MockTransport(
        lambda _: httpx.Response(200, content=big, headers={"content-type": "application/json"})
    )
    async with LiveServer(create_app(settings, transport=transport), ServerConfig(write_timeout_s=0.5)) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await asyncio.sleep(2.5)  # read nothing: the server's write buffer fills and stays full
        received = 0
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(1 << 20):
                    received += len(chunk)
        writer.close()
    assert received < 8 << 20  # the connection ended before the whole answer went out
    assert "client-stalled" in caplog.text


class _Trickle(httpx.AsyncByteStream):
    """An upstream stream: the first chunk, a pause shorter than idle_s, then the rest."""

    def __init__(self, events: list[bytes], pause: float) -> None:
        self._events = events
        self._pause = pause

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._events[0]
        await asyncio.sleep(self._pause)
        for event in self._events[1:]:
            yield event


async def test_a_write_that_outlasts_the_idle_window_is_not_a_stall() -> None:
    """The idle timer runs from the start of the upstream read: a slow read followed by a write
    that waits for the client's buffer can exceed it while both sides are healthy. The write then
    gets the rest of the request's time, and the stream goes on to its end."""
    chunk = (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}\n\n'
    )
    events = [chunk % b"one", chunk % b"two", chunk % b"three", b"data: [DONE]\n\n"]
    settings = settings_from_dict(
        {
            "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1"}},
            "models": {"m": {"targets": [{"provider": "up", "model": "x"}]}},
            "resilience": {"timeouts": {"idle_s": 0.3, "total_s": 10}},
        },
        {},
    )
    upstream = httpx.MockTransport(
        lambda _: httpx.Response(200, stream=_Trickle(events, 0.2), headers={"content-type": "text/event-stream"})
    )
    app = create_app(settings, transport=upstream)
    body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    written: list[bytes] = []
    done = asyncio.Event()
    delivered = False
    blocked = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal blocked
        chunk_body = message.get("body", b"")
        if b'"two"' in chunk_body and not blocked:
            blocked = True
            await asyncio.sleep(0.35)  # the client's buffer is full for a while: nothing written yet
        if message["type"] == "http.response.body":
            written.append(chunk_body)
            if not message.get("more_body"):
                done.set()

    scope = chat_scope(body)
    async with AsyncTestClient(app=app):  # runs the app's lifespan
        async with asyncio.timeout(10):
            await app(scope, receive, send)  # type: ignore[arg-type]
    stream = b"".join(written)
    assert blocked
    assert b'"three"' in stream
    assert stream.endswith(b"data: [DONE]\n\n")
