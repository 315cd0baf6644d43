"""What every API handler does around its own translation: the request's record (``begin``), the
caller (``identify``), its limits (``admit``), the body (``read_body``), the server-side
parameters (``governed``), the answer or stream (``serve``), and the end of the record
(``finish``, ``failed``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, Final, NamedTuple

import msgspec
from litestar.types import HTTPScope, Receive, Send

from providers.base import Inbound
from providers.errors import SwitchboardError
from router.access.guard import Caller, Guard, key_id_of_caller
from router.access.limits import Admitted
from router.access.policy import apply as apply_policy
from router.api import resumable
from router.api.decode import decode_call
from router.api.disconnect import ClientWatch
from router.api.drain import ENDED_BY_DRAIN, GRACE_S, Drain
from router.api.keepalive import KeepAlive
from router.api.responses import CLIENT_GONE, JSONBody
from router.api.streams import SSE_HEADERS, Framing, Resume, SSEResponse, error_frame
from router.config_schema import ParamsPolicy, StreamsConfig
from router.errors import InvalidRequest, PayloadTooLarge, ShuttingDown, internal_error
from router.gateway.failover import Answer, Gateway, OpenStream
from router.gateway.outcome import REQUEST_ID_KEY, Exchange
from router.gateway.routing import Target
from router.state.stream_logs import StreamLog
from router.telemetry.spans import RequestTrace

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode

REQUEST_ID_HEADER: Final = b"x-request-id"
TARGET_HEADER: Final = b"x-switchboard-target"
ATTEMPTS_HEADER: Final = b"x-switchboard-attempts"
DROPPED_HEADER: Final = b"x-switchboard-dropped-params"
_HEADER_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.\-]")


def begin(scope: HTTPScope, path: str, operation: str = "chat", content: bool = False) -> Exchange:
    """The request's record, its id where the error handlers find it, and its trace (message
    content on the spans only where ``content`` and the tracing setup both say so)."""
    state = scope["app"].state
    outcomes = state.outcomes
    exchange = Exchange(outcomes, outcomes.ids.of(scope["headers"]), operation=operation)
    scope["state"][REQUEST_ID_KEY] = exchange.request_id
    tracing = state.tracing
    if tracing is not None:
        capture = content and tracing.capture_content
        exchange.trace = RequestTrace(tracing, scope["headers"], path, capture, operation)
    return exchange


def identify(guard: Guard, scope: HTTPScope, exchange: Exchange) -> Caller:
    """The caller (before the body is read), noted on the record."""
    caller = guard.authenticate(scope["headers"])
    exchange.key_id = key_id_of_caller(caller)
    exchange.team_id = caller.team.id if caller.team is not None else None
    return caller


async def admit(
    scope: HTTPScope, caller: Caller, exchange: Exchange, model: str, estimate: Callable[[], int]
) -> Admitted | None:
    """The request's share of its limits, or a refusal. Open mode has no limits, budgets or spend
    to reserve for: nothing is estimated. An admission gets an id of its own (never the client's
    x-request-id: two requests sharing one must still count twice), made only if Redis needs one."""
    state = scope["app"].state
    guard: Guard = state.guard
    if not guard.enforcing:
        return None
    exchange.reserved_tokens = estimate()
    return await guard.admit(caller, model, exchange.reserved_tokens, state.outcomes.ids.next)


def governed(call: Inbound, caller: Caller, policies: Mapping[str, ParamsPolicy]) -> Inbound:
    """Server-side parameters, each decoded again and checked again: the key's own first (they
    judge what its holder sent), then the alias's, which have the last word for everyone."""
    if caller.params is not None:
        call = decode_call(_encode(apply_policy(call.chat, call.fields, call.chat.model, caller.params)))
    policy = policies.get(call.chat.model)
    if policy is not None:
        call = decode_call(_encode(apply_policy(call.chat, call.fields, call.chat.model, policy)))
    return call


