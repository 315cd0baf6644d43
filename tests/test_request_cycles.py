"""A finished request leaves nothing for the garbage collector: its objects are freed as it ends.

The client watch's waiter used to be cancelled inside the server's ``receive``; that made a cycle
(the wait's future, its exception, their frames) holding the request's objects until a collection.
The real server on loopback and the offline mock; collection off while the requests run, then
everything a collection would have freed is kept (``DEBUG_SAVEALL``) and looked at."""

from __future__ import annotations

import asyncio
import gc

import httpx

from router.api.disconnect import ClientWatch
from router.app import create_app
from router.config import settings_from_dict
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
