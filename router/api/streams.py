"""SSE toward the client.

Every event every event is ``data: {chunk}\\n\\n`` and the stream ends with
``data: [DONE]\\n\\n``; an error after the first chunk is one ``data: {"error": …}`` event and the
end, with no ``[DONE]`` (the openai SDK raises on it). Everything read in one upstream read goes
out in one write, so nothing waits for a later event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from litestar.types import Receive, Scope, Send

from providers.errors import SwitchboardError, UpstreamTimeout
from router.api.disconnect import ClientWatch
from router.api.drain import ENDED_BY_DRAIN, GRACE_S, Drain
from router.api.keepalive import KeepAlive
from router.api.responses import abort_client
from router.errors import ShuttingDown, encode_error, internal_error
from router.gateway.failover import Gateway, OpenStream
from router.gateway.outcome import Exchange
from router.gateway.tracing import Trace
from router.gateway.upstream_stream import UpstreamStream

log = logging.getLogger(__name__)

DONE_FRAME: Final = b"data: [DONE]\n\n"
SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
IDLE_SLACK: Final = 0.5  # of idle_s: how far past it the idle timer may be set


def frame(payloads: Sequence[bytes]) -> bytes:
    if len(payloads) == 1:
        return b"data: " + payloads[0] + b"\n\n"
    return b"".join([b"data: " + p + b"\n\n" for p in payloads])


def _framer(trace: Trace | None) -> Callable[[Sequence[bytes]], bytes]:
    """``frame``, noting each chunk for the answer's span when message content is captured."""
    content = trace.streamed if trace is not None else None
    if content is None:
        return frame

    def framed(payloads: Sequence[bytes]) -> bytes:
        content.add(payloads)
        return frame(payloads)

    return framed


def error_frame(exc: SwitchboardError, request_id: str | None = None) -> bytes:
    return b"data: " + encode_error(exc, request_id) + b"\n\n"


class Framing(Protocol):
    """How a stream's chunks reach the client in its own API's events."""

    def frames(self, payloads: Sequence[bytes]) -> bytes: ...

    def done(self) -> bytes: ...

    def error(self, exc: SwitchboardError, request_id: str | None) -> bytes: ...


class ChatFraming:
    """Chat Completions: ``data: {chunk}`` events and ``data: [DONE]``."""

    __slots__ = ("frames",)

    def __init__(self, trace: Trace | None) -> None:
        self.frames = _framer(trace)

    def done(self) -> bytes:
        return DONE_FRAME

    def error(self, exc: SwitchboardError, request_id: str | None) -> bytes:
        return error_frame(exc, request_id)


# A framing's ``resume``, when it has one: the stream to go on with after one failed mid-way.
Resume = Callable[[OpenStream, SwitchboardError], Awaitable[OpenStream | None]]


