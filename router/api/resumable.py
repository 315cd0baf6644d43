"""Resumable client streams: a stream that outlives its client's connection.

Opt-in per request (``x-switchboard-resumable: true``) or per alias (``resumable: true``). The
answer names its stream (``x-switchboard-stream-id``, unguessable) and every event carries an SSE
``id``. ``Recorder`` sits between the relay and the client: it numbers each event, keeps it in the
stream's log (``router.state.stream_logs``) and passes it on while the client is there.
``ResumeWatch`` replaces the watch that cancels a stream when its client leaves: the upstream
goes on for ``streams.resume_window_s`` (or until the log passes ``resume_buffer_bytes``), then
is cancelled as before. ``GET /v1/streams/{id}`` with ``Last-Event-ID`` sends every event after
that one, then the live rest, so a browser's ``EventSource`` resumes by itself.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from litestar import Request, get
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import Stream
from litestar.types import HTTPScope, Message, Receive, Send

from router.access.guard import Guard, key_id_of_caller, presented_key
from router.api.disconnect import ClientWatch
from router.api.responses import request_id_of
from router.api.streams import SSE_HEADERS
from router.errors import ClientError, InvalidRequest
from router.state.stream_logs import StreamLog, StreamLogs

if TYPE_CHECKING:
    from router.api.handoff import Takeovers

log = logging.getLogger(__name__)

RESUMABLE_HEADER: Final = b"x-switchboard-resumable"
STREAM_ID_HEADER: Final = b"x-switchboard-stream-id"
STREAMS_PATH: Final = "/v1/streams"
_SSE_TYPE, *_SSE_REST = ((name.decode(), value.decode()) for name, value in SSE_HEADERS)


class StreamNotFound(ClientError):
    status = 404
    code = "stream_not_found"


def asked(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the request opts in to resumption (``x-switchboard-resumable: true``)."""
    for name, value in headers:
        if name == RESUMABLE_HEADER:
            return value.strip().lower() in (b"true", b"1", b"yes")
    return False


def new_stream_id() -> str:
    return "sbs_" + secrets.token_urlsafe(24)  # 192 bits: the id alone may authorise a resume


def owner_of(caller: Any) -> str:
    return key_id_of_caller(caller) or ""


class ResumeWatch(ClientWatch):
    """A client that leaves does not cancel the stream at once: it gets ``window_s`` to come back
    (through ``GET /v1/streams/{id}``), during which the upstream goes on into the log."""

    __slots__ = ("_away", "_checking", "_expiry", "_followed", "_window_s", "left")

    def __init__(
        self, receive: Receive, window_s: float, followed: Callable[[], Awaitable[bool]], away: bool = False
    ) -> None:
        self._window_s = window_s
        self._followed = followed  # a resumed client is reading it here: the window waits
        self._expiry: asyncio.TimerHandle | None = None
        self._checking: asyncio.Task[None] | None = None
        self._away = away  # no client here from the start (a stream taken over): the window runs at once
        self.left = False
        super().__init__(receive)

    async def _watch(self, receive: Receive) -> None:
        if not self._away:
            while (await receive())["type"] != "http.disconnect":
                pass
            if self._stopped:
                return  # the response's own end
        self.left = True
        self._expiry = asyncio.get_running_loop().call_later(self._window_s, self._window_over)

    def _window_over(self) -> None:
        self._checking = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        """A client following it (here, or on another replica through Redis) holds the window."""
        if await self._followed():
            self._expiry = asyncio.get_running_loop().call_later(self._window_s, self._window_over)
            return
        self.expire()

    def expire(self) -> None:
        """The window is over (or the log is past its bound): cancelled, as any stream whose
        client left."""
        if self._expiry is not None:
            self._expiry.cancel()
        if not self.gone:
            log.info("resumable stream: its client did not come back; cancelled")
            self.gone = True
            self._task.cancel()

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._checking is not None:
            self._checking.cancel()
        super().close()


class Recorder:
    """The relay's ``send`` for a resumable stream: each SSE event numbered (``id: n``) and kept."""

    __slots__ = ("_count", "_log", "_send", "_unsent", "_watch")

    def __init__(self, send: Send, stream_log: StreamLog, watch: ResumeWatch, start: int = 0) -> None:
        self._send = send
        self._log = stream_log
        self._watch = watch
        self._count = start  # the events numbered so far (by another replica, for a stream taken over)
        # A write that did not finish (its wait was cut short): the relay sends the same bytes
        # again, and they must keep their numbers and be kept once.
        self._unsent: tuple[bytes, bytes] | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            body: bytes = message["body"]
            unsent = self._unsent
            if unsent is not None and unsent[0] is body:
                numbered = unsent[1]
            else:
                numbered, kept = self._number(body)
                self._unsent = (body, numbered)
                if kept:
                    await self._log.append(kept)
                    if self._log.overflowed and self._watch.left:
                        self._watch.expire()  # past its bound with nobody reading: no reason to go on
            await self._send({**message, "body": numbered})
            self._unsent = None
            return
        await self._send(message)

    def _number(self, body: bytes) -> tuple[bytes, list[bytes]]:
        """The body with each event's ``id:``, and those events (comments are neither)."""
        out: list[bytes] = []
        kept: list[bytes] = []
        for part in body.split(b"\n\n"):
            if not part:
                continue
            if part.startswith(b":"):  # a comment (keep-alive): for this connection only
                out.append(part + b"\n\n")
                continue
            self._count += 1
            event = b"id: %d\n%s\n\n" % (self._count, part)
            kept.append(event)
            out.append(event)
        return b"".join(out), kept


def _last_event_id(scope: HTTPScope) -> int:
    raw: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"last-event-id":
            raw = value
    if raw is None:
        query = scope.get("query_string", b"")
        for pair in query.split(b"&"):
            key, _, value = pair.partition(b"=")
            if key == b"last_event_id":
                raw = value
    if raw is None or not raw.strip():
        return 0
    if not raw.strip().isdigit():
        raise InvalidRequest("Last-Event-ID must be the number of an event of this stream.", param="Last-Event-ID")
    return int(raw)


@get([f"{STREAMS_PATH}/{{stream_id:str}}", "/streams/{stream_id:str}"])
async def resume_stream(request: Request[Any, Any, State], stream_id: FromPath[str]) -> Stream:
    """Every event of the stream after ``Last-Event-ID`` (header, or ``?last_event_id=`` for
    clients that cannot set it), then the live rest until it ends. Authorised by the same key as
    the stream when the request presents one, by the unguessable id alone when it presents none
    (a browser's ``EventSource`` cannot send headers)."""
    scope = request.scope
    state = request.app.state
    after = _last_event_id(scope)
    logs: StreamLogs = state.stream_logs
    found = await logs.find(stream_id)
    if found is not None and presented_key(scope["headers"]) is not None:
        guard: Guard = state.guard
        if owner_of(guard.authenticate(scope["headers"])) != found.owner:
            found = None  # another key's stream: as if there were none
    if found is None or found.overflowed:
        raise StreamNotFound(f"No resumable stream '{stream_id}' (it ended over the resume window ago, or never was).")
    headers = {"x-request-id": request_id_of(scope), STREAM_ID_HEADER.decode(): stream_id, **dict(_SSE_REST)}
    takeovers: Takeovers = state.takeovers  # a stream another replica handed off goes on here
    return Stream(
        found.follow(after, partial(takeovers.take, stream_id, found)), media_type=_SSE_TYPE[1], headers=headers
    )