def failed(exchange: Exchange, admission: Admitted | None, exc: BaseException) -> None:
    """End the record of a request that raised ``exc``: its own status and code, a 500 for a bug,
    a 503 when cancelled (the server is shutting down)."""
    if isinstance(exc, SwitchboardError):
        finish(exchange, admission, exc.status, exc.code)
    elif isinstance(exc, Exception):
        finish(exchange, admission, 500, "internal_error")
    else:
        finish(exchange, admission, 503, "cancelled")


def finish(exchange: Exchange, admission: Admitted | None, status: int, code: str | None) -> None:
    """End the request's record, then true up its limits with what it really used."""
    try:
        exchange.finish(status, code)
    finally:
        if admission is not None:
            usage = exchange.usage
            admission.settle(usage.prompt + usage.completion if usage is not None else None)


async def read_body(scope: HTTPScope, receive: Receive, limit: int) -> bytes:
    """The request body, refused with a 413 past ``limit`` bytes (announced or received)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"The request body is larger than this gateway accepts ({limit} bytes).")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # nobody will read this answer, but it must be one
            raise InvalidRequest("The client disconnected before sending the whole request body.")
        body = message.get("body", b"")
        assert isinstance(body, bytes)
        size += len(body)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than this gateway accepts ({limit} bytes).")
        chunks.append(body)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


EarlyError = Callable[[SwitchboardError, str | None], bytes]
# A stream's hand-off record (``router.api.handoff``): what another replica needs to go on with
# it, from the request's record and the stream being relayed; None when it cannot go on faithfully.
HandOffRecord = Callable[[Exchange, OpenStream], bytes | None]
HANDED_OFF: Final = (
    "Switchboard is shutting down; this stream goes on at another instance: GET /v1/streams/{} "
    "with the Last-Event-ID of the last event you got."
)


class Resumed(NamedTuple):
    """A stream taken over from a replica that handed it off: its log, and the events in it."""

    log: StreamLog
    events: int


class _Held:
    """What one request holds while it is served, released once by ``release``."""

    __slots__ = ("keep", "log", "opened", "relay", "watch")

    def __init__(self, watch: ClientWatch) -> None:
        self.watch = watch
        self.opened: OpenStream | None = None
        self.keep: KeepAlive | None = None
        self.relay: SSEResponse | None = None  # its stream may replace ``opened`` (a continuation)
        self.log: StreamLog | None = None  # a resumable stream's events

    async def release(self, exchange: Exchange) -> None:
        self.watch.close()
        if self.log is not None:
            await self.log.end()
        if self.keep is not None:
            await self.keep.stop()
        opened = self.relay.opened if self.relay is not None else self.opened
        if opened is not None:
            opened.lease.abandoned()  # a no-op when the relay has ended it
            try:
                await opened.upstream.aclose()
            except Exception:  # the answer is whole or gone: closing must not turn it into an error
                log.warning("closing the upstream stream of %s failed", opened.target.label, exc_info=True)
            finally:
                exchange.reported(opened.upstream.report)


async def serve(
    gateway: Gateway,
    scope: HTTPScope,
    receive: Receive,
    send: Send,
    exchange: Exchange,
    extra: list[tuple[bytes, bytes]],
    answer: Callable[[], Awaitable[Answer]] | None,
    stream: Callable[[], Awaitable[OpenStream]] | None = None,
    framing: Callable[[OpenStream, Exchange], Framing] | None = None,
    early_error: EarlyError = error_frame,
    hand_off: HandOffRecord | None = None,
    resumed: Resumed | None = None,
) -> tuple[int, str | None]:
    """Answer the request (from ``stream`` when given, else from ``answer``); the status and code
    it ended with. This is the one owner of what a request holds: the bulkhead slot, its place
    in the drain, the client watch, the stream's keep-alive and, for a stream, the upstream
    response and its target's lease are each released here, once, however the request ends (the
    relay only reports to the lease how the stream went). A stream whose keep-alive committed the
    response before any target answered ends a failure with ``early_error``, the client API's own
    error event. A resumable stream with ``hand_off`` is handed to another replica when the drain
    ends it; ``resumed`` goes on with a stream so handed, into its log, with no client here."""
    drain: Drain = scope["app"].state.drain
    if drain.draining:
        raise ShuttingDown("Switchboard is shutting down; retry, and another instance will answer.")
    gateway.bulkhead.enter()
    task = asyncio.current_task()
    assert task is not None
    drain.enter(task)
    held = _Held(ClientWatch(receive))
    base = [(REQUEST_ID_HEADER, exchange.request_id.encode()), *extra]
    try:
        if stream is not None:
            served = _Served(stream, framing, early_error, hand_off, resumed)
            return await _stream(held, gateway, scope, receive, send, exchange, base, served)
        assert answer is not None
        whole = await answer()
        await held.watch.stop()  # the answer is in: the end of the response would read as a disconnect
        exchange.first_chunk()
        if exchange.trace is not None:
            exchange.trace.answer(whole.body)
        await JSONBody(whole.body, _headers(base, whole.target, whole.calls, whole.dropped))(scope, receive, send)
        return 200, None
    except asyncio.CancelledError:
        if not held.watch.absorb():
            if not drain.claims(task):
                raise  # the server is going down without a drain
            return await _ended_by_drain(held, send, exchange, early_error)
        exchange.client_disconnected = True
        if held.keep is None or not await held.keep.stop():  # a committed response has its head already
            await CLIENT_GONE(scope, receive, send)
        return CLIENT_GONE.status, "client_disconnected"
    finally:
        try:
            try:
                await held.release(exchange)
            except asyncio.CancelledError:
                if not drain.claims(task):
                    raise
                await held.release(exchange)  # the drain's cancel came as the request ended: release all
        finally:
            gateway.bulkhead.leave()
            drain.leave(task)


class _Served(NamedTuple):
    """How a stream is opened, framed and ended."""

    open: Callable[[], Awaitable[OpenStream]]
    framing: Callable[[OpenStream, Exchange], Framing] | None
    early_error: EarlyError
    hand_off: HandOffRecord | None
    resumed: Resumed | None


async def _stream(
    held: _Held,
    gateway: Gateway,
    scope: HTTPScope,
    receive: Receive,
    send: Send,
    exchange: Exchange,
    base: list[tuple[bytes, bytes]],
    served: _Served,
) -> tuple[int, str | None]:
    state = scope["app"].state
    resumed = served.resumed  # taken over: the log exists, and no client is here to keep alive
    stream_id = resumable.new_stream_id() if resumed is None and resumable.asked(scope["headers"]) else None
    if stream_id is not None:
        base = [*base, (resumable.STREAM_ID_HEADER, stream_id.encode())]
    every: float | None = state.keepalive_s if resumed is None else None
    if every is not None:
        held.keep = KeepAlive(send, every, [*SSE_HEADERS, *base])
    try:
        opened = held.opened = await served.open()
    except Exception as exc:
        if held.keep is None or not await held.keep.stop():
            raise  # nothing went out: an HTTP error, as without keep-alive
        if not isinstance(exc, SwitchboardError):
            log.exception("stream failed before its first event, behind keep-alive")
            exc = internal_error()
        return await _failed_committed(send, held.watch, exchange, exc, served.early_error)
    if (
        stream_id is None
        and resumed is None
        and gateway.resumable(exchange.alias)
        and not (held.keep is not None and await held.keep.settle())
    ):
        stream_id = resumable.new_stream_id()  # the alias's choice (too late if the head is out already)
        base = [*base, (resumable.STREAM_ID_HEADER, stream_id.encode())]
    client = send
    if resumed is not None:
        send = _recorded(held, state, receive, send, resumed.log, resumed.events)
    elif stream_id is not None:
        send = _recorded(held, state, receive, send, state.stream_logs.create(stream_id, exchange.key_id or ""), 0)
    headers = _headers([*SSE_HEADERS, *base], opened.target, opened.calls, opened.dropped)
    frames = served.framing(opened, exchange) if served.framing is not None else None
    resume: Resume | None = getattr(frames, "resume", None)  # a framing that can go on elsewhere
    on_drain = None
    if served.hand_off is not None and held.log is not None and held.log.shared:
        on_drain = partial(_hand_off, held, client, exchange, served.hand_off, frames, held.log.stream_id)
    relay = held.relay = SSEResponse(
        opened, headers, held.watch, gateway, exchange, frames, held.keep, state.drain, resume, on_drain
    )
    await relay(scope, receive, send)
    return 200, relay.code


def _recorded(held: _Held, state: Any, receive: Receive, send: Send, stream_log: StreamLog, events: int) -> Send:
    """From here on the stream outlives its client's connection for the resume window: its events
    are numbered (after the ``events`` in the log already) and kept, and a client that leaves does
    not cancel it at once."""
    streams: StreamsConfig = state.streams
    held.log = stream_log
    held.watch.close()
    away = events > 0  # a stream taken over: its clients follow it from elsewhere
    watch = held.watch = resumable.ResumeWatch(receive, streams.resume_window_s, stream_log.followed, away)
    return resumable.Recorder(send, stream_log, watch, events)


async def _hand_off(
    held: _Held,
    client: Send,
    exchange: Exchange,
    record_of: HandOffRecord,
    framing: Framing | None,
    stream_id: str,
) -> bool:
    """The drain's time ran out: leave the stream to another replica (a follower there takes it
    on); its client here gets an error event that says where it goes on, kept for nobody else."""
    stream_log, relay = held.log, held.relay
    assert stream_log is not None
    assert relay is not None
    record = record_of(exchange, relay.opened)
    if record is None or not await stream_log.hand_off(record):
        return False
    log.warning(
        "stream-handed-off target=%s: the drain ended it here; a replica that is not draining goes on with it",
        relay.opened.target.label,
    )
    notice = ShuttingDown(HANDED_OFF.format(stream_id))
    event = (
        framing.error(notice, exchange.request_id) if framing is not None else error_frame(notice, exchange.request_id)
    )
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(GRACE_S):  # a client that reads nothing more does not hold the exit
            await client({"type": "http.response.body", "body": event, "more_body": True})
    return True


async def _ended_by_drain(
    held: _Held, send: Send, exchange: Exchange, early_error: EarlyError
) -> tuple[int, str | None]:
    """The drain's time ran out before this request's answer began: a 503, or, when keep-alive
    has committed the response already, the client API's error event."""
    ended = ShuttingDown(ENDED_BY_DRAIN)
    if held.keep is None or not await held.keep.stop():
        raise ended from None
    return await _failed_committed(send, held.watch, exchange, ended, early_error)


async def _failed_committed(
    send: Send, watch: ClientWatch, exchange: Exchange, exc: SwitchboardError, early_error: EarlyError
) -> tuple[int, str | None]:
    """Every target failed after keep-alive committed the response: one error event, the end."""
    await watch.stop()
    log.warning("stream-failed before its first event, behind keep-alive: %s", exc.message)
    body = early_error(exc, exchange.request_id)
    await send({"type": "http.response.body", "body": body, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return 200, exc.code or "upstream_failed"


def _headers(
    base: list[tuple[bytes, bytes]], target: Target, calls: int, dropped: Sequence[str]
) -> list[tuple[bytes, bytes]]:
    headers = [*base, (TARGET_HEADER, target.label.encode()), (ATTEMPTS_HEADER, str(calls).encode())]
    if dropped:
        # Client-chosen field names: keep only header-safe characters.
        names = ", ".join(_HEADER_UNSAFE.sub("", name) for name in dropped)
        headers.append((DROPPED_HEADER, names.encode()))
    return headers
