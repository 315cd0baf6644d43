"""A closed client closes the upstream: cancel a request's work when its client goes away.

uvicorn does not cancel a request when its client disconnects; it only reports it on the ASGI
``receive`` channel. ``ClientWatch`` listens there (the request body must already be read) and
cancels the request's task, which aborts whatever upstream call it awaits and closes its
connection. The owner either sees that ``CancelledError`` and calls ``absorb()``, or finishes
first and calls ``await stop()``; both leave the task as if nothing had been cancelled.

The watcher itself is never cancelled once the request is over: it is left to end by itself when
the server reports the end of the response as a disconnect (uvicorn wakes a waiting ``receive``
then, as the ASGI spec has it answer any ``receive`` after the response). Cancelling it inside the
server's wait made a reference cycle of the wait's future, its exception and their frames, which
held the request's objects until a garbage collection: at 64 streams in flight, every request's,
for about a tenth of the CPU the request cost.
"""

from __future__ import annotations

import asyncio

from litestar.types import Receive


class ClientWatch:
    __slots__ = ("_settled", "_stopped", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.gone = False
        self._settled = False
        self._stopped = False  # no longer watching: a disconnect now is the response's own end
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if self._stopped:
            return
        self.gone = True
        self._task.cancel()

    def absorb(self) -> bool:
        """In ``except CancelledError``: True if the cancellation was ours (then it is undone)."""
        self._stopped = True
        if not self.gone:
            return False
        self._settle()
        return True

    def close(self) -> None:
        """Stop watching, whatever happened (idempotent). A waiter the server has not woken by its
        next turn (a response that never completed: a connection aborted with pipelined requests
        behind it) is cancelled then, so that it is not left pending."""
        self._stopped = True
        if not self._watcher.done():
            asyncio.get_running_loop().call_soon(self._cancel_if_waiting)

    def _cancel_if_waiting(self) -> None:
        if not self._watcher.done():
            self._watcher.cancel()

    async def stop(self) -> None:
        """Stop watching before the response completes (completion also reads as a disconnect)."""
        self._stopped = True
        if self.gone:  # the client left just as the work finished: our cancel is still pending
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                self._settle()

    def _settle(self) -> None:
        if not self._settled:
            self._settled = True
            self._task.uncancel()
