"""SIGTERM and SIGINT drain before the server exits; SIGHUP reloads the config.

uvicorn installs its own SIGTERM/SIGINT handlers (with ``signal.signal``) before the app starts,
and exits as soon as one arrives: the requests in flight get its hard-coded graceful time-out, then
are cut. Here the first such signal starts the drain instead, and uvicorn's handler is called when
the drain is done; a second signal goes straight to uvicorn's (exit now). Python runs signal
handlers in the main thread between bytecodes, so they only hand work to the event loop.
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


def install(
    begin_drain: Callable[[Callable[[], None]], None], draining: Callable[[], bool], reload: Callable[[], object]
) -> Callable[[], None]:
    """Take over the stop signals and SIGHUP; returns what puts the previous handlers back. Does
    nothing off the main thread (signals can only be handled there) or without a server handler
    to hand the exit to."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, object] = {}

    def on_stop(signum: int, frame: FrameType | None) -> None:
        server_exit = previous[signum]
        assert callable(server_exit)
        if draining():
            server_exit(signum, frame)  # a second signal: exit now
            return
        log.warning("%s: draining before exit", signal.Signals(signum).name)
        loop.call_soon_threadsafe(begin_drain, partial(server_exit, signum, None))

    def on_hup(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(reload)

    for sig in STOPS:
        handler = signal.getsignal(sig)
        if callable(handler):
            previous[sig] = handler
            signal.signal(sig, on_stop)
    if hasattr(signal, "SIGHUP"):
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)

    def restore() -> None:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)  # type: ignore[arg-type]

    return restore
