"""SSE comments while a stream is silent, so nothing between the client and Switchboard (a load
balancer, a proxy, the client's own read time-out) closes a connection that is only waiting.

Before the stream's first event the comments go out behind the response's head, committed early
(status 200, the SSE headers): failover goes on behind them, unseen by the client because no data
event has gone out, and if every target fails the stream ends with one error event instead of an
HTTP status. After the first event they fill any later silence. One timer per stream, rescheduled
only when it fires; the relay marks when it starts and stops waiting (``idle_since``), which is
all it costs per event.
"""

from __future__ import annotations

import asyncio
from typing import Final

from litestar.types import Send

COMMENT: Final = b": keep-alive\n\n"


class KeepAlive:
    """One stream's keep-alive. ``idle_since`` is the loop time since which nothing was written and
    the stream waits (``None`` while it is writing); ``started`` whether the response's head has
    gone out (then whoever sends next must not send it again)."""

    __slots__ = ("_every", "_handle", "_headers", "_loop", "_send", "_task", "beats", "idle_since", "started")

    def __init__(self, send: Send, every: float, headers: list[tuple[bytes, bytes]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._send = send
        self._every = every
        self._headers = headers  # the head of a response committed before the stream opened
        self._task: asyncio.Task[None] | None = None
        self.started = False
        self.beats = 0
        self.idle_since: float | None = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self.idle_since + every, self._due)

    def _due(self) -> None:
        now, since, every = self._loop.time(), self.idle_since, self._every
        if since is None or (self._task is not None and not self._task.done()):
            at = now + every  # writing: the next silence starts after this write
        elif now - since < every * 0.99:
            at = since + every  # something was written since this timer was set
        else:
            self.idle_since = now
            self._task = self._loop.create_task(self._beat())
            self._task.add_done_callback(_retrieve)
            at = now + every
        self._handle = self._loop.call_at(at, self._due)

    async def _beat(self) -> None:
        # uvicorn's send waits for a full socket buffer before it writes anything, and writes
        # without waiting after: cancelled at its await, nothing of the message went out.
        if not self.started:
            await self._send({"type": "http.response.start", "status": 200, "headers": self._headers})
            self.started = True
        await self._send({"type": "http.response.body", "body": COMMENT, "more_body": True})
        self.beats += 1

    async def settle(self) -> bool:
        """Let a comment being written finish (the stream writes next); whether the head is out."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task])
        return self.started

    async def stop(self) -> bool:
        """No more comments (the stream ends, or is handed back to an HTTP error); whether the
        head is out. A comment still waiting on a full client buffer is abandoned."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        return self.started


def _retrieve(task: asyncio.Task[None]) -> None:
    """A comment the client did not take is not an error: the stream's own writes will say so."""
    if not task.cancelled():
        task.exception()
