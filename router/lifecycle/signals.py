"""SIGTERM and SIGINT drain before the server exits; SIGHUP reloads the config.

uvicorn installs its own SIGTERM/SIGINT handlers (with ``signal.signal``) before the app starts,
and exits as soon as one arrives: the requests in flight get its hard-coded graceful time-out, then
are cut. Here the first such signal starts the drain instead, and uvicorn's handler is called when
the drain is done; a second Ctrl-C goes straight to uvicorn's (exit now), a second SIGTERM (a
supervisor passing on what its process group already got) leaves the drain to go on. Python runs
signal handlers in the main thread between bytecodes, so they only hand work to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Final

log = logging.getLogger(__name__)

STOPS: Final = (signal.SIGTERM, signal.SIGINT)
BeginDrain = Callable[[Callable[[], None]], None]


class _Handlers:
    """The handlers, and what they replaced."""

    def __init__(self, begin_drain: BeginDrain, draining: Callable[[], bool], reload: Callable[[], object]) -> None:
        self._loop = asyncio.get_running_loop()
        self._begin_drain = begin_drain
        self._draining = draining
        self._reload = reload
        self.previous: dict[int, object] = {}

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        server_exit = self.previous[signum]
        assert callable(server_exit)
        name = signal.Signals(signum).name
        if not self._draining():
            log.warning("%s: draining before exit", name)
            self._loop.call_soon_threadsafe(self._begin_drain, partial(server_exit, signum, None))
        elif signum == signal.SIGINT:
            server_exit(signum, frame)  # Ctrl-C again: exit now, as uvicorn does
        else:
            log.info("%s while draining: the drain goes on (Ctrl-C again to exit now)", name)

    def on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._loop.call_soon_threadsafe(self._reload)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            if sig in STOPS:
                signal.signal(sig, handler)  # type: ignore[arg-type]
            else:
                signal.signal(sig, signal.SIG_IGN)  # a reload racing the shutdown must not kill it


def install(begin_drain: BeginDrain, draining: Callable[[], bool], reload: Callable[[], object]) -> Callable[[], None]:
    """Take over the stop signals and SIGHUP; returns what puts the previous handlers back. Does
    nothing off the main thread (signals can only be handled there); leaves a stop signal alone
    that has no server handler to hand the exit to."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    handlers = _Handlers(begin_drain, draining, reload)
    for sig in STOPS:
        handler = signal.getsignal(sig)
        if callable(handler):
            handlers.previous[sig] = handler
            signal.signal(sig, handlers.on_stop)
    if hasattr(signal, "SIGHUP"):
        handlers.previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, handlers.on_hup)
    return handlers.restore
