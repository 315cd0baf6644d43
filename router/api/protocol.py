"""uvicorn's httptools protocol with the limits it lacks, and its refusals in OpenAI's shape.

httptools accumulates a request line and headers without bound and uvicorn sets no deadline for
receiving them, so one client could hold hundreds of megabytes or a connection forever. Here:

- the request line and headers together may take ``max_header_bytes``, and there may be at most
  ``max_headers`` header fields: above either, 431;
- a connection must deliver a request's headers within ``header_timeout_s`` of its first byte
  (or of connecting), and the body within ``body_timeout_s`` of the headers: else 408;
- a request the parser rejects (malformed request line, CR or LF inside a header) gets a 400;

every one of them as ``{"error": {...}}`` and the connection closed; and a client that takes no
bytes of an answer for ``write_timeout_s`` is disconnected (the app then sees it gone and closes
its upstream). Each request's scope also carries ``extensions["switchboard.abort"]``, which the
app calls to drop a client whose stream outlasted the request's deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Final, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from router.config import ServerConfig
from router.errors import ClientError, InvalidRequest, encode_error

log = logging.getLogger(__name__)
ABORT: Final = "switchboard.abort"
_REASONS: Final = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class HeadersTooLarge(ClientError):
    status = 431
    code = "request_header_fields_too_large"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class GuardedHttpTools(HttpToolsProtocol):
    """One client connection (uvicorn makes one per connection)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ServerConfig,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits
        self._in_head = True  # between requests, or reading a request line and headers
        self._head_bytes = 0
        self._fields = 0
        self._parsed = 0  # bytes of request line and headers the parser has handed over
        # The header or body deadline (loop time; 0: none) and the one timer that watches it. Moving
        # the deadline is a store, not a new timer: the timer, when it fires early, re-arms itself
        # for the deadline then in force, so a request costs no timer of its own.
        self._deadline = 0.0
        self._phase = ""
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # ---- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._limits.header_timeout_s, "headers")  # a connection that never sends a byte

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._writable()
        super().connection_lost(exc)

    # The transport calls these when its write buffer passes the high-water mark and when it
    # drains again: a client that takes no bytes for write_timeout_s in between is cut off. Armed
    # only while the buffer is full, so a client that reads costs nothing here.
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self._limits.write_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        self._writable()
        super().resume_writing()

    def _writable(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _stalled(self) -> None:
        self._write_timer = None
        log.warning(
            "client-stalled client=%s: took no bytes for %gs; connection closed",
            self.client,
            self._limits.write_timeout_s,
        )
        self._abort(self.cycle)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            if not self._deadline:
                self._arm(self._limits.header_timeout_s, "headers")
            self._head_bytes += len(data)
        super().data_received(data)
        # httptools buffers an unfinished header line itself: stop feeding it past the limit.
        if self._in_head and self._head_bytes > self._limits.max_header_bytes and not self._refused:
            self._refuse(HeadersTooLarge(self._too_large("bytes")))

    def send_400_response(self, msg: str) -> None:
        self._refuse(InvalidRequest(f"{msg} The request line or a header is malformed.", code="invalid_http_request"))

    # ---- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._in_head:  # the next request on a kept-alive connection
            self._in_head, self._head_bytes = True, 0
        self._fields = self._parsed = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._parsed += len(name) + len(value) + 4
        if self._fields <= self._limits.max_headers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        if self._refused:
            return
        if self._fields > self._limits.max_headers:
            self._refuse(HeadersTooLarge(self._too_large("fields")))
            return
        if self._parsed > self._limits.max_header_bytes:  # a whole head that arrived in one read
            self._refuse(HeadersTooLarge(self._too_large("bytes")))
            return
        self._in_head = False
        super().on_headers_complete()
        cycle = self.cycle
        self.scope.setdefault("extensions", {})[ABORT] = {"abort": functools.partial(self._abort, cycle)}
        self._arm(self._limits.body_timeout_s, "body")

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0
        if not self._refused:
            super().on_message_complete()

    # ---- refusals ----------------------------------------------------------------------------

    def _too_large(self, what: str) -> str:
        if what == "bytes":
            limit = self._limits.max_header_bytes
            return f"The request line and headers are larger than this gateway accepts ({limit} bytes)."
        return f"The request has more header fields than this gateway accepts ({self._limits.max_headers})."

    def _arm(self, seconds: float, phase: str) -> None:
        self._deadline = deadline = self.loop.time() + seconds
        self._phase = phase
        timer = self._timer
        if timer is None:
            self._timer = self.loop.call_at(deadline, self._check)
        elif timer.when() > deadline:  # an earlier deadline than the timer's: bring it forward
            timer.cancel()
            self._timer = self.loop.call_at(deadline, self._check)

    def _disarm(self) -> None:
        self._deadline = 0.0

    def _check(self) -> None:
        self._timer = None
        deadline = self._deadline
        if not deadline or self.transport.is_closing():
            return
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._check)
            return
        self._expired()

    def _expired(self) -> None:
        phase = self._phase
        seconds = self._limits.header_timeout_s if phase == "headers" else self._limits.body_timeout_s
        self._deadline = 0.0
        cycle = self.cycle
        if phase == "body" and cycle is not None and cycle.response_started:
            self._abort(cycle)  # the app answered already; the rest of the body will not come
            return
        log.info("client-timeout phase=%s after=%gs client=%s", phase, seconds, self.client)
        self._refuse(RequestTimeout(f"The request {phase} did not arrive within {seconds:g}s."))

    def _refuse(self, error: ClientError) -> None:
        """Answer ``error`` and close: nothing more is read from this connection."""
        self._refused = True
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:  # mid-answer to an earlier request: no room for another
                self._abort(cycle)
                return
            cycle.disconnected = True  # the app, if it runs, must not write after this
            cycle.message_event.set()
        if self.transport.is_closing():
            return
        body = encode_error(error)
        head = [b"HTTP/1.1 %d %s\r\n" % (error.status, _REASONS.get(error.status, b"Error"))]
        head.extend(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _abort(self, cycle: Any) -> None:
        """Drop the connection now (a client that stopped reading): no more writes, no log noise."""
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        if not self.transport.is_closing():
            self.transport.abort()


def http_protocol(limits: ServerConfig) -> type[asyncio.Protocol]:
    """What uvicorn's ``http=`` takes: the guarded protocol with this config's limits. A partial
    of a module-level class, so it pickles into uvicorn's worker processes."""
    return cast("type[asyncio.Protocol]", functools.partial(GuardedHttpTools, limits=limits))
