"""The HTTP server's own limits, against raw sockets: header size and count (431), clients that
send too slowly (408), requests the parser rejects (400), each in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest

from router.app import create_app
from router.config import ServerConfig, settings_from_dict
from tests.live import LiveServer

LIMITS = ServerConfig(max_header_bytes=8192, max_headers=20, header_timeout_s=0.5, body_timeout_s=0.5)
CHAT = b'{"model":"demo","messages":[{"role":"user","content":"hi"}]}'


@contextlib.asynccontextmanager
async def serving(limits: ServerConfig = LIMITS) -> AsyncIterator[LiveServer]:
    settings = settings_from_dict(
        {
            "providers": {"demo": {"type": "mock"}},
            "models": {"demo": {"targets": [{"provider": "demo", "model": "echo"}]}},
        }
    )
    async with LiveServer(create_app(settings), limits) as server:
        yield server


async def exchange(port: int, *parts: bytes, pause: float = 0.0, wait: float = 5.0) -> bytes:
    """Send ``parts`` (``pause`` seconds apart) until the server answers; what it sent before
    closing the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received: list[bytes] = []

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65_536):
                received.append(chunk)

    task = asyncio.create_task(read_all())
    try:
        for part in parts:
            if task.done():
                break
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
    except ConnectionError:
        pass
    try:
        async with asyncio.timeout(wait):
            await task
    finally:
        writer.close()
    return b"".join(received)


def parse(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    error = msgspec.json.decode(body)
    assert set(error["error"]) == {"message", "type", "param", "code"}, error
    return int(lines[0].split()[1]), headers, error["error"]


def request(*headers: bytes, body: bytes = CHAT) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


async def test_a_request_within_the_limits_is_served() -> None:
    async with serving() as server:
        raw = await exchange(server.port, request(b"connection: close", *(b"x-h%d: v" % i for i in range(10))))
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]


async def test_headers_past_max_header_bytes_get_431_and_the_connection_closes() -> None:
    async with serving() as server:
        raw = await exchange(server.port, request(b"x-big: " + b"a" * 20_000))
        status, headers, error = parse(raw)
        assert (status, error["code"]) == (431, "request_header_fields_too_large")
        assert headers["connection"] == "close"
        assert "8192 bytes" in str(error["message"])
        # one unfinished header line, sent in pieces, is cut off at the limit too: never buffered whole
        big = [b"POST /v1/chat/completions HTTP/1.1\r\nx-big: "] + [b"a" * 65_536] * 40
        raw = await exchange(server.port, *big)
        assert raw.startswith(b"HTTP/1.1 431") or raw == b""  # the server may reset while we still send
        # and the server still serves
        assert (await exchange(server.port, request(b"connection: close"))).startswith(b"HTTP/1.1 200")


async def test_more_header_fields_than_max_headers_get_431() -> None:
    async with serving() as server:
        raw = await exchange(server.port, request(*(b"x-h%d: v" % i for i in range(30))))
    status, _, error = parse(raw)
    assert (status, error["code"]) == (431, "request_header_fields_too_large")
    assert "header fields" in str(error["message"])


async def test_headers_sent_too_slowly_get_408() -> None:
    async with serving() as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        trickle = [bytes([b]) for b in request()[:40]]  # one byte every 50 ms: 2 s for 40 bytes
        raw = await exchange(server.port, *trickle, pause=0.05)
        status, _, error = parse(raw)
        assert (status, error["code"]) == (408, "request_timeout")
        assert loop.time() - started < 1.5


async def test_a_connection_that_sends_nothing_is_closed() -> None:
    async with serving() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(3):
            raw = await reader.read()
        writer.close()
    assert raw.startswith(b"HTTP/1.1 408")


async def test_a_body_sent_too_slowly_gets_408() -> None:
    async with serving() as server:
        whole = request()
        head, _, _ = whole.partition(b"\r\n\r\n")
        raw = await exchange(server.port, head + b"\r\n\r\n" + b'{"model"', wait=3)
    status, _, error = parse(raw)
    assert (status, error["code"]) == (408, "request_timeout")
    assert "body" in str(error["message"])


async def test_many_slow_connections_are_all_closed() -> None:
    """Regression: 500 connections sending one header byte a second were never closed."""
    async with serving() as server:
        conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(50)]
        for _, writer in conns:
            writer.write(b"P")
        async with asyncio.timeout(5):
            answers = [await reader.read() for reader, _ in conns]
        for _, writer in conns:
            writer.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers)


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT A REQUEST LINE\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-bad: a\rb\r\n\r\n",
        b"POST /v1/chat/completions HTTP/9.9 extra\r\n\r\n",
    ],
    ids=["garbage", "cr-in-header", "bad-version"],
)
async def test_requests_the_parser_rejects_get_openai_shaped_400s(raw: bytes) -> None:
    async with serving() as server:
        answer = await exchange(server.port, raw)
    status, headers, error = parse(answer)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert error["code"] == "invalid_http_request"


async def test_the_deadlines_follow_each_request_on_a_kept_alive_connection() -> None:
    """Requests that each arrive in time are served however long the connection lives; a later
    request on it that trickles in still gets its 408."""
    async with serving() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(3):  # 3 x 0.3 s: past the 0.5 s header timeout counted from the connection's start
            writer.write(request())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(
                next(v for k, v in (h.split(b": ", 1) for h in head.split(b"\r\n")[1:-2]) if k == b"content-length")
            )
            await reader.readexactly(length)
            await asyncio.sleep(0.3)
        answer = asyncio.create_task(reader.read(65_536))
        with contextlib.suppress(ConnectionError):  # the server hangs up mid-trickle
            for byte in request()[:20]:
                if answer.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        async with asyncio.timeout(3):
            rest = await answer
        writer.close()
    assert rest.startswith(b"HTTP/1.1 408"), rest[:100]


async def test_endless_chunked_trailers_are_cut_off() -> None:
    """Trailers come after the body, where header limits do not look: httptools would buffer an
    unfinished trailer line without bound (and copy it on every read)."""
    limits = ServerConfig(max_header_bytes=8192, max_body_bytes=16_384, body_timeout_s=30)
    async with serving(limits) as server:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        parts = [head + b"5\r\nhello\r\n0\r\nx-trailer: "] + [b"a" * 16_384] * 64
        loop = asyncio.get_running_loop()
        started = loop.time()
        raw = await exchange(server.port, *parts, wait=5)
        assert loop.time() - started < 3  # not the 30 s body timeout
        if raw:  # the server may reset while the client still sends; a reply, if read, is a 413
            status, _, error = parse(raw)
            assert (status, error["code"]) == (413, "request_too_large")
        assert (await exchange(server.port, request(b"connection: close"))).startswith(b"HTTP/1.1 200")
