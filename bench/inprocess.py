"""CPU per request of Switchboard's own stack, without sockets: the app is driven as an ASGI
callable with an in-memory upstream (``httpx.MockTransport``). Far steadier than a load test on a
shared machine, so it is the tool for A/B-testing a hot-path change:

    python -m bench.inprocess            # non-streamed and streamed, microseconds of CPU per request
    python -m bench.inprocess --keys     # the same, called with a key that has rpm, tpm and a budget
    python -m bench.inprocess --redis    # the same, the limits' counts in Redis on 127.0.0.1
    python -m bench.inprocess --in-flight 64   # 64 requests at a time, as under load (default 1)
    python -m bench.inprocess --api responses  # the same answers asked through the Responses API (or messages)
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import httpx
import msgspec
from litestar import Litestar

from bench.upstream import completion_body, stream_body
from router.app import create_app
from router.config import settings_from_dict

WARMUP, ROUNDS, PER_ROUND = 2_000, 5, 3_000


def upstream(request: httpx.Request) -> httpx.Response:
    if b'"stream":true' in request.content:
        return httpx.Response(200, content=stream_body(), headers={"content-type": "text/event-stream"})
    return httpx.Response(200, content=completion_body(), headers={"content-type": "application/json"})


def request_body(stream: bool) -> bytes:
    flag = b"true" if stream else b"false"
    return (
        b'{"model":"m","messages":[{"role":"system","content":"You are a helpful assistant."},'
        b'{"role":"user","content":"Write one sentence about foxes."}],"temperature":0.7,"stream":' + flag + b"}"
    )


async def started(app: Litestar) -> None:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    ready = asyncio.Event()

    async def send(message: Any) -> None:
        if message["type"] == "lifespan.startup.complete":
            ready.set()

    asyncio.get_running_loop().create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send))  # type: ignore[arg-type]
    await ready.wait()


CLIENT_KEY = "sk-bench-client-0123456789"


API_PATHS: Final = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}


def api_body(api: str, stream: bool) -> bytes:
    """The bench conversation in each API's own shape."""
    system, user = "You are a helpful assistant.", "Write one sentence about foxes."
    if api == "responses":
        return msgspec.json.encode(
            {"model": "m", "instructions": system, "input": user, "temperature": 0.7, "stream": stream}
        )
    if api == "messages":
        message = {"role": "user", "content": user}
        return msgspec.json.encode(
            {"model": "m", "system": system, "messages": [message], "max_tokens": 256, "stream": stream}
        )
    return request_body(stream)


def caller(
    app: Litestar, body: bytes, key: str | None = None, path: str = "/v1/chat/completions"
) -> Callable[[], Awaitable[None]]:
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }

    async def one() -> None:
        done = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"status {message['status']}")
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await app(dict(scope), receive, send)  # type: ignore[arg-type]

    return one


async def measure(
    stream: bool, keys: bool = False, in_flight: int = 1, api: str = "chat", redis: bool = False
) -> float:
    config: dict[str, Any] = {
        "providers": {"o": {"type": "openai", "base_url": "http://upstream/v1", "api_key": "k"}},
        "models": {"m": {"targets": [{"provider": "o", "model": "gpt-4o-mini"}]}},
    }
    if keys:  # as the load test's switchboard-keys: every limit on, none reached
        limits = {"rpm": 100_000_000, "tpm": 100_000_000_000, "max_parallel": 100_000, "budget_usd": 1e9}
        config |= {
            "auth": {"master_key": "sk-bench-master-key-0123456789"},
            "database": {"url": f"sqlite:///{tempfile.mkdtemp()}/keys.db"},
            "keys": [{"name": "bench", "key_env": "BENCH_CLIENT_KEY", **limits}],
        }
        if redis:  # as switchboard-keys-redis: the counts shared in a local Redis
            config["state"] = {"backend": "redis", "url": "redis://127.0.0.1:6379/0"}
    settings = settings_from_dict(config, {"BENCH_CLIENT_KEY": CLIENT_KEY})
    app = create_app(settings, transport=httpx.MockTransport(upstream))
    await started(app)
    one = caller(app, api_body(api, stream), CLIENT_KEY if keys else None, API_PATHS[api])

    async def run(count: int) -> None:  # ``count`` requests, ``in_flight`` at a time
        async def worker(share: int) -> None:
            for _ in range(share):
                await one()

        await asyncio.gather(*(worker(count // in_flight) for _ in range(in_flight)))

    await run(WARMUP)
    best = float("inf")
    for _ in range(ROUNDS):
        cpu = time.process_time()
        await run(PER_ROUND)
        best = min(best, (time.process_time() - cpu) / (PER_ROUND // in_flight * in_flight) * 1e6)
    return best


def main() -> None:
    args = sys.argv[1:]
    redis = "--redis" in args
    keys = "--keys" in args or redis
    in_flight = int(args[args.index("--in-flight") + 1]) if "--in-flight" in args else 1
    api = args[args.index("--api") + 1] if "--api" in args else "chat"
    for stream in (False, True):
        us = asyncio.run(measure(stream, keys, in_flight, api, redis))
        print(f"{'streamed (43 events)' if stream else 'non-streamed'}: {us:.1f} us of CPU per request")


if __name__ == "__main__":
    main()
