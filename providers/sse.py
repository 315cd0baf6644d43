"""Incremental Server-Sent Events parser (WHATWG HTML §9.2), bytes in, events out.

One parser for every upstream stream. Lines are split on CR, LF or CRLF before any UTF-8
decoding (those bytes never occur inside a multi-byte character), a CR ending one read and an
LF starting the next count as one line ending, and one leading BOM is stripped. ``data`` stays
``bytes`` because its consumer is a JSON decoder or the client socket, never a ``str``.
"""

from __future__ import annotations

from typing import Final

import msgspec

_BOM: Final = b"\xef\xbb\xbf"
_LINE_ENDS: Final = (b"\n", b"\r")


class SSEEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event. ``event`` is ``"message"`` unless the stream named it."""

    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class EventTooLarge(Exception):
    """An event (or one line of it) grew past the parser's ``max_event_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a stream event is larger than {limit} bytes")
        self.limit = limit


class SSEParser:
    """Feed it the bytes of a stream as they arrive; it returns the events each read completes.

    An event is dispatched by a blank line. Comments (``: keep-alive``) and unknown fields are
    ignored; an event whose data is empty is not dispatched, and a partial event left at the end
    of the stream is discarded, as the specification says. An unfinished line is kept as a list
    of pieces and joined once its end arrives, so a long line costs linear time; an event or line
    past ``max_event_bytes`` raises ``EventTooLarge``.
    """

    __slots__ = (
        "_counted",
        "_counted_in",
        "_data",
        "_data_len",
        "_event",
        "_last_id",
        "_limit",
        "_pending",
        "_pending_len",
        "_retry",
        "_separator",
        "_skip_lf",
        "_started",
    )

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024, separator: bytes = b"\n") -> None:
        """``separator`` joins the data lines of one event: LF, as the specification says, or a
        space for JSON payloads, which then stay one line when relayed (LF and space are the
        same whitespace to JSON, and neither can sit inside a JSON string)."""
        self._limit = max_event_bytes
        self._separator = separator
        self._counted_in: list[bytes] | None = None  # the event data list _data_len counts
        self._counted = 0  # how many of its lines
        self._pending: list[bytes] = []  # pieces of an incomplete line carried over to the next read
        self._pending_len = 0
        self._skip_lf = False  # the last read ended with CR: an LF opening the next one is its pair
        self._started = False  # the BOM check is done
        self._data: list[bytes] = []
        self._data_len = 0
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._whole_lines(chunk)
        if not text:
            return []
        lines = text.splitlines(keepends=True)
        if not lines[-1].endswith(_LINE_ENDS):
            self._hold(lines.pop())
        elif text[-1] == 0x0D:
            self._skip_lf = True
        events: list[SSEEvent] = []
        for line in lines:
            event = self._line(line.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        if self._data:
            self._check_open_event()
        if len(text) > self._limit and any(len(e.data) > self._limit for e in events):
            raise EventTooLarge(self._limit)  # only a read past the limit can hold such an event whole
        return events

    def _check_open_event(self) -> None:
        """An event still open after a read may go on growing over later reads: count its data
        (each line once) against the limit. Within one read it is bounded by the read itself."""
        data = self._data
        if self._counted_in is not data:
            self._counted_in, self._counted, self._data_len = data, 0, 0
        self._data_len += sum(len(line) + 1 for line in data[self._counted :])
        self._counted = len(data)
        if self._data_len > self._limit:
            raise EventTooLarge(self._limit)

    def _whole_lines(self, chunk: bytes) -> bytes:
        """The held-over piece and this read as one, from the first byte to parse; empty while a
        line is still unfinished (the read is then held, not copied)."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if not chunk:
            return b""
        if self._pending:
            if chunk.find(b"\n") < 0 and chunk.find(b"\r") < 0:
                self._hold(chunk)
                return b""
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending, self._pending_len = [], 0
        if not self._started:
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._hold(chunk)  # could still become a BOM
                return b""
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        return chunk

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_len += len(piece)
        if self._pending_len > self._limit:
            raise EventTooLarge(self._limit)

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == 0x3A:  # ':' starts a comment
            return None
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        if data is self._counted_in and self._data_len + sum(len(line) for line in data[self._counted :]) > self._limit:
            raise EventTooLarge(self._limit)  # an event that spanned reads, whole at last
        payload = data[0] if len(data) == 1 else self._separator.join(data)
        if not payload:
            return None
        return SSEEvent(payload, event or "message", self._last_id, self._retry)
