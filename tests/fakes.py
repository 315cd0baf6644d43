"""A fake OpenAI-compatible upstream on 127.0.0.1, in its own thread, that records what it sees.

Behaviour is chosen by the request's ``model``:
``fast`` answers from the recorded fixtures; ``slow`` sends one chunk and waits for the test to
release it; ``endless`` streams until the client goes away and records when that was noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from providers.sse import SSEParser
from tests.conftest import fixture_bytes

TOOL_COMPLETION = (
    b'{"id":"chatcmpl-t","object":"chat.completion","created":1763000002,"model":"gpt-4o-2024-08-06",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,"tool_calls":'
    b'[{"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\": \\"Paris\\"}"}}]},'
    b'"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}'
)


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, object]


@dataclass
class FakeUpstream:
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    slow_finished: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    disconnected_at: float = 0.0
    hung: threading.Event = field(default_factory=threading.Event)
    endless_sent: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        assert isinstance(body, dict)
        self.seen.append(Seen(dict(request.headers), body))
        model, stream = body.get("model"), body.get("stream") is True
        if model == "tools":
            return (
                await self._replay(request, fixture_bytes("openai", "stream_tools.sse"))
                if stream
                else _json(TOOL_COMPLETION)
            )
        if model == "broken" and stream:
            first = fixture_bytes("openai", "stream_text.sse").split(b"\n\n")[1] + b"\n\n"
            return await self._replay(request, first + b'data: {"error":{"message":"model crashed","code":500}}\n\n')
        if model == "leaky":  # an upstream that echoes the key it was sent, in an error
            echo = f'{{"error":{{"message":"bad key {request.headers.get("Authorization")}"}}}}'
            if stream:
                first = fixture_bytes("openai", "stream_text.sse").split(b"\n\n")[1] + b"\n\n"
                return await self._replay(request, first + b"data: " + echo.encode() + b"\n\n")
            return web.Response(status=401, body=echo.encode(), content_type="application/json")
        if model == "hang":  # answers nothing, streamed or not, and records when it was abandoned
            if stream:
                await _sse(request)
            self.hung.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                self.disconnected_at = time.monotonic()
                self.disconnected.set()
                raise
            return _json(b"{}")
        if model == "slow":
            return await self._slow(request)
        if model == "endless":
            return await self._endless(request)
        if not stream:
            return _json(fixture_bytes("openai", "completion.json"))
        raw = fixture_bytes("openai", "stream_text.sse")
        if not (isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")):
            raw = b"".join(b"data: " + e.data + b"\n\n" for e in SSEParser().feed(raw) if b'"choices":[]' not in e.data)
        return await self._replay(request, raw)

    async def _replay(self, request: web.Request, raw: bytes) -> web.StreamResponse:
        response = await _sse(request)
        for event in raw.split(b"\n\n"):
            if event:
                await response.write(event + b"\n\n")
        await response.write_eof()
        return response

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        events = [e for e in fixture_bytes("openai", "stream_text.sse").split(b"\n\n") if e]
        response = await _sse(request)
        await response.write(events[0] + b"\n\n" + events[1] + b"\n\n")
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 10)
        for event in events[2:]:
            await response.write(event + b"\n\n")
        self.slow_finished.set()
        await response.write_eof()
        return response

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        first = fixture_bytes("openai", "stream_text.sse").split(b"\n\n")[1] + b"\n\n"
        response = await _sse(request)
        try:
            for _ in range(2000):  # bounded: 100 s at most
                await response.write(first)
                self.endless_sent += 1
                await asyncio.sleep(0.05)
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            self.disconnected_at = time.monotonic()
            self.disconnected.set()
            raise
        return response


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def _sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    return response


def bound_port(site: web.TCPSite) -> int:
    server = site._server
    assert isinstance(server, asyncio.Server)
    port: int = server.sockets[0].getsockname()[1]
    return port


@contextlib.contextmanager
def running_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.port = bound_port(site)
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    ready.wait(10)
    try:
        yield fake
    finally:
        fake.release.set()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
