"""Shutting down without dropping what is in flight.

On SIGTERM the process drains: ``/health/ready`` answers 503 at once (a load balancer stops
sending it traffic), a new API request is refused with a 503 that the SDKs retry (elsewhere,
behind a load balancer), and the requests in flight go on for up to ``server.drain_s``. What is
still running then is ended by the drain: a stream gets one error event in its API's shape and a
proper end (a resumable chat stream in Redis is handed to another replica: ``router.api.handoff``),
any other request a 503. Only then is the server told to exit, and it finds nothing
left to cut. A second SIGTERM exits at once, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

ENDED_BY_DRAIN: Final = "Switchboard is shutting down and this request outlasted its drain (server.drain_s); retry."
GRACE_S: Final = 5.0  # after the drain has ended what was left, how long those requests get to say so


class Drain:
    """The requests in flight (each registers its task), and the drain when it comes."""

    __slots__ = ("_empty", "_ended", "_runner", "_tasks", "drain_s", "draining")

    def __init__(self, drain_s: float) -> None:
        self.drain_s = drain_s
        self.draining = False
        self._tasks: set[asyncio.Task[object]] = set()
        self._ended: set[asyncio.Task[object]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._empty = asyncio.Event()  # set when the last request in flight leaves, once draining

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def enter(self, task: asyncio.Task[object]) -> None:
        self._tasks.add(task)

    def leave(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        self._ended.discard(task)
        if self.draining and not self._tasks:
            self._empty.set()

    def claims(self, task: asyncio.Task[object]) -> bool:
        """In ``except CancelledError``: True if the drain cancelled ``task`` (then the cancellation
        is undone, and the request ends itself with ``ShuttingDown``)."""
        if task not in self._ended:
            return False
        self._ended.discard(task)
        task.uncancel()
        return True

    def begin(self, exit_server: Callable[[], None]) -> None:
        """Start draining (idempotent); ``exit_server`` is called once nothing is in flight."""
        if self.draining:
            return
        self.draining = True
        log.warning(
            "drain: shutting down: new requests refused, /health/ready 503; %d in flight get up to %gs to finish",
            len(self._tasks),
            self.drain_s,
        )
        self._runner = asyncio.get_running_loop().create_task(self._run(exit_server))

    async def _run(self, exit_server: Callable[[], None]) -> None:
        if not await self._emptied(self.drain_s):
            log.warning("drain: %d requests still in flight after %gs: ending them", len(self._tasks), self.drain_s)
            for task in list(self._tasks):
                self._ended.add(task)
                task.cancel()
            await self._emptied(GRACE_S)
        log.info("drain: done, exiting")
        exit_server()

    async def _emptied(self, within_s: float) -> bool:
        """Wait up to ``within_s`` for nothing to be in flight; whether that happened."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), within_s)
        return not self._tasks

    async def close(self) -> None:
        """At shutdown: the drain's own task, if it never finished, is not left behind."""
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            await asyncio.wait([self._runner])