class SSEResponse:
    """The client's side of a stream, as a plain ASGI app.

    It writes each batch of chunks as it arrives and holds nothing once written. The request's
    ``ClientWatch`` cancels the relay when the client disconnects, which closes the upstream. It
    tells the target's lease how the stream went: whole, failed (which counts against the
    breaker), or abandoned by the client (which does not); ``code`` says it for the record. What
    the stream holds is released by its owner (``router.api.chat``), not here.
    """

    __slots__ = (
        "_complete",
        "_drain",
        "_exchange",
        "_framing",
        "_gateway",
        "_head_sent",
        "_headers",
        "_keep",
        "_last",
        "_on_drain",
        "_resume",
        "_watch",
        "code",
        "opened",
    )

    def __init__(
        self,
        opened: OpenStream,
        headers: list[tuple[bytes, bytes]],
        watch: ClientWatch,
        gateway: Gateway,
        exchange: Exchange,
        framing: Framing | None = None,
        keep: KeepAlive | None = None,
        drain: Drain | None = None,
        resume: Resume | None = None,
        on_drain: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._drain = drain
        self._on_drain = on_drain  # hands the stream to another replica, if it can: True then
        self._framing = framing or ChatFraming(exchange.trace)
        self._keep = keep
        self._exchange = exchange
        self._resume = resume
        self._head_sent = False
        self._complete = False  # the relay is over: only the end of the body is left to send
        self._last: bytes | None = None  # the stream's last event ([DONE] or an error), once framed
        self.opened = opened  # the stream being relayed (another after a continuation)
        self._headers = headers
        self._watch = watch
        self._gateway = gateway
        self.code: str | None = "client_disconnected"  # until the stream ends otherwise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch, exchange, keep = self._watch, self._exchange, self._keep
        self._gateway.bulkhead.streams += 1
        try:
            if keep is None or not await keep.settle():  # keep-alive may have sent the head already
                if keep is not None:
                    keep.idle_since = None  # writing
                await send({"type": "http.response.start", "status": 200, "headers": self._headers})
                if keep is not None:
                    keep.started = True
            self._head_sent = True
            failure = await self._relay_all(send)
            self._complete = True
            if keep is not None:
                await keep.stop()  # before the end: nothing may follow it
            lease = self.opened.lease
            if isinstance(failure, ClientStalled):
                lease.abandoned()  # nothing learned about the target
                await watch.stop()
                exchange.client_disconnected = True
                abort_client(scope)
                return
            if failure is None:
                lease.succeeded()
                self.code = None
            else:
                lease.failed(failure)
                self.code = failure.code or "upstream_failed"
            await watch.stop()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if watch.absorb():
                exchange.client_disconnected = True
                return
            task = asyncio.current_task()
            if self._drain is None or task is None or not self._drain.claims(task):
                raise  # the server is going down without a drain
            await self._ended_by_drain(send)
        finally:
            self._gateway.bulkhead.streams -= 1

    async def _ended_by_drain(self, send: Send) -> None:
        """The drain's time ran out with this stream still going: handed off to another replica
        where it can be (a resumable stream), else one error event; then a proper end (the head
        first, if the cancel came before it went out; only the end, if the relay was over)."""
        self.opened.lease.abandoned()  # a no-op when the relay has ended it
        head_sent = (await self._keep.stop() if self._keep is not None else False) or self._head_sent
        if self._last is not None and not self._complete:  # framed, perhaps not out: once more
            await self._write_until(send, self._last, asyncio.get_running_loop().time() + GRACE_S)
        if self._complete or self._last is not None:  # its last event is out: only the end is left
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if head_sent and self._on_drain is not None and await self._on_drain():
            self.code = "handed_off"
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        self.code = ShuttingDown.code
        if not head_sent:
            await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        error = self._framing.error(ShuttingDown(ENDED_BY_DRAIN), self._exchange.request_id)
        if await self._write_until(send, error, self.opened.deadline):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relay_all(self, send: Send) -> SwitchboardError | None:
        """Relay, going on at another target each time the upstream fails and ``resume`` gives
        a stream to go on with; a failure that stays one is sent as an error event."""
        failure = await self._relay(send)
        while failure is not None and not isinstance(failure, ClientStalled) and self._resume is not None:
            if self._keep is not None:  # the next target may take a while: comments meanwhile
                self._keep.idle_since = asyncio.get_running_loop().time()
            resumed = await self._resume(self.opened, failure)  # mid-stream failover, if it can
            if self._keep is not None:
                self._keep.idle_since = None
            if resumed is None:
                break
            self.opened = resumed
            failure = await self._relay(send)
        if failure is not None and not isinstance(failure, ClientStalled):
            failure = await self._fail(send, failure)
        return failure

    async def _fail(self, send: Send, failure: SwitchboardError) -> SwitchboardError:
        """The upstream failed mid-way: one error event, and the failure (or ``ClientStalled``)."""
        log.warning("stream-failed target=%s reason=%r", self.opened.target.label, failure.message)
        error = self._last = self._framing.error(failure, self._exchange.request_id)
        if not await self._write_until(send, error, self.opened.deadline):
            return self._stalled()
        return failure

    async def _relay(self, send: Send) -> SwitchboardError | None:
        """Relay until the end; the upstream's failure, if it failed mid-way, or ``ClientStalled``
        if a write to the client did not finish in time.

        One timer bounds the wait for the upstream's next chunk (``idle_s``) and the write that
        follows it, all within the request's deadline (``total_s``). It is set ``IDLE_SLACK`` past
        the idle time and moved only when fewer than ``idle_s`` remain, so a silence of ``idle_s``
        to 1.5 x ``idle_s`` ends the stream, and a stream whose events keep coming moves it about
        every ``idle_s / 2``, not once per read (rescheduling costs a timer handle each time).
        uvicorn's send waits while the client's socket buffer is full, so an unread
        stream pulls nothing more; the server protocol cuts off a client that takes no bytes for
        ``server.write_timeout_s`` (``router.api.protocol``)."""
        opened, keep = self.opened, self._keep
        upstream, idle_s, deadline = opened.upstream, self._gateway.timeouts.idle_s, opened.deadline
        slack = idle_s * IDLE_SLACK
        loop = asyncio.get_running_loop()
        framing = self._framing
        framed = framing.frames
        # An open stream holds no more than it is writing: its first chunks are let go of once
        # framed (whoever else still holds the OpenStream).
        first, opened.first = opened.first, ()
        pending = framed(first) if first else None  # the write in progress
        del first
        self._exchange.first_chunk()
        finished = False
        failure: SwitchboardError
        while True:
            try:
                fires = min(loop.time() + idle_s + slack, deadline)
                async with asyncio.timeout_at(fires) as timer:
                    while True:
                        if pending is not None:
                            await send({"type": "http.response.body", "body": pending, "more_body": True})
                            pending = None
                        if finished:
                            break
                        now = loop.time()
                        if fires - now < idle_s and fires < deadline:
                            fires = min(now + idle_s + slack, deadline)
                            timer.reschedule(fires)
                        payloads = await (upstream.pull() if keep is None else _pull(upstream, keep, now))
                        if payloads is None:
                            pending, finished = framing.done(), True
                            self._last = pending
                        else:
                            pending = framed(payloads)
            except TimeoutError:
                if pending is None:
                    reason = (
                        "the request deadline passed" if loop.time() >= deadline else f"it sent nothing for {idle_s:g}s"
                    )
                    failure = UpstreamTimeout(f"provider '{upstream.provider}' stream stopped: {reason}")
                    break
                # The idle window ran out while the client's buffer was full. uvicorn's send waits
                # for it to drain before writing anything, so nothing of this write went out: it
                # gets the rest of the request's time, then the relay goes on.
                if not await self._write_until(send, pending, deadline):
                    return self._stalled()
                pending = None
                continue
            except SwitchboardError as exc:
                failure = exc
                break
            except Exception:
                log.exception("stream from %s failed mid-way", upstream.provider)
                failure = internal_error()
                break
            self._complete = True  # [DONE] is out: what is left is reading the upstream to its end
            await upstream.drain()
            return None
        return failure

    @staticmethod
    async def _write_until(send: Send, body: bytes, deadline: float) -> bool:
        """Write ``body`` before the loop time ``deadline``; False if the client did not take it."""
        try:
            async with asyncio.timeout_at(deadline):
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except TimeoutError:
            return False
        return True

    def _stalled(self) -> ClientStalled:
        log.warning(
            "client-stalled target=%s: a write to the client outlasted the request's deadline; closed",
            self.opened.target.label,
        )
        return ClientStalled("the client stopped reading")


async def _pull(upstream: UpstreamStream, keep: KeepAlive, now: float) -> Sequence[bytes] | None:
    """The upstream's next chunks, the wait marked as a silence keep-alive may fill."""
    keep.idle_since = now
    try:
        return await upstream.pull()
    finally:
        keep.idle_since = None


class ClientStalled(SwitchboardError):
    """The client took no bytes for ``server.write_timeout_s`` (or past the deadline): both sides
    are closed. The target is not to blame."""
