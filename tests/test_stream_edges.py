"""Edges of a stream's life under keep-alive and the drain, driven in process with a send that
enforces the ASGI order uvicorn enforces (start once, then bodies, nothing after the end); and the
process-level edges: a stop signal twice, a stale pid note."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from litestar.testing import AsyncTestClient

from router.app import create_app
from router.config import settings_from_dict
from router.gateway.outcome import Outcome
from router.lifecycle import workers
from tests.live import chat_scope, proxy_process

BODY = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
STREAM = (
    b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{"content":"hi"},"finish_reason":null}]}\n\ndata: [DONE]\n\n'
)


class StrictSend:
    """An ASGI send that refuses what uvicorn refuses; ``paused`` holds writes (a full buffer)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.started = self.complete = False
        self.paused = asyncio.Event()
        self.paused.set()

    async def __call__(self, message: dict[str, Any]) -> None:
        await self.paused.wait()
        self.messages.append(message)
        if not self.started and message["type"] != "http.response.start":
            self.errors.append("a body before the head")
        elif self.started and message["type"] == "http.response.start":
            self.errors.append("a second head")
        elif self.complete:
            self.errors.append("a message after the end")
        self.started = True
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        if self.errors:
            raise RuntimeError(self.errors[-1])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


def _receive() -> Callable[[], Awaitable[dict[str, Any]]]:
    sent = False
    forever = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await forever.wait()
        return {"type": "http.disconnect"}

    return receive


Upstream = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def _app(upstream: Upstream, keepalive: float | None, drain_s: float) -> Any:
    settings = settings_from_dict(
        {
            "server": {"drain_s": drain_s},
            "providers": {"up": {"type": "openai", "base_url": "http://up.test/v1", "api_key": "k"}},
            "models": {"m": {"targets": [{"provider": "up", "model": "y"}]}},
            "streams": {"keepalive_s": keepalive},
            "resilience": {"retry": {"max_attempts": 1}},
        }
    )
    return create_app(settings, transport=httpx.MockTransport(upstream))


async def test_an_unexpected_failure_behind_keep_alive_ends_with_an_error_event() -> None:
    async def broken(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)  # past keepalive_s: the head and a comment are out
        raise RuntimeError("a bug, not an upstream failure")

    app = _app(broken, 0.1, 30)
    outcomes: list[Outcome] = []
    app.state.outcomes.listeners.append(outcomes.append)
    send = StrictSend()
    async with AsyncTestClient(app=app):
        await app(chat_scope(BODY), _receive(), send)
    assert send.errors == []
    assert send.complete
    assert send.messages[0]["status"] == 200
    assert send.body.startswith(b": keep-alive\n\n")
    assert send.body.endswith(b'"code":"internal_error"}}\n\n')
    assert [(o.status, o.code) for o in outcomes] == [(200, "internal_error")]


@pytest.mark.parametrize("keepalive", [None, 0.05])
async def test_a_drain_that_ends_a_stream_before_its_head_went_out_still_sends_one(keepalive: float | None) -> None:
    async def fast(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=STREAM, headers={"content-type": "text/event-stream"})

    app = _app(fast, keepalive, 0.05)
    send = StrictSend()
    send.paused.clear()  # the connection's write buffer is full: even the head waits
    exited: list[bool] = []

    async def drain_then_unblock() -> None:
        await asyncio.sleep(0.1)
        app.state.drain.begin(lambda: exited.append(True))
        await asyncio.sleep(0.3)
        send.paused.set()

    async with AsyncTestClient(app=app):
        task = asyncio.create_task(drain_then_unblock())
        async with asyncio.timeout(5):
            await app(chat_scope(BODY), _receive(), send)
        await task
        await asyncio.sleep(0.1)
    assert send.errors == []
    assert send.complete
    assert send.messages[0]["type"] == "http.response.start"
    assert b"server_shutting_down" in send.body
    assert exited == [True]


def test_a_stale_pid_note_is_removed_and_never_signalled(tmp_path: Path) -> None:
    """A worker killed without its shutdown leaves its note; its pid may belong to another process
    by now. Only a note whose lock a live process holds names a server."""
    directory = tmp_path / "run"
    workers.prepare(directory)
    bystander = subprocess.Popen(["sleep", "30"])  # noqa: S607 - a process that is not ours to signal
    try:
        (directory / str(bystander.pid)).write_text("")  # a note nobody holds
        unregister = workers.register(directory)  # this process, serving
        assert workers.serving(directory) == [os.getpid()]
        assert not (directory / str(bystander.pid)).exists()
        assert bystander.poll() is None
        unregister()
        assert workers.serving(directory) == []
    finally:
        bystander.kill()
        bystander.wait()


def test_a_private_run_directory_is_required(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(PermissionError):
        workers.prepare(shared)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(PermissionError):
        workers.prepare(link)


def test_sigint_then_sigterm_as_a_process_group_gets_them_keeps_draining(tmp_path: Path) -> None:
    """Ctrl-C reaches every process of the group and uvicorn's supervisor passes SIGTERM on: the
    second signal must not cut what the first let finish."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "providers: {demo: {type: mock, token_delay_s: 0.05}}\n"
        "models: {demo: {targets: [{provider: demo, model: echo}]}}\n"
    )
    words = " ".join(f"w{i}" for i in range(40))
    with proxy_process(config, {}, tmp_path / "proxy.log") as proxy:
        received: list[str] = []
        errors: list[Exception] = []
        started = threading.Event()

        def read() -> None:
            try:
                with openai.OpenAI(base_url=f"{proxy.base}/v1", api_key="k", max_retries=0) as client:
                    stream = client.chat.completions.create(
                        model="demo", messages=[{"role": "user", "content": words}], stream=True
                    )
                    for chunk in stream:
                        started.set()
                        received.extend(c.delta.content or "" for c in chunk.choices)
            except Exception as exc:
                errors.append(exc)
            finally:
                started.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert started.wait(10)
        proxy.process.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proxy.process.send_signal(signal.SIGTERM)
        reader.join(20)
        assert errors == []
        assert "".join(received).split() == words.split()
        proxy.process.wait(10)


async def test_a_drain_landing_while_the_last_event_is_written_still_sends_it() -> None:
    async def fast(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=STREAM, headers={"content-type": "text/event-stream"})

    app = _app(fast, None, 0.05)
    send = StrictSend()
    held = asyncio.Event()
    exited: list[bool] = []

    async def full_buffer_at_the_end(message: dict[str, Any]) -> None:
        if b"[DONE]" in message.get("body", b"") and not held.is_set():
            held.set()
            app.state.drain.begin(lambda: exited.append(True))
            await asyncio.sleep(3)  # uvicorn's send waiting on a full buffer: nothing written yet
        await send(message)

    async with AsyncTestClient(app=app):
        async with asyncio.timeout(5):
            await app(chat_scope(BODY), _receive(), full_buffer_at_the_end)
        await asyncio.sleep(0.1)
    assert held.is_set()
    assert send.errors == []
    assert send.complete
    assert send.body.endswith(b"data: [DONE]\n\n")  # the last event, not lost, and nothing after it
    assert b"error" not in send.body
