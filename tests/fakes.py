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
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from providers.embeddings import as_base64
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
    calls: Counter[str] = field(default_factory=Counter)
    endless_sent: int = 0
    flood_bytes: int = 0  # what the `flood` model managed to write before it was stopped

    async def embeddings(self, request: web.Request) -> web.Response:
        """OpenAI's embeddings endpoint: one fixed vector per input, base64 when asked (as OpenAI)."""
        body = msgspec.json.decode(await request.read())
        assert isinstance(body, dict)
        self.seen.append(Seen(dict(request.headers), body))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vector = [0.125, -0.25, 0.5]
        encoded = as_base64(vector) if body.get("encoding_format") == "base64" else vector
        data = [{"object": "embedding", "index": i, "embedding": encoded} for i in range(len(inputs))]
        answer = {
            "object": "list",
            "data": data,
            "model": "text-embedding-3-small-e2e",
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
        }
        return _json(msgspec.json.encode(answer))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        assert isinstance(body, dict)
        self.seen.append(Seen(dict(request.headers), body))
        model, stream = body.get("model"), body.get("stream") is True
        self.calls[str(model)] += 1
        if isinstance(model, str) and model in FAULTS:
            return await FAULTS[model](self, request, stream)
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
        if model == "slow":
            return await self._slow(request)
        if model == "endless":
            return await self._endless(request)
        if model == "flood":
            return await self._flood(request)
        if not stream:
            return _json(fixture_bytes("openai", "completion.json"))
        raw = fixture_bytes("openai", "stream_text.sse")
        if not (isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")):
            raw = b"".join(b"data: " + e.data + b"\n\n" for e in SSEParser().feed(raw) if b'"choices":[]' not in e.data)
        return await self._replay(request, raw)

    async def handle_hang(self, request: web.Request, stream: bool) -> web.StreamResponse:
        """Answers nothing, streamed or not, and records when it was abandoned."""
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

    async def _flood(self, request: web.Request) -> web.StreamResponse:
        """Streams 8 KB chunks as fast as the connection takes them, for 30 s at most."""
        chunk = b'data: {"id":"f","object":"chat.completion.chunk","created":1,"model":"flood","choices":[{"index":0,'
        chunk += b'"delta":{"content":"' + b"x" * 8000 + b'"},"finish_reason":null}]}\n\n'
        response = await _sse(request)
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                await response.write(chunk)
                self.flood_bytes += len(chunk)
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            self.disconnected_at = time.monotonic()
            self.disconnected.set()
            raise
        return response


def _error(status: int, headers: dict[str, str] | None = None) -> web.Response:
    body = msgspec.json.encode({"error": {"message": f"fake upstream says {status}", "type": "x"}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


async def _slow_first(fake: FakeUpstream, request: web.Request, stream: bool) -> web.StreamResponse:
    response = await _sse(request) if stream else None
    await asyncio.sleep(2)  # longer than the proxy's first_token_s / attempt_s
    return response or _json(fixture_bytes("openai", "completion.json"))


async def _dies_midway(fake: FakeUpstream, request: web.Request, stream: bool) -> web.StreamResponse:
    response = await _sse(request) if stream else web.StreamResponse(headers={"content-length": "5000"})
    if not stream:
        await response.prepare(request)
    first = fixture_bytes("openai", "stream_text.sse").split(b"\n\n")[1] + b"\n\n"
    await response.write(first if stream else fixture_bytes("openai", "completion.json")[:100])
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return response


async def _malformed(fake: FakeUpstream, request: web.Request, stream: bool) -> web.StreamResponse:
    if not stream:
        return _json(b"{this is not json")
    return await fake._replay(request, b"data: {this is not json\n\n")


async def _hang(fake: FakeUpstream, request: web.Request, stream: bool) -> web.StreamResponse:
    return await fake.handle_hang(request, stream)


Fault = Callable[["FakeUpstream", web.Request, bool], Awaitable[web.StreamResponse]]


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
def serving_in_thread(app: web.Application) -> Iterator[int]:
    """Serve an aiohttp app on 127.0.0.1 from its own thread and event loop; yields the port.
    Its own loop keeps its tasks apart from those of the code under test."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return bound_port(site)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def serving_chat(handle: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Iterator[int]:
    """``handle`` as ``POST /v1/chat/completions`` on 127.0.0.1, from its own thread; the port."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    with serving_in_thread(app) as port:
        yield port


@contextlib.contextmanager
def running_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    app.router.add_post("/v1/embeddings", fake.embeddings)
    with serving_in_thread(app) as port:
        fake.port = port
        try:
            yield fake
        finally:
            fake.release.set()


def _fixed(status: int, headers: dict[str, str] | None = None) -> Fault:
    async def fault(fake: FakeUpstream, request: web.Request, stream: bool) -> web.StreamResponse:
        return _error(status, headers)

    return fault


FAULTS: dict[str, Fault] = {
    "fail500": _fixed(500),
    "fail503": _fixed(503),
    "r429short": _fixed(429, {"retry-after-ms": "50"}),
    "r429long": _fixed(429, {"retry-after": "120"}),
    "auth401": _fixed(401),
    "bad400": _fixed(400),
    "hang": _hang,
    "slowfirst": _slow_first,
    "diemid": _dies_midway,
    "malformed": _malformed,
}


@dataclass
class FakeAnthropic:
    """Answers ``POST /v1/messages`` from the recorded Anthropic fixtures: tool calls when the
    request offers tools, text otherwise; records what it was sent."""

    port: int = 0
    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        assert isinstance(body, dict)
        self.seen.append(Seen(dict(request.headers), body))
        if request.headers.get("x-api-key") != "sk-ant-e2e":
            return web.Response(status=401, body=fixture_bytes("anthropic", "error_auth_401.json"))
        calls = bool(body.get("tools")) and not _answers_a_tool(body)  # a tool's result gets text back
        if not body.get("stream"):
            name = "message_tool_use.json" if calls else "message_text.json"
            return _json(fixture_bytes("anthropic", name))
        response = await _sse(request)
        name = "stream_tools.sse" if calls else "stream_text.sse"
        for event in fixture_bytes("anthropic", name).split(b"\n\n"):
            if event:
                await response.write(event + b"\n\n")
        await response.write_eof()
        return response


def _answers_a_tool(body: dict[str, object]) -> bool:
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else {}
    content = last.get("content") if isinstance(last, dict) else None
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


@contextlib.contextmanager
def running_anthropic() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    app = web.Application()
    app.router.add_post("/v1/messages", fake.handle)
    with serving_in_thread(app) as port:
        fake.port = port
        yield fake


@dataclass
class FakeGemini:
    """Answers ``:generateContent`` and ``:streamGenerateContent?alt=sse`` from the recorded
    Gemini fixtures (CRLF-framed, as Gemini sends them); records what it was sent."""

    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = msgspec.json.decode(await request.read())
        assert isinstance(body, dict)
        self.seen.append(Seen(dict(request.headers), body))
        self.paths.append(request.path_qs)
        if request.headers.get("x-goog-api-key") != "gemini-e2e-key" or "key=" in request.query_string:
            return web.Response(status=400, body=fixture_bytes("gemini", "error_bad_key.json"))
        tools = bool(body.get("tools"))
        if request.path.endswith(":generateContent"):
            return _json(fixture_bytes("gemini", "generate_function_call.json" if tools else "generate_text.json"))
        response = await _sse(request)
        await response.write(fixture_bytes("gemini", "stream_function_call.sse" if tools else "stream_text.sse"))
        await response.write_eof()
        return response


@contextlib.contextmanager
def running_gemini() -> Iterator[FakeGemini]:
    fake = FakeGemini()
    app = web.Application()
    app.router.add_post("/v1beta/models/{action}", fake.handle)
    with serving_in_thread(app) as port:
        fake.port = port
        yield fake
