"""Resumable streams' events, kept so that a client that lost its connection can pick the stream up
again (``GET /v1/streams/{id}`` with ``Last-Event-ID``).

A ``StreamLog`` is one stream's events, numbered from 1, each stored as the SSE event the client
gets (its ``id:`` line included), bounded in bytes; ``follow(after)`` yields every event after
``after``, then the live rest until the stream ends. ``MemoryStreamLogs`` keeps them in this
process (a reconnect must reach the same worker); ``RedisStreamLogs`` in Redis Streams (one per
stream, ``XADD`` with the event's number as its entry id, ``XREAD BLOCK`` to follow), so that a
reconnect may land on any worker or replica. Either forgets a stream ``window_s`` after its last
event.

A Redis log can also be handed off: a replica that drains with the stream still running writes a
hand-off entry (what another replica needs to go on with the stream) instead of the end, and a
follower on another replica that reads it claims the stream (``claim``: one replica only) and
goes on appending to the same log (``router.api.handoff``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger(__name__)

END: Final = b""  # the entry that says the stream is over
PREFIX: Final = "switchboard:stream:"
BLOCK_MS: Final = 1000  # one XREAD's wait: a follower notices a stream that was forgotten within it
FOLLOWED: Final = ":followed"  # a key a follower on any replica keeps alive while it reads
FOLLOWED_MS: Final = 3 * BLOCK_MS

# Called by a follower with a hand-off entry's record: True to go on following (someone goes on
# with the stream), False to end here.
OnHandOff = Callable[[str, bytes], Awaitable[bool]]


class StreamLog(Protocol):
    stream_id: str
    owner: str
    overflowed: bool  # past its byte bound: no longer resumable
    followers: int  # clients following it live in this process
    shared: bool  # another replica can read it, so the stream can be handed off

    @property
    def size(self) -> int:
        """Bytes kept so far."""
        ...

    async def followed(self) -> bool:
        """Whether a client follows it live (here, or, in Redis, on any replica)."""
        ...

    async def append(self, events: Sequence[bytes]) -> None: ...

    async def end(self) -> None: ...

    async def hand_off(self, record: bytes) -> bool:
        """Leave the stream to another replica (``record`` says how to go on with it) instead of
        ending it; False if it cannot be (the log is not shared, or it is past its bound)."""
        ...

    def follow(self, after: int, on_hand_off: OnHandOff | None = None) -> AsyncIterator[bytes]: ...


class StreamLogs(Protocol):
    def configure(self, window_s: float, limit: int) -> None: ...

    def create(self, stream_id: str, owner: str) -> StreamLog: ...

    async def find(self, stream_id: str) -> StreamLog | None: ...

    async def close(self) -> None: ...


class MemoryLog:
    """One stream's events in this process."""

    __slots__ = (
        "_changed",
        "_done",
        "_events",
        "_forget",
        "_size",
        "ended_at",
        "followers",
        "limit",
        "overflowed",
        "owner",
        "stream_id",
    )

    shared = False

    def __init__(self, stream_id: str, owner: str, limit: int, forget: Callable[[], None] = lambda: None) -> None:
        self._forget = forget  # called at the end: the registry drops the log a window later
        self.stream_id = stream_id
        self.owner = owner
        self.limit = limit
        self.overflowed = False
        self.ended_at: float | None = None
        self.followers = 0
        self._events: list[bytes] = []
        self._size = 0
        self._done = False
        self._changed = asyncio.Event()

    async def append(self, events: Sequence[bytes]) -> None:
        if self.overflowed:
            return
        self._size += sum(len(e) for e in events)
        if self._size > self.limit:
            self.overflowed = True  # resumable no more: what it holds is let go
            self._events.clear()
        else:
            self._events.extend(events)
        self._wake()

    async def followed(self) -> bool:
        return self.followers > 0

    @property
    def size(self) -> int:
        return self._size

    async def hand_off(self, record: bytes) -> bool:
        return False  # no other replica can read it

    async def end(self) -> None:
        if self._done:
            return
        self._done = True
        self.ended_at = time.monotonic()
        self._wake()
        self._forget()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int, on_hand_off: OnHandOff | None = None) -> AsyncIterator[bytes]:
        sent = max(0, after)
        self.followers += 1
        try:
            while True:
                changed = self._changed
                if self.overflowed:
                    return
                while sent < len(self._events):
                    sent += 1
                    yield self._events[sent - 1]
                if self._done:
                    return
                await changed.wait()
        finally:
            self.followers -= 1


