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
from functools import partial
from typing import Any

import msgspec
from litestar import Litestar
from litestar.types import Message, ReceiveMessage

from providers.base import Inbound, TokenUsage
from providers.errors import SwitchboardError
from router.access.guard import Guard
from router.api.continuing import Continuing
from router.api.decode import decode_call
from router.api.drain import Drain
from router.api.handling import Resumed, failed, finish, serve
from router.api.streams import ChatFraming, Framing, error_frame
from router.errors import ClientError, internal_error
from router.gateway.failover import Gateway, OpenStream
from router.gateway.outcome import Exchange, add_usage
from router.state.stream_logs import RedisLog, StreamLog, event_number

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode


class Handoff(msgspec.Struct, frozen=True):
    """What a replica needs to go on with a stream another one handed off."""

    call: msgspec.Raw  # the chat request as the gateway was given it (server-side parameters applied)
    request_id: str
    key_id: str | None  # whose stream it is (None: Switchboard runs open)
    team_id: str | None
    usage: TokenUsage | None  # what the replica that handed it off knew it had used


class NotContinued(ClientError):
    status = 503
    code = "stream_not_continued"


def record(call: Inbound, exchange: Exchange, opened: OpenStream) -> bytes | None:
    """The hand-off record of a chat stream; None when another target could not go on with it
    faithfully (``n`` > 1 or logprobs: the stream then ends with its error event, as before)."""
    chat = call.chat
    if (isinstance(chat.n, int) and chat.n > 1) or chat.logprobs is True:
        return None
    usage = add_usage(exchange.carried_usage, opened.upstream.report.usage)
    handoff = Handoff(msgspec.Raw(_encode(call.fields)), exchange.request_id, exchange.key_id, exchange.team_id, usage)
    return _encode(handoff)


class Takeovers:
    """The handed-off streams this replica goes on with: one task each, registered with the drain
    like any request (so a drain here hands them off again), cancelled at shutdown."""

    def __init__(self, app: Litestar) -> None:
        self._app = app
        self._tasks: set[asyncio.Task[None]] = set()

    async def take(self, stream_id: str, found: StreamLog, entry: str, raw: bytes) -> bool:
        """A follower here read a hand-off (entry ``entry`` of the stream's log, record ``raw``):
        True to go on following (this replica goes on with the stream, or another already
        does), False to end the follower (this replica is draining too)."""
        state = self._app.state
        drain: Drain = state.drain
        if drain.draining:
            return False
        taken = state.stream_logs.create(stream_id, found.owner)
        if not isinstance(taken, RedisLog):  # hand-offs are written to Redis only
            return False
        if not await taken.claim(int(entry.rpartition("-")[2])):
            return True  # another follower's replica took it on
        task = asyncio.get_running_loop().create_task(self._go_on(taken, raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _go_on(self, taken: RedisLog, raw: bytes) -> None:
        state = self._app.state
        try:
            handoff = msgspec.json.decode(raw, type=Handoff)
            events = await taken.events()
        except Exception:
            log.exception("stream-not-taken-over: its hand-off could not be read")
            await taken.end()
            return
        number = event_number(events[-1]) if events else 0
        exchange = Exchange(state.outcomes, handoff.request_id, stream=True)
        exchange.key_id, exchange.team_id = handoff.key_id, handoff.team_id
        try:
            status, code = await self._serve(taken, handoff, events, number, exchange)
        except Exception as exc:
            failure = exc if isinstance(exc, SwitchboardError) else internal_error()
            if failure is exc:
                log.warning("stream-not-taken-over: %s", failure.message)
            else:
                log.exception("stream-not-taken-over")
            with contextlib.suppress(Exception):  # Redis away: the log expires, its followers with it
                await taken.append([b"id: %d\n%s" % (number + 1, error_frame(failure, exchange.request_id))])
                await taken.end()
            failed(exchange, None, failure)
        except BaseException as exc:
            failed(exchange, None, exc)
            raise
        else:
            finish(exchange, None, status, code)

    async def _serve(
        self, taken: RedisLog, handoff: Handoff, events: list[bytes], number: int, exchange: Exchange
    ) -> tuple[int, str | None]:
        state = self._app.state
        guard: Guard = state.guard
        gateway: Gateway = state.gateway
        caller = guard.caller_of(handoff.key_id)  # revoked since: not continued
        call = decode_call(bytes(handoff.call))
        if caller.restricted:
            exchange.allows = caller.allows
        continuing = Continuing(ChatFraming(None), gateway, call, exchange, gateway.continues(call.chat.model))
        continuing.frames([_payload(event) for event in events])  # what its clients have had
        if continuing.transcript.finished:  # all but its end had gone out
            await taken.append([b"id: %d\n%s" % (number + 1, ChatFraming(None).done())])
            await taken.end()
            return 200, None
        why = continuing.unfaithful()
        if why is not None:
            raise NotContinued(f"The stream could not be continued at another instance: {why}.")
        scope: Any = {"type": "http", "app": self._app, "headers": [], "state": {}}
        framing: Framing = continuing
        return await serve(
            gateway,
            scope,
            _never,
            _nowhere,
            exchange,
            [],
            None,
            partial(continuing.take_over, handoff.usage),
            lambda opened, exchange: framing,
            hand_off=partial(record, call),
            resumed=Resumed(taken, number),
        )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))


def _payload(event: bytes) -> bytes:
    """The ``data:`` of a kept chat event (``id: n`` then ``data: {chunk}``)."""
    start = event.find(b"data: ")
    return event[start + 6 :].rstrip(b"\n") if start >= 0 else b""


async def _never() -> ReceiveMessage:
    """A taken-over stream's ``receive``: it has no client here to leave."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


async def _nowhere(message: Message) -> None:
    """A taken-over stream's ``send``: its clients follow the log."""
