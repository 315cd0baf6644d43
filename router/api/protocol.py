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

import array
import asyncio
import fcntl
import functools
import logging
import secrets
import termios
from typing import Any, Final, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from router.config import ServerConfig
from router.errors import ClientError, HeadersTooLarge, InvalidRequest, PayloadTooLarge, RequestTimeout, encode_error

log = logging.getLogger(__name__)
ABORT: Final = "switchboard.abort"
_OUTQ: Final = getattr(termios, "TIOCOUTQ", None)  # on a TCP socket: bytes not yet acknowledged
_REASONS: Final = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
}


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
        self._begun = False  # a request line has started and its headers are not all in yet
        self._received = 0  # bytes of the current request (head, body, trailers) as sent
        self._extensions: dict[str, dict[object, object]] = {ABORT: {"abort": self._abort_current}}  # shared
        # The header or body deadline (loop time; 0: none) and the one timer that watches it. Moving
        # the deadline is a store, not a new timer: the timer, when it fires early, re-arms itself
        # for the deadline then in force, so a request costs no timer of its own.
        self._deadline = 0.0
        self._phase = ""
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._unsent = 0  # the write buffer's size when the write timer was last armed
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
            self._unsent = self._outstanding()
            self._write_timer = self.loop.call_later(self._limits.write_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        self._writable()
        super().resume_writing()

    def _outstanding(self) -> int:
        """Bytes written but not yet taken by the client: the transport's buffer, plus the
        kernel's send queue where the platform tells it (the kernel may hold megabytes, and the
        transport's buffer only moves when a large part of them has drained)."""
        pending = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None and _OUTQ is not None:
            try:
                queue = array.array("i", [0])
                fcntl.ioctl(sock.fileno(), _OUTQ, queue, True)
                pending += queue[0]
            except (OSError, ValueError):
                pass
        return pending

    def _writable(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _stalled(self) -> None:
        self._write_timer = None
        unsent = self._outstanding()
        if unsent < self._unsent:  # a slow reader, but a reader: give it another period
            self._unsent = unsent
            self._write_timer = self.loop.call_later(self._limits.write_timeout_s, self._stalled)
            return
        log.warning(
            "client-stalled client=%s: took no bytes for %gs; connection closed",
            self.client,
            self._limits.write_timeout_s,
        )
        self._abort(self.cycle)

    def data_received(self, data: bytes) -> None:
        # The common case, a request whose head (and body) arrive in one read, costs a few flag
        # checks here: the deadlines are only set when a read leaves a request unfinished.
        if self._refused:
            return
        self._received += len(data)
        super().data_received(data)
        self._after_read()

    def _after_read(self) -> None:
        if self._refused:
            return
        limits = self._limits
        if self._in_head:
            # httptools buffers an unfinished header line itself, copying it on every read:
            # stop feeding it past the limit.
            if self._received > limits.max_header_bytes:
                self._refuse(HeadersTooLarge(self._too_large("bytes")))
            elif self._begun and not self._deadline:
                self._arm(limits.header_timeout_s, "headers")
        elif self._received > limits.max_header_bytes + limits.max_body_bytes:  # trailers, chunk framing
            self._refuse(
                PayloadTooLarge(f"The request is larger than this gateway accepts ({limits.max_body_bytes} bytes).")
            )
        elif not self._deadline and not self.pipeline:  # a queued request is not read until its turn
            self._arm(limits.body_timeout_s, "body")

    def send_400_response(self, msg: str) -> None:
        self._refuse(InvalidRequest(f"{msg} The request line or a header is malformed.", code="invalid_http_request"))

    # ---- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._in_head:  # the next request on a kept-alive connection
            self._in_head, self._received = True, 0
        self._begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._begun = False
        if self._refused:
            return
        limits = self._limits
        if len(self.headers) > limits.max_headers:
            self._refuse(HeadersTooLarge(self._too_large("fields")))
            return
        # A whole head that arrived in one read passed data_received's check: measure it, when
        # the read was large enough to hold one past the limit.
        if self._received > limits.max_header_bytes and self._head_size() > limits.max_header_bytes:
            self._refuse(HeadersTooLarge(self._too_large("bytes")))
            return
        self._in_head = False
        super().on_headers_complete()
        self.scope["extensions"] = self._extensions

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._received = True, 0
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
        if self.pipeline:  # an earlier request's answer may be on the wire: no room for another
            self._abort(cycle)
            return
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:  # mid-answer to an earlier request: no room for another
                self._abort(cycle)
                return
            cycle.disconnected = True  # the app, if it runs, must not write after this
            cycle.message_event.set()
        if self.transport.is_closing():
            return
        request_id = "req_" + secrets.token_hex(12)  # refused before it reached the app: an id of its own
        body = encode_error(error, request_id)
        head = [b"HTTP/1.1 %d %s\r\n" % (error.status, _REASONS.get(error.status, b"Error"))]
        head.extend(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        head.append(b"x-request-id: " + request_id.encode() + b"\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _abort_current(self) -> None:
        self._abort(self.cycle)

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
