"""Breakers shared by every worker and replica (``resilience.breaker.shared``), through Redis.

Each target's shared state is a hash (``sb:breakers:state:<label>``: state, opened_at, failures,
and a version from one counter for the whole fleet) that only the scripts below change, each
change announced on one channel in the same script. Every process subscribes and applies to its own
breakers what the others changed; what it changes itself goes to Redis in the background, so a
request never waits on Redis.

A transition is taken only from the state it starts from: a trip (closed → open) only while the
fleet's breaker is closed, a probe's verdict (half-open → closed or open) only from the process that
holds the probe. Once an open breaker's reset timeout has passed, the processes that get a request
for the target ask for the probe (``sb:breakers:probe:<label>``: SET NX with an expiry); one gets
it, goes half-open and probes, and the others skip the target until the verdict arrives. The probe
is kept while a probe call is in flight and lapses otherwise, so that a process that died, or that
gets no request for the target, does not hold it for long.

Redis away: each breaker works on its own (``online`` is false), said once in the log; when Redis
answers again the channel is subscribed anew and every breaker takes the fleet's state again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple, Protocol, cast

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

STATE_PREFIX: Final = "sb:breakers:state:"
PROBE_PREFIX: Final = "sb:breakers:probe:"
VERSION_KEY: Final = "sb:breakers:version"
FIELDS: Final = ("state", "opened_at", "failures", "version")  # of a state hash, in the scripts' order
STATES: Final = frozenset({"closed", "open", "half-open"})
CHANNEL: Final = "sb:breakers:changes"
STATE_TTL_MS: Final = 24 * 3600 * 1000  # a target nobody has touched for a day is forgotten (closed)
PROBE_TTL_S: Final = 10.0  # a probe not renewed (no probe call in flight) lapses after this
RETRY_S: Final = 1.0
MAX_QUEUED: Final = 10_000  # writes waiting for Redis; past it (Redis slow, a flood of new targets) dropped

# Shared by the scripts. KEYS: the state hash, the probe key, the version counter. ARGV[1..4]: this
# process's token, the channel, the label, the state's expiry. Numbers travel as strings.
_COMMON: Final = """
local function current()
  local h = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'failures', 'version')
  return {h[1] or 'closed', h[2] or '', h[3] or '0', h[4] or '0'}
end
local function change(state, opened_at, failures)
  local v = redis.call('INCR', KEYS[3])
  redis.call('HSET', KEYS[1], 'state', state, 'opened_at', opened_at, 'failures', failures, 'version', v)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PUBLISH', ARGV[2], cjson.encode({label = ARGV[3], state = state, opened_at = opened_at,
    failures = failures, version = tostring(v), by = ARGV[1]}))
end
"""

# A transition made by one process. ARGV[5..8]: from, to, opened_at, failures.
# Returns {1 when taken else 0, then the fleet's state after it (see current())}.
TRANSITION: Final = (
    _COMMON
    + """
local cur, old, new = current(), ARGV[5], ARGV[6]
local ok = false
if old == 'closed' and new == 'open' then
  ok = cur[1] == 'closed'
elseif old == 'half-open' and new ~= 'half-open' then
  local holder = redis.call('GET', KEYS[2])
  ok = cur[1] == 'half-open' and (holder == ARGV[1] or not holder)
end
if not ok then return {0, cur[1], cur[2], cur[3], cur[4]} end
change(new, ARGV[7], ARGV[8])
redis.call('DEL', KEYS[2])
cur = current()
return {1, cur[1], cur[2], cur[3], cur[4]}
"""
)

# Asking for the probe (or keeping it). ARGV[5..7]: the probe's expiry in ms, the asker's clock
# (epoch seconds), the reset timeout. Returns as TRANSITION, 1 when the asker holds the probe.
CLAIM: Final = (
    _COMMON
    + """
local cur = current()
if cur[1] == 'closed' then return {0, cur[1], cur[2], cur[3], cur[4]} end
if cur[1] == 'open' and cur[2] ~= '' and tonumber(ARGV[6]) < tonumber(cur[2]) + tonumber(ARGV[7]) then
  return {0, cur[1], cur[2], cur[3], cur[4]}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {0, cur[1], cur[2], cur[3], cur[4]} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[5])
