"""A finished request leaves nothing for the garbage collector: its objects are freed as it ends.

The client watch's waiter used to be cancelled inside the server's ``receive``; that made a cycle
(the wait's future, its exception, their frames) holding the request's objects until a collection.
The real server on loopback and the offline mock; collection off while the requests run, then
everything a collection would have freed is kept (``DEBUG_SAVEALL``) and looked at."""

from __future__ import annotations

import asyncio
import gc
import socket

import httpx
import msgspec

from router.api.disconnect import ClientWatch
from router.app import GC_YOUNG_THRESHOLD, create_app
from router.config import ServerConfig, settings_from_dict
from tests.live import LiveServer

SERVER = ("router", "providers", "uvicorn", "litestar")
CONFIG = {
    "providers": {"demo": {"type": "mock"}},
    "models": {"demo": {"targets": [{"provider": "demo", "model": "echo"}]}},
}


async def test_answered_and_streamed_requests_leave_no_reference_cycle_behind() -> None:
    ask = {"model": "demo", "messages": [{"role": "user", "content": "one two three"}]}
    async with (
        LiveServer(create_app(settings_from_dict(CONFIG))) as live,
        httpx.AsyncClient(base_url=live.url) as client,
    ):
        await client.post("/v1/chat/completions", json=ask)  # warm: imports, pools, caches
        gc.collect()
        gc.disable()
        try:
            for stream in (False, True, False, True):
                response = await client.post("/v1/chat/completions", json=ask | {"stream": stream})
                assert response.status_code == 200
            await asyncio.sleep(0.05)  # what ends after the response has ended
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            # The test's own client (httpx) keeps cycles of its own: the server's side is looked at.
            server = [o for o in gc.garbage if type(o).__module__.split(".")[0] in SERVER]
            watches = [o for o in server if isinstance(o, ClientWatch)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert watches == []
    assert server == [], f"{len(server)} of the server's objects were left for the collector by four requests"


async def test_the_young_generation_threshold_is_raised_while_serving_and_restored_after() -> None:
    """What the point above buys: with nothing left to collect, the collector's default young
    threshold (700) only made it traverse the requests in flight. Raised while the app runs."""
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # Python's defaults (a test before may have left others)
    try:
        async with LiveServer(create_app(settings_from_dict(CONFIG))):
            assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)


async def test_a_watch_the_server_never_wakes_is_not_left_waiting() -> None:
    """Pipelined behind a stream the client stopped reading: the stream outlasts its deadline and
    its connection is aborted, and uvicorn, acting on the request queued behind it, never reports
    the end of the first one. Its watch must not be left pending."""
    config = CONFIG | {"streams": {"keepalive_s": None}, "resilience": {"timeouts": {"total_s": 1.0}}}
    words = " ".join(f"word{i}" for i in range(60000))
    stream = msgspec.json.encode({"model": "demo", "stream": True, "messages": [{"role": "user", "content": words}]})
    small = msgspec.json.encode({"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    )
    async with LiveServer(create_app(settings_from_dict(config)), ServerConfig(write_timeout_s=60)) as live:
        loop = asyncio.get_running_loop()
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setblocking(False)
            await loop.sock_connect(client, ("127.0.0.1", live.port))
            await loop.sock_sendall(client, head % len(stream) + stream + head % len(small) + small)
            await asyncio.sleep(2.5)  # reading nothing, past the deadline
        await asyncio.sleep(0.5)
        waiting = [t for t in asyncio.all_tasks() if "Watch._watch" in t.get_coro().__qualname__]  # type: ignore[union-attr]
    assert waiting == []


async def test_an_open_stream_lets_go_of_its_first_chunks_once_relayed() -> None:
    """A long stream holds no more than it is writing: the first read, taken while choosing a
    target, is not kept to the end (500 open streams held about 4 KB each of it)."""
    from router.gateway.failover import OpenStream

    config = CONFIG | {"providers": {"demo": {"type": "mock", "token_delay_s": 0.3}}}
    ask = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "one two three four"}]}
    async with (
        LiveServer(create_app(settings_from_dict(config))) as live,
        httpx.AsyncClient(base_url=live.url) as client,
        client.stream("POST", "/v1/chat/completions", json=ask) as response,
    ):
        lines = response.aiter_lines()
        while not (await anext(lines)).startswith("data: "):
            pass  # the first event is out; the rest comes a token every 0.3 s
        open_streams = [o for o in gc.get_objects() if isinstance(o, OpenStream)]
        assert len(open_streams) == 1
        assert open_streams[0].first == ()