class MemoryStreamLogs:
    """Every resumable stream of this process; each forgotten ``window_s`` after it ended."""

    def __init__(self, window_s: float, limit: int) -> None:
        self._window_s = window_s
        self._limit = limit
        self._logs: dict[str, MemoryLog] = {}

    def configure(self, window_s: float, limit: int) -> None:
        """After a config reload: for the streams that start from now on."""
        self._window_s, self._limit = window_s, limit

    def create(self, stream_id: str, owner: str) -> MemoryLog:
        loop = asyncio.get_running_loop()
        window = self._window_s

        def forget() -> None:  # a window after its end, even if no other stream comes
            loop.call_later(window, self._logs.pop, stream_id, None)

        stream = self._logs[stream_id] = MemoryLog(stream_id, owner, self._limit, forget)
        return stream

    async def find(self, stream_id: str) -> MemoryLog | None:
        return self._logs.get(stream_id)

    async def close(self) -> None:
        self._logs.clear()


class RedisLog:
    """One stream's events in a Redis Stream: entry ``0-1`` names the owner, each later entry holds
    an event (``e``), in order; an empty event ends it, an ``h`` entry hands it off, and the ``t``
    entry after that names the replica that took it on."""

    __slots__ = (
        "_handed",
        "_key",
        "_live_ms",
        "_redis",
        "_seq",
        "_size",
        "_window_ms",
        "followers",
        "limit",
        "overflowed",
        "owner",
        "stream_id",
    )

    shared = True

    def __init__(
        self, redis: Redis, stream_id: str, owner: str, limit: int, window_s: float, live_s: float = 0.0
    ) -> None:
        self._redis = redis
        self._key = PREFIX + stream_id
        self.stream_id = stream_id
        self.owner = owner
        self.limit = limit
        self._window_ms = int(window_s * 1000)
        self._live_ms = int((window_s + live_s) * 1000)  # while it runs: a silence must not expire it
        self.overflowed = False
        self.followers = 0  # those on other replicas are not known here
        self._seq = 0  # the last entry written (0: none yet, not even the owner's)
        self._size = 0
        self._handed = False  # left to another replica: this one neither writes nor ends it

    @property
    def size(self) -> int:
        return self._size

    async def append(self, events: Sequence[bytes]) -> None:
        if self.overflowed or self._handed:
            return
        self._size += sum(len(e) for e in events)
        if self._size > self.limit:
            self.overflowed = True
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(self._key)
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if self._seq == 0:
                    self._seq = 1
                    pipe.xadd(self._key, {"o": self.owner}, id="0-1")  # the owner, before event 1
                for event in events:
                    self._seq += 1
                    pipe.xadd(self._key, {"e": event}, id=f"0-{self._seq}")
                pipe.pexpire(self._key, self._live_ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("stream-log: Redis refused an event (%s): the stream is no longer resumable", exc)
            self.overflowed = True

    async def end(self) -> None:
        if self.overflowed or self._handed:
            return
        with contextlib.suppress(RedisError, OSError):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._key, {"e": END}, id=f"0-{max(self._seq, 1) + 1}")
                pipe.pexpire(self._key, self._window_ms)
                await pipe.execute()

    async def hand_off(self, record: bytes) -> bool:
        if self.overflowed or self._handed or self._seq == 0:
            return False
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._key, {"h": record}, id=f"0-{self._seq + 1}")
                pipe.pexpire(self._key, self._live_ms)  # the window for a replica to take it on
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("stream-log: Redis refused the hand-off (%s)", exc)
            return False
        self._seq += 1
        self._handed = True
        return True

    async def claim(self, entry: int, token: str) -> bool | None:
        """Take on the stream handed off at entry ``0-entry``, as the replica ``token``: True for
        one replica only, which then reads what the log holds (``events``) and appends to it as its
        own; None if Redis did not answer. The claim is an entry right after the hand-off, so it
        lives as long as the log, and a log that went on after the hand-off is taken already."""
        marker = f"0-{entry + 1}"
        try:
            try:
                added = await self._redis.xadd(self._key, {"t": token}, id=marker, nomkstream=True)
            except ResponseError as exc:
                if "equal or smaller" not in str(exc):
                    raise  # not the answer to an entry past the hand-off: Redis refused
                # An entry past the hand-off exists: claimed, perhaps by this replica.
                after = await self._redis.xrange(self._key, marker, "+", count=2)
                # Ours, with nothing after it: an earlier claim whose answer was lost. Go on.
                added = len(after) == 1 and after[0][1].get(b"t") == token.encode()
            if not added:
                return False  # taken by another replica, or the log is gone
        except (RedisError, OSError) as exc:
            log.warning("stream-log: Redis did not answer a claim (%s)", exc)
            return None
        self._seq = entry + 1
        return True

    async def events(self) -> list[bytes]:
        """Every event kept so far, in order (for the replica that takes the stream on)."""
        entries = await self._redis.xrange(self._key, "0-2", "+")
        kept = [event for _, fields in entries if (event := fields.get(b"e"))]
        self._size = sum(len(event) for event in kept)
        return kept

    async def followed(self) -> bool:
        if self.followers > 0:
            return True
        try:
            return bool(await self._redis.exists(self._key + FOLLOWED))
        except (RedisError, OSError):
            return False  # Redis away: as if nobody followed (the window then ends the stream)

    async def follow(self, after: int, on_hand_off: OnHandOff | None = None) -> AsyncIterator[bytes]:
        self.followers += 1
        try:
            async for event in _follow(self._redis, self._key, after, on_hand_off):
                yield event
        finally:
            self.followers -= 1