if cur[1] == 'open' then change('half-open', cur[2], cur[3]) end
cur = current()
return {1, cur[1], cur[2], cur[3], cur[4]}
"""
)


class Change(msgspec.Struct, frozen=True):
    """One transition as announced on the channel."""

    label: str
    state: str
    opened_at: str  # epoch seconds by the clock of the process that opened it; "" when none
    failures: str
    version: str
    by: str  # the token of the process that made it


_decode_change = msgspec.json.Decoder(Change).decode


class SharedBreaker(Protocol):
    """A breaker as the sync sees it (``router.resilience.breaker.Breaker``)."""

    version: int

    @property
    def probes(self) -> int: ...

    def apply(
        self, state: str, opened_at: datetime | None, failures: int, version: int, *, mine: bool = ...
    ) -> None: ...


class LocalBreakers(Protocol):
    """This process's breakers (``router.resilience.targets.TargetRegistry``)."""

    def labels(self) -> list[str]: ...

    def find(self, label: str) -> SharedBreaker | None: ...


def _text(field: object) -> str:
    """A field from Redis (bytes, or None when absent) or from an announcement, as text."""
    if isinstance(field, bytes):
        return field.decode()
    return "" if field is None else str(field)


class _Write(NamedTuple):
    kind: Literal["transition", "claim", "fetch"]
    label: str
    args: tuple[str, ...]


# How a state read from Redis is taken: only if newer than the breaker's; as an answer to this
# process's own write (also when as new: the write may have been refused); or whatever it is
# (after Redis was away: its versions may have started again).
Rule = Literal["newer", "answer", "reset"]


