"""Resumable streams that outlive their replica.

When a drain's time runs out (``server.drain_s``) with a resumable chat stream still going and its
events in Redis, the draining replica writes a hand-off entry to the stream's log instead of its
end (``record``: the request as the gateway was given it, whose key it is, the usage so far) and
tells its own client, in an error event kept for nobody else, where the stream goes on. A client
following the stream on another replica (``GET /v1/streams/{id}``, which a browser's
``EventSource`` reconnects to by itself) reads that entry there, and that replica takes the stream
on (``Takeovers``: one replica only, claimed in Redis): it asks the alias's targets to continue
the text the log holds (``router.gateway.continuation``) and appends their answer to the same log
with the next event numbers, so every follower sees one answer. A replica that is draining itself
takes nothing on: its followers' connections end, and they reconnect elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from functools import partial
from typing import Any

import msgspec
from litestar import Litestar
from litestar.types import Message, ReceiveMessage

from providers.base import Inbound, TokenUsage
from providers.errors import SwitchboardError
from router.access.guard import Caller, Guard
from router.access.limits import Admitted, estimate_tokens
from router.api.continuing import Continuing
from router.api.decode import decode_call
from router.api.drain import ENDED_BY_DRAIN, GRACE_S, Drain
from router.api.handling import Resumed, admit, failed, finish, serve
from router.api.streams import DONE_FRAME, ChatFraming, Framing, error_frame
from router.errors import ShuttingDown, internal_error
from router.gateway.continuation import Transcript
from router.gateway.failover import Gateway, OpenStream
from router.gateway.outcome import Exchange, add_usage
from router.state.stream_logs import RedisLog, StreamLog, entry_seq, event_number

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode


class Handoff(msgspec.Struct, frozen=True):
    """What a replica needs to go on with a stream another one handed off."""

    call: msgspec.Raw  # the chat request as the gateway was given it (server-side parameters applied)
    request_id: str
    key_id: str | None  # whose stream it is (None: Switchboard runs open)
    team_id: str | None
    usage: TokenUsage | None  # what the replica that handed it off knew it had used


class NotContinued(ShuttingDown):
    """A stream that was handed off but cannot go on faithfully: it ends as the drain would have
    ended it, with the same code."""


def record(call: Inbound, before: TokenUsage | None, exchange: Exchange, opened: OpenStream) -> bytes | None:
    """The hand-off record of a chat stream (``before``: what replicas that ran it earlier used);
    None when another target could not go on with it faithfully (``n`` > 1 or logprobs: the
    stream then ends with its error event, as before)."""
    chat = call.chat
    if (isinstance(chat.n, int) and chat.n > 1) or chat.logprobs is True:
        return None
    usage = add_usage(before, add_usage(exchange.carried_usage, opened.upstream.report.usage))
    handoff = Handoff(msgspec.Raw(_encode(call.fields)), exchange.request_id, exchange.key_id, exchange.team_id, usage)
    return _encode(handoff)


class Takeovers:
    """The handed-off streams this replica goes on with: one task each, served like any request
    (limits, budget and the key's models checked again; registered with the drain, so a drain here
    hands them off again), cancelled at shutdown."""

    def __init__(self, app: Litestar) -> None:
        self._app = app
        self._token = secrets.token_hex(8)  # this replica, in the claims it writes
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[tuple[str, int]] = set()  # (stream, hand-off entry) taken on here

    async def take(self, stream_id: str, found: StreamLog, entry: str, raw: bytes) -> bool:
        """A follower here read a hand-off (entry ``entry`` of the stream's log, record ``raw``):
        True to go on following (this replica goes on with the stream, or another already
        does), False to end the follower so that its client reconnects (this replica is draining
        too, or Redis did not answer)."""
        state = self._app.state
        drain: Drain = state.drain
        if drain.draining:
            return False
        taken = state.stream_logs.create(stream_id, found.owner)
        if not isinstance(taken, RedisLog):  # hand-offs are written to Redis only
            return False
        handed = (stream_id, entry_seq(entry))
        if handed in self._running:
            return True  # another follower here read it first
        claimed = await taken.claim(handed[1], self._token)
        if claimed is None or handed in self._running:
            return claimed is not None
        if claimed:
            self._running.add(handed)
            task = asyncio.get_running_loop().create_task(self._go_on(taken, raw))
            self._tasks.add(task)
            task.add_done_callback(partial(self._done, handed))
        return True

    def _done(self, handed: tuple[str, int], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running.discard(handed)

    async def _go_on(self, taken: RedisLog, raw: bytes) -> None:
        state = self._app.state
        try:
            handoff = msgspec.json.decode(raw, type=Handoff)
            events = await taken.events()
        except Exception:
            log.exception("stream-not-taken-over: its hand-off could not be read")
            with contextlib.suppress(Exception):
                await taken.end()
            return
        number = event_number(events[-1]) if events else 0
        payloads = [_payload(event) for event in events]
        transcript = Transcript()
        transcript.add(payloads)
        if _ended(payloads) or transcript.finished:  # all had gone out but its end: no request here
            with contextlib.suppress(Exception):
                if not _ended(payloads):
                    await taken.append([b"id: %d\n%s" % (number + 1, DONE_FRAME)])
                await taken.end()
            return
        exchange = Exchange(state.outcomes, handoff.request_id, stream=True)
        exchange.key_id, exchange.team_id = handoff.key_id, handoff.team_id
        admission: Admitted | None = None
        over: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def receive() -> ReceiveMessage:
            """No client here: the stream's end is the only disconnect its watch hears."""
            await over
            return {"type": "http.disconnect"}

        try:
            call, caller, continuing = self._continuing(handoff, payloads, exchange)
            scope: Any = {"type": "http", "app": self._app, "headers": [], "state": {}}
            admission = await admit(scope, caller, exchange, call.chat.model, partial(estimate_tokens, call.chat))
            status, code = await serve(
                state.gateway,
                scope,
                receive,
                _nowhere,
                exchange,
                [],
                None,
                partial(continuing.take_over, handoff.usage),
                partial(_same, continuing),
                hand_off=partial(record, call, handoff.usage),
                resumed=Resumed(taken, number),
            )
        except Exception as exc:
            failure = exc if isinstance(exc, SwitchboardError) else internal_error()
            await self._not_gone_on(taken, raw, number, exchange, failure, exc)
            failed(exchange, admission, failure)
        except BaseException as exc:
            failed(exchange, admission, exc)
            raise
        else:
            finish(exchange, admission, status, code)
        finally:
            if not over.done():  # a watch cancelled while waiting on it cancels it too
                over.set_result(None)

    def _continuing(
        self, handoff: Handoff, payloads: list[bytes], exchange: Exchange
    ) -> tuple[Inbound, Caller, Continuing]:
        """The request, its caller as this replica knows the key now, and the framing that goes on
        with it; a client error when the key may no longer ask it, or it cannot go on faithfully."""
        state = self._app.state
        guard: Guard = state.guard
        gateway: Gateway = state.gateway
        caller = guard.caller_of(handoff.key_id)  # revoked since: not continued
        call = decode_call(bytes(handoff.call))
        if caller.restricted:
            guard.check_model(caller, call.chat.model)
            exchange.allows = caller.allows
        continuing = Continuing(ChatFraming(None), gateway, call, exchange, gateway.continues(call.chat.model))
        continuing.frames(payloads)  # what its clients have had
        why = continuing.unfaithful()
        if why is not None:
            raise NotContinued(f"{ENDED_BY_DRAIN} It could not be continued at another instance: {why}.")
        return call, caller, continuing

    async def _not_gone_on(
        self, taken: RedisLog, raw: bytes, number: int, exchange: Exchange, failure: SwitchboardError, exc: Exception
    ) -> None:
        """The stream could not go on here: handed off again if this replica is draining now,
        else ended with the failure's error event for every follower."""
        drain: Drain = self._app.state.drain
        if drain.draining and await taken.hand_off(raw):
            log.warning("stream-handed-off again: this replica began draining before it went on")
            return
        if failure is exc:
            log.warning("stream-not-taken-over: %s", failure.message)
        else:
            log.error("stream-not-taken-over", exc_info=exc)
        with contextlib.suppress(Exception):  # Redis away: the log expires, its followers with it
            await taken.append([b"id: %d\n%s" % (number + 1, error_frame(failure, exchange.request_id))])
            await taken.end()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=GRACE_S)


def _same(framing: Framing, opened: OpenStream, exchange: Exchange) -> Framing:
    return framing


def _ended(payloads: list[bytes]) -> bool:
    """Whether the last event kept is the stream's last: ``[DONE]`` or an error."""
    return bool(payloads) and (payloads[-1] == b"[DONE]" or payloads[-1].startswith(b'{"error"'))


def _payload(event: bytes) -> bytes:
    """The ``data:`` of a kept chat event (``id: n`` then ``data: {chunk}``)."""
    start = event.find(b"data: ")
    return event[start + 6 :].rstrip(b"\n") if start >= 0 else b""


async def _nowhere(message: Message) -> None:
    """A taken-over stream's ``send``: its clients follow the log."""