async def _follow(redis: Redis, key: str, after: int, on_hand_off: OnHandOff | None) -> AsyncIterator[bytes]:
    """Events numbered after ``after``. Event n is at entry ``0-(n+1)`` or, past a hand-off entry
    (which has no number of its own), later: the reading starts there and goes by each event's
    own ``id: n``."""
    last = f"0-{max(0, after) + 1}"
    try:
        # A Last-Event-ID past the last entry: the reading would wait for entries already written.
        top = await redis.xrevrange(key, count=1)
        entries = top if top and entry_seq(top[0][0]) <= max(0, after) + 1 else []
        while True:
            for entry_id, fields in entries:
                last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                event = fields.get(b"e")
                if event is None:
                    record = fields.get(b"h")
                    if record is not None and (on_hand_off is None or not await on_hand_off(last, record)):
                        return  # handed off, and nobody here goes on with it
                    continue
                if event == END:
                    return
                if event_number(event) > after:
                    yield event
            # Followed, for the replica that runs the upstream: its resume window waits while this lasts.
            await redis.set(key + FOLLOWED, b"1", px=FOLLOWED_MS)
            answer = await redis.xread({key: last}, block=BLOCK_MS, count=256)
            entries = answer[0][1] if answer else []
            if not answer and not await redis.exists(key):
                return  # forgotten (or past its bound): nothing more will come
    except (RedisError, OSError) as exc:
        log.warning("stream-log: Redis did not answer a follower (%s): its connection ends; it may resume", exc)


def entry_seq(entry_id: bytes | str) -> int:
    """The n of a ``0-n`` entry id."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.rpartition("-")[2])


def event_number(event: bytes) -> int:
    """An event's ``id: n`` (its first line)."""
    head = event[4 : event.find(b"\n")]
    return int(head) if head.isdigit() else 0


class RedisStreamLogs:
    """Resumable streams in Redis: any worker or replica can resume any stream."""

    def __init__(self, url: str, timeout_s: float, window_s: float, limit: int, live_s: float = 0.0) -> None:
        # A read waits at most one XREAD block, and Redis's own time-out on top.
        read_s = BLOCK_MS / 1000 + timeout_s
        self._redis = Redis.from_url(url, socket_timeout=read_s, socket_connect_timeout=timeout_s)
        self._window_s = window_s
        self._limit = limit
        self._live_s = live_s  # the longest a stream runs (timeouts.total_s)

    def configure(self, window_s: float, limit: int) -> None:
        """After a config reload: for the streams that start from now on."""
        self._window_s, self._limit = window_s, limit

    def create(self, stream_id: str, owner: str) -> RedisLog:
        return RedisLog(self._redis, stream_id, owner, self._limit, self._window_s, self._live_s)

    async def find(self, stream_id: str) -> RedisLog | None:
        try:
            first = await self._redis.xrange(PREFIX + stream_id, "0-1", "0-1")
        except (RedisError, OSError) as exc:
            log.warning("stream-log: Redis did not answer (%s)", exc)
            return None
        if not first:
            return None
        owner = first[0][1].get(b"o", b"").decode()
        found = RedisLog(self._redis, stream_id, owner, self._limit, self._window_s)
        found.overflowed = False
        return found

    async def close(self) -> None:
        await self._redis.aclose()
