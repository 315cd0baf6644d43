"""Serve an ASGI app with uvicorn on 127.0.0.1, inside the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from litestar import Litestar

from router.api.protocol import http_protocol
from router.config import ServerConfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """The app behind the same HTTP protocol ``switchboard serve`` uses, with ``limits``."""

    def __init__(self, app: Litestar, limits: ServerConfig | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            log_config=None,  # leave logging to pytest (uvicorn's dictConfig would unhook caplog)
            lifespan="on",
            http=http_protocol(limits or ServerConfig()),
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveServer:
        self._task = asyncio.create_task(self.server.serve())
        for _ in range(500):
            if self.server.started:
                return self
            await asyncio.sleep(0.01)
        raise RuntimeError("uvicorn did not start")

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task


ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ProxyProcess:
    base: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def proxy_process(
    config: Path, env: dict[str, str], log: Path, workers: int = 1, port: int | None = None
) -> Iterator[ProxyProcess]:
    """``python -m router serve`` on a free port of 127.0.0.1, once it answers."""
    port = port or free_port()
    argv = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own CLI
            [*argv, "--workers", str(workers)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", **env},
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "proxy did not start"
            time.sleep(0.05)
        yield ProxyProcess(base, port, process, log)
    finally:
        if process.poll() is None:
            process.terminate()  # a drain: whatever a test left in flight gets up to server.drain_s
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def running_proxy(config: Path, env: dict[str, str], log: Path, workers: int = 1) -> Iterator[str]:
    """``python -m router serve`` on a free port of 127.0.0.1; yields its base URL once it answers."""
    with proxy_process(config, env, log, workers) as proxy:
        yield proxy.base


def chat_scope(body: bytes, *headers: tuple[bytes, bytes]) -> dict[str, object]:
    """The ASGI scope of a POST /v1/chat/completions with ``body``, for driving the app directly."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