class BreakerSync:
    """One per process: follows the fleet's breakers and tells it of this process's transitions.
    Implements ``router.resilience.breaker.Peers``."""

    def __init__(self, url: str, timeout_s: float, probe_ttl_s: float = PROBE_TTL_S) -> None:
        self.redis: Redis = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.errors = 0  # for the metrics
        self.token = secrets.token_hex(8)  # tells this process's announcements from the others'
        self._timeout_s = timeout_s
        self._probe_ttl_s = probe_ttl_s
        self._transition = self.redis.register_script(TRANSITION)
        self._claim = self.redis.register_script(CLAIM)
        self._local: LocalBreakers | None = None
        self._online = False
        self._failing = False
        self._held: dict[str, float] = {}  # label → until when (monotonic) this process holds its probe
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(MAX_QUEUED)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def online(self) -> bool:
        return self._online

    async def start(self, local: LocalBreakers) -> None:
        """Follow the fleet from now on; returns once the first attempt to reach Redis is over, so
        that a new worker starts with the fleet's picture when Redis answers."""
        self._local = local
        first = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._follow_forever(first), name="breakers-follow"),
            asyncio.create_task(self._write_forever(), name="breakers-write"),
        ]
        await first.wait()

    async def close(self) -> None:
        self._online = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()

    # Peers: called from the request path, never waiting.

    def announce(self, label: str, old: str, new: str, opened_at: float | None, failures: int) -> None:
        self._put(_Write("transition", label, (old, new, "" if opened_at is None else repr(opened_at), str(failures))))

    def want_probe(self, label: str, now: float, reset_timeout_s: float) -> None:
        self._put(_Write("claim", label, (repr(now), repr(reset_timeout_s))))

    def may_probe(self, label: str) -> bool:
        until = self._held.get(label)
        return until is not None and time.monotonic() < until

    def follow(self, local: LocalBreakers) -> None:
        """After a config reload: the fleet's picture goes to the new registry's breakers."""
        self._local = local

    def watch(self, label: str) -> None:
        self._put(_Write("fetch", label, ()))

    def _put(self, write: _Write) -> None:
        if self._online:  # Redis away: breakers work alone, and take the fleet's state on its return
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(write)

    # Writing: one call at a time, in the order asked, so a claim never overtakes the trip before it.

    async def _write_forever(self) -> None:
        while True:
            write = await self._queue.get()
            if not self._online:
                continue
            try:
                await self._send(write)
            except (RedisError, OSError, TimeoutError) as exc:
                self._down(exc)
            except Exception as exc:  # never let the writer die: breakers would wait on it for ever
                log.exception("breakers: writing to Redis failed")
                self._down(exc)

    async def _send(self, write: _Write) -> None:
        label = write.label
        if write.kind == "fetch":
            fields = await cast("Awaitable[list[Any]]", self.redis.hmget(STATE_PREFIX + label, list(FIELDS)))
            if fields[0] is not None:
                self._take(label, fields, "newer")
            return
        keys = [STATE_PREFIX + label, PROBE_PREFIX + label, VERSION_KEY]
        common: list[Any] = [self.token, CHANNEL, label, STATE_TTL_MS]
        if write.kind == "transition":
            _, *fields = await self._transition(keys=keys, args=[*common, *write.args])
            self._held.pop(label, None)  # a verdict ends the probe, taken or not
            self._take(label, fields, "answer")
            return
        asked = time.monotonic()
        ttl_ms = int(self._probe_ttl_s * 1000)
        taken, *fields = await self._claim(keys=keys, args=[*common, ttl_ms, *write.args])
        if taken:
            self._held[label] = asked + self._probe_ttl_s
        self._take(label, fields, "answer", mine=bool(taken))

    def _take(self, label: str, fields: list[Any], rule: Rule, *, mine: bool = False) -> None:
        """Apply the fleet's state of a target (state, opened_at, failures, version) to its breaker here."""
        breaker = self._local.find(label) if self._local is not None else None
        if breaker is None:
            return
        state, opened, failures, version = (_text(field) for field in fields)
        state = state or "closed"
        try:
            number, count = int(version or 0), int(failures or 0)
            at = datetime.fromtimestamp(float(opened), UTC) if opened else None
        except (ValueError, OverflowError, OSError):
            number = -1
        if number < 0 or state not in STATES:
            log.warning("breakers: ignored a malformed shared state for target=%s", label)
            return
        fresh = number > breaker.version or (rule == "answer" and number in (breaker.version, 0))
        if fresh or rule == "reset":
            breaker.apply(state, at, count, number, mine=mine)

    # Following: the channel, the probes this process holds, and Redis going and coming back.

    async def _follow_forever(self, first: asyncio.Event) -> None:
        while True:
            try:
                await self._follow(first)
            except (RedisError, OSError, TimeoutError) as exc:
                self._down(exc)
            except Exception as exc:  # as in the writer: go on, from a fresh subscription
                log.exception("breakers: following Redis failed")
                self._down(exc)
            first.set()
            await asyncio.sleep(RETRY_S)

    async def _follow(self, first: asyncio.Event) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            await self._resync()  # after subscribing: nothing announced from now on is missed
            self._up()
            first.set()
            keep_every = self._probe_ttl_s / 3
            while self._online:  # until a call fails, here or in the writer
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=keep_every)
                if message is not None:
                    self._receive(message["data"])
                self._keep()
        finally:  # bounded: closing a connection to a vanished server can wait for ever
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(pubsub.aclose(), self._timeout_s)  # type: ignore[no-untyped-call]

    async def _resync(self) -> None:
        labels = self._local.labels() if self._local is not None else []
        pipe = self.redis.pipeline(transaction=False)
        for label in labels:
            pipe.hmget(STATE_PREFIX + label, list(FIELDS))
        answers = await pipe.execute() if labels else []
        self._held.clear()
        for label, fields in zip(labels, answers, strict=True):
            self._take(label, fields, "reset")

    def _receive(self, data: bytes) -> None:
        try:
            change = _decode_change(data)
        except msgspec.DecodeError:  # not ours: someone else publishes on the channel
            return
        if change.by == self.token:
            return  # this process's own: already taken from the script's answer
        self._held.pop(change.label, None)  # another process moved it on: any probe held here is over
        self._take(change.label, [change.state, change.opened_at, change.failures, change.version], "newer")

    def _keep(self) -> None:
        """Keep the probes whose probe call is still in flight; let the others lapse."""
        now = time.monotonic()
        for label, until in list(self._held.items()):
            breaker = self._local.find(label) if self._local is not None else None
            if now >= until or breaker is None:
                del self._held[label]
            elif breaker.probes > 0 and until - now < self._probe_ttl_s * 2 / 3:
                self._put(_Write("claim", label, ("0", "0")))  # held already: no reset timeout to wait

    def _up(self) -> None:
        self._online = True
        if self._failing:
            self._failing = False
            log.warning("breakers: Redis answers again; following the fleet's breakers")

    def _down(self, exc: BaseException) -> None:
        self.errors += 1
        self._online = False
        if not self._failing:
            self._failing = True
            log.warning(
                "breakers: Redis is not answering (%s); each worker's breakers work on their own until it does",
                type(exc).__name__,
            )
