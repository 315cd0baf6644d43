"""Rate limits in Redis (``state.backend: redis``): one count shared by every worker and replica.

Admission is one server-side script for all of a request's subjects (its key and its team), so it
is atomic: three replicas sharing a key with ``rpm: 30`` admit exactly 30 requests a minute
between them. Each subject has a sliding log of requests (a sorted set of request ids by time),
a sliding log of token reservations (a sorted set, the amounts in a hash, their sum in a string)
and the requests in flight (a sorted set, so that a crashed worker's entries age out). Settlement
is a second script, sent off the request path. Keys expire on their own when a subject goes quiet.

Any Redis failure or a call slower than ``timeout_s`` raises ``StateUnavailable``; the caller
decides (``state.on_state_error``). After a failure Redis is not asked again for ``RETRY_S``, so a
dead Redis costs no time per request, and it is used again by itself once it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

WINDOW_MS: Final = 60_000
PARALLEL_TTL_MS: Final = 15 * 60_000  # a request in flight longer than this no longer counts
RETRY_S: Final = 1.0
COMPLAIN_EVERY_S: Final = 60.0
PREFIX: Final = "sb:limits:"

# A key of the wrong type (left in Redis by something else) fails only the admission or settlement
# that touches it; any other error (READONLY after a failover, OOM, …) fails the whole call, which
# the caller handles as Redis away.
_WRONGTYPE: Final = """
local function wrongtype(e)  -- the error a redis.call raised: a table in some places, its text in others
  local text = type(e) == 'table' and tostring(e.err) or tostring(e)
  if string.find(text, 'WRONGTYPE', 1, true) then return text end
  error(e, 0)
end
"""

# The admissions asked for in one turn of the event loop, in one call: each is atomic, and they
# run in the order asked. KEYS: the batch's subjects' base keys; the script derives each one's six
# (requests, token log, token amounts, token sum, in flight, spend). (A single Redis, not a
# cluster.) ARGV: window ms, parallel ttl ms, then the admissions as one string, a line each: its
# member (no whitespace), its token estimate and its subjects, six words each: the index in KEYS,
# rpm, tpm, max_parallel (0: none), budget in USD (0: none) and the spend field of its period
# ("-": none). Three arguments and one string back whatever the batch's size: the client's
# per-argument and per-element work (packing each in Python, parsing each reply) is what an
# admission costs the proxy. The answer has a line per admission: "0 <subject index> <what>
# <wait ms or, for 'budget', the spend>" or "1" and then per subject "<rpm left> <rpm reset ms>
# <tpm left> <tpm reset ms> <spend>" (spend "" no budget, "-" not counted here yet: the caller
# seeds it from the database), or "e <error>" when the script failed for that admission.
ADMIT: Final = (
    _WRONGTYPE
    + """
local t = redis.call('TIME')  -- Redis's clock: replicas' clocks may disagree
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local function int(x) return string.format('%d', x) end

local function admit(member, est, spec)
  local subjects, w = {}, {}
  for word in string.gmatch(spec, '%S+') do w[#w+1] = word end
  for j = 1, #w, 6 do
    subjects[#subjects+1] = {KEYS[tonumber(w[j])], tonumber(w[j+1]), tonumber(w[j+2]), tonumber(w[j+3]),
                             tonumber(w[j+4]), w[j+5]}
  end
  local spent = {}
  for i, sub in ipairs(subjects) do
    local b, rpm, tpm, par, budget, field = sub[1], sub[2], sub[3], sub[4], sub[5], sub[6]
    local rk, tk, ak, sk, pk = b..':req', b..':tok', b..':amt', b..':sum', b..':par'
    local s = ''
    if budget > 0 then
      if redis.call('EXISTS', b..':spend') == 0 then s = '-' else
        s = redis.call('HGET', b..':spend', field) or '0'
        if tonumber(s) >= budget then return '0 '..(i-1)..' budget '..s end
      end
    end
    spent[i] = s
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - window)
    while true do  -- in chunks: unpack() has a limit
      local old = redis.call('ZRANGEBYSCORE', tk, '-inf', now - window, 'LIMIT', 0, 500)
      if #old == 0 then break end
      local gone = 0
      for _, a in ipairs(redis.call('HMGET', ak, unpack(old))) do gone = gone + (tonumber(a) or 0) end
      redis.call('ZREM', tk, unpack(old))
      redis.call('HDEL', ak, unpack(old))
      redis.call('INCRBYFLOAT', sk, -gone)
    end
    redis.call('ZREMRANGEBYSCORE', pk, '-inf', now - ttl)
    if par > 0 and redis.call('ZCARD', pk) >= par then return '0 '..(i-1)..' parallel 1000' end
    if rpm > 0 and redis.call('ZCARD', rk) >= rpm then
      local first = redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')
      return '0 '..(i-1)..' rpm '..int(tonumber(first[2]) + window - now)
    end
    if tpm > 0 then
      local sum = tonumber(redis.call('GET', sk) or '0')
      if sum + est > tpm and redis.call('ZCARD', tk) > 0 then
        local need, freed, wait = sum + est - tpm, 0, window
        local log = redis.call('ZRANGE', tk, 0, -1, 'WITHSCORES')
        for j = 1, #log, 2 do
          freed = freed + (tonumber(redis.call('HGET', ak, log[j])) or 0)
          wait = tonumber(log[j+1]) + window - now
          if freed >= need then break end
        end
        return '0 '..(i-1)..' tpm '..int(wait)
      end
    end
  end
  local out = {'1'}
  for i, sub in ipairs(subjects) do
    local b, rpm, tpm = sub[1], sub[2], sub[3]
    local rk, tk, ak, sk, pk = b..':req', b..':tok', b..':amt', b..':sum', b..':par'
    redis.call('ZADD', pk, now, member)
    redis.call('PEXPIRE', pk, ttl)
    local rleft, rreset, tleft, treset = -1, 0, -1, 0
    if rpm > 0 then
      redis.call('ZADD', rk, now, member)
      redis.call('PEXPIRE', rk, window)
      rleft = rpm - redis.call('ZCARD', rk)
      rreset = tonumber(redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')[2]) + window - now
    end
    if tpm > 0 then
      redis.call('ZADD', tk, now, member)
      redis.call('HSET', ak, member, est)
      local sum = tonumber(redis.call('INCRBYFLOAT', sk, est))
      for _, k in ipairs({tk, ak, sk}) do redis.call('PEXPIRE', k, window) end
      tleft = math.floor(tpm - sum)
      treset = tonumber(redis.call('ZRANGE', tk, 0, 0, 'WITHSCORES')[2]) + window - now
    end
    out[#out+1] = int(rleft)..' '..int(rreset)..' '..int(tleft)..' '..int(treset)..' '..spent[i]
  end
  return table.concat(out, ' ')
end

local answers = {}
for line in string.gmatch(ARGV[3], '[^\\n]+') do
  local member, est, spec = string.match(line, '^(%S+) (%S+) (.*)$')
  local ok, answer = pcall(admit, member, tonumber(est), spec)
  if not ok then answer = 'e '..(string.gsub(wrongtype(answer), '\\n', ' ')) end  -- the caller undoes what it wrote
  answers[#answers+1] = answer
end
return table.concat(answers, '\\n')
"""
)

# Spend: per subject a hash of period field ("daily:2026-11-30", …, "total") → USD, seeded from
# the database when missing (SEED) and charged as requests end (CHARGE). A charge to a subject
# with no hash is left out: its seed, read from the database later, carries it. KEYS: the hashes,
# the first ARGV[1] of them to drop (their charges may be lost: they are rebuilt from the
# database). ARGV: that count, the ttl in ms, then per charge: the hash's index in KEYS, the cost
# and its four period fields.
CHARGE: Final = """
local stale, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, stale do redis.call('DEL', KEYS[i]) end
local i = 3
while i <= #ARGV do
  local k = KEYS[tonumber(ARGV[i])]
  if redis.call('EXISTS', k) == 1 then
    for j = i + 2, i + 5 do redis.call('HINCRBYFLOAT', k, ARGV[j], ARGV[i+1]) end
    redis.call('PEXPIRE', k, ttl)
  end
  i = i + 6
end
return 1
"""

# KEYS[1]: a subject's spend hash; ARGV: ttl in ms, then field, value pairs. Only a missing hash
# is seeded: a live one is never overwritten.
SEED: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""
SPEND_TTL_MS: Final = 40 * 86_400_000  # a quiet subject's hash goes; it is seeded again when used

# Many settlements in one call: KEYS are the subjects' base keys; ARGV[1] the settlements, a line
# each: its member, its delta (the real usage minus the estimate, "?" when unknown, "x" to undo the
# admission) and then each of its subjects' index in KEYS (one argument in all: see ADMIT).
SETTLE: Final = (
    _WRONGTYPE
    + """
local function settle(b, member, delta)
  redis.call('ZREM', b..':par', member)
  if delta == 'x' then  -- an admission whose outcome was never known: undo it whole
    redis.call('ZREM', b..':req', member)
    redis.call('ZREM', b..':tok', member)
    local amount = redis.call('HGET', b..':amt', member)
    if amount then
      redis.call('HDEL', b..':amt', member)
      redis.call('INCRBYFLOAT', b..':sum', -tonumber(amount))
    end
  elseif tonumber(delta) and tonumber(delta) ~= 0 and redis.call('HEXISTS', b..':amt', member) == 1 then
    redis.call('HINCRBYFLOAT', b..':amt', member, tonumber(delta))
    redis.call('INCRBYFLOAT', b..':sum', tonumber(delta))
  end
end
-- Per subject: one that fails is left to age out of its windows (retried, it would hold back the
-- rest); its request's other subjects are settled.
local failed = 0
for line in string.gmatch(ARGV[1], '[^\\n]+') do
  local member, delta = nil, nil
  for word in string.gmatch(line, '%S+') do
    if member == nil then member = word elseif delta == nil then delta = word else
      local ok, e = pcall(settle, KEYS[tonumber(word)], member, delta)
      if not ok and wrongtype(e) then failed = failed + 1 end
    end
  end
end
return failed
"""
)
CANCEL: Final = "x"  # a settlement's delta that undoes its admission
MAX_QUEUED: Final = 100_000  # settlements kept for Redis while it is away (older ones age out there)
SETTLE_EVERY_S: Final = 0.002  # settlements wait this long to go to Redis together

# subject, rpm, tpm, max_parallel, budget_usd, budget period
Spec = tuple[str, int | None, int | None, int | None, float | None, str]
Charge = tuple[Sequence[str], float, Sequence[str]]  # subjects, cost, the four period fields


# An admission asked for: its subjects, its member, its estimate, its subjects' words for the
# script (all but their index in the batch's keys), and who waits for it.
Pending = tuple[Sequence["Spec"], str, int, list[str], "asyncio.Future[list[Any]]"]


class StateUnavailable(Exception):
    """Redis did not answer, or not in time."""


class RedisLimiter:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.redis: Redis = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.timeout_s = timeout_s
        self.errors = 0  # for the metrics
        self._down_until = 0.0
        self._failing = False
        self._quiet_until = 0.0  # the next failure of Redis's own is logged from then on
        self._admit = self.redis.register_script(ADMIT)
        self._settle = self.redis.register_script(SETTLE)
        self._charge = self.redis.register_script(CHARGE)
        self._seed = self.redis.register_script(SEED)
        self._charges: list[Charge] = []
        self._stale: set[str] = set()  # spend hashes whose charges may be lost: rebuilt from the database
        self._charging = asyncio.Lock()  # charge batches reach Redis one at a time, in order
        self._charge_scheduled = False
        self._settling: set[asyncio.Task[None]] = set()
        self._queued: list[tuple[Sequence[Spec], str, int | str]] = []
        self._settle_scheduled = False
        self._closing = False
        self._admissions: list[Pending] = []

    async def close(self) -> None:
        self._closing = True
        if self._admissions:  # asked for, not sent yet: Redis is going away
            self._fail(self._admissions, StateUnavailable("shutting down"))
            self._admissions = []
        for task in list(self._settling):  # waiting to retry, or in flight: what they held is kept
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
        if self._queued:  # one last try for what is still owed to Redis
            with contextlib.suppress(StateUnavailable):
                await self._send_settlements(self._queued)
        if self._charges or self._stale:
            await self._send_charges(self._charges)
        await self.redis.aclose()

    async def admit(
        self, specs: Sequence[Spec], estimate: int, member: str, fields: Mapping[str, str] | None = None
    ) -> list[Any]:
        """The script's answer (see ``ADMIT``) as a list of its words, the first 1 (admitted) or 0,
        the rest as bytes; or ``StateUnavailable``. ``member`` must be unique
        to this admission: it is the request's entry in the shared windows. ``fields``: each
        budget period's spend field today."""
        words = []
        for _, rpm, tpm, parallel, budget, period in specs:
            field = fields.get(period, "") if budget is not None and fields else ""
            words.append(f"{rpm or 0} {tpm or 0} {parallel or 0} {budget if field else 0} {field or '-'}")
        if time.monotonic() < self._down_until:
            raise StateUnavailable("Redis failed a moment ago")
        # The admissions asked for in one turn of the event loop go to Redis in one call: under
        # load that is one round trip for many requests instead of one each.
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[Any]] = loop.create_future()
        self._admissions.append((specs, member, estimate, words, answer))
        if len(self._admissions) == 1:
            loop.call_soon(self._send_admissions)
        return await answer

    def _send_admissions(self) -> None:
        batch, self._admissions = self._admissions, []
        if batch:
            task = self._spawn(self._admit_batch(batch))
            # Cancelled (by close) before it ever ran: nothing was sent, and nobody may be left waiting.
            task.add_done_callback(
                lambda done: done.cancelled() and self._fail(batch, StateUnavailable("shutting down"))
            )

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return task

    async def _admit_batch(self, batch: list[Pending]) -> None:
        keys: dict[str, int] = {}
        lines: list[str] = []
        for specs, member, estimate, words, _ in batch:
            spec = " ".join(
                f"{keys.setdefault(PREFIX + subject, len(keys) + 1)} {w}"
                for (subject, *_), w in zip(specs, words, strict=True)
            )
            lines.append(f"{member} {estimate} {spec}")
        try:
            replies = await self._call(self._admit, list(keys), [WINDOW_MS, PARALLEL_TTL_MS, "\n".join(lines)])
        except BaseException as exc:
            # Failed or timed out, the script may still have run: each admission is undone
            # (once Redis answers), and nobody is left waiting.
            for specs, member, *_ in batch:
                self._queue(specs, member, CANCEL)
            self._fail(batch, exc if isinstance(exc, StateUnavailable) else StateUnavailable(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        self._deliver(batch, replies)

    def _deliver(self, batch: list[Pending], replies: Any) -> None:
        """Each admission's answer to whoever waits for it; one nobody waits for any more, or
        that failed in Redis, is undone."""
        try:
            answers = [reply.split(b" ") for reply in replies.split(b"\n")]
            if len(answers) != len(batch):
                raise ValueError(f"{len(answers)} answers for {len(batch)} admissions")
        except (AttributeError, TypeError, ValueError) as exc:  # not the script's answer: undone, like a failure
            self._complain(1, "state: unexpected answer from Redis's admission script: %s", exc)
            for specs, member, *_ in batch:
                self._queue(specs, member, CANCEL)
            self._fail(batch, StateUnavailable(f"unexpected answer from Redis: {exc}"))
            return
        for (specs, member, _, _, answer), words in zip(batch, answers, strict=True):
            if words[0] == b"e":  # the script failed for this one: whatever it wrote is undone
                self._complain(
                    1, "state: an admission failed in Redis: %s", b" ".join(words[1:]).decode(errors="replace")
                )
                self._queue(specs, member, CANCEL)
                if not answer.done():
                    answer.set_exception(StateUnavailable("Redis failed the admission"))
                continue
            admitted = words[0] == b"1"
            if answer.done():  # its request stopped waiting: it will not run
                if admitted:
                    self._queue(specs, member, CANCEL)
            else:
                answer.set_result([1 if admitted else 0, *words[1:]])

    def _complain(self, count: int, message: str, *args: object) -> None:
        """Counted each time, logged at most once a minute: it may repeat with every request."""
        self.errors += count
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + COMPLAIN_EVERY_S
            log.warning(message, *args)

    @staticmethod
    def _fail(batch: list[Pending], exc: StateUnavailable) -> None:
        for *_, answer in batch:
            if not answer.done():
                answer.set_exception(StateUnavailable(str(exc)))

    def settle(self, specs: Sequence[Spec], member: str, delta: int | None) -> None:
        """Give back the request's slot and true up its tokens, off the request path: the
        settlements of a few milliseconds go to Redis in one call."""
        self._queue(specs, member, "?" if delta is None else delta)

    def _queue(self, specs: Sequence[Spec], member: str, delta: int | str) -> None:
        self._queued.append((specs, member, delta))
        if len(self._queued) > MAX_QUEUED:  # Redis away for long: the oldest age out there anyway
            del self._queued[: len(self._queued) - MAX_QUEUED]
        if not self._settle_scheduled and not self._closing:
            self._settle_scheduled = True
            self._spawn(self._settle_soon())

    async def _settle_soon(self) -> None:
        try:
            await asyncio.sleep(max(SETTLE_EVERY_S, self._down_until - time.monotonic()))
        finally:
            self._settle_scheduled = False
        queued, self._queued = self._queued, []
        try:
            await self._send_settlements(queued)
        except StateUnavailable:
            # Kept, in front of any newer ones, for the next try once Redis answers.
            self._queued[:0] = queued
            if not self._settle_scheduled and not self._closing:
                self._settle_scheduled = True
                self._spawn(self._settle_soon())
        except asyncio.CancelledError:
            self._queued[:0] = queued
            raise

    async def _send_settlements(self, queued: list[tuple[Sequence[Spec], str, int | str]]) -> None:
        keys: dict[str, int] = {}
        lines: list[str] = []
        for specs, member, delta in queued:
            indices = " ".join(str(keys.setdefault(PREFIX + subject, len(keys) + 1)) for subject, *_ in specs)
            lines.append(f"{member} {delta} {indices}")
        failed = int(await self._call(self._settle, list(keys), ["\n".join(lines)]))
        if failed:  # left to age out of their windows (see SETTLE)
            self._complain(failed, "state: %d settlements failed in Redis (a key of the wrong type)", failed)

    # spend

    def charge(self, subjects: Sequence[str], cost: float, fields: Sequence[str]) -> None:
        """Add a request's cost to its subjects' spend, off the request path (batched)."""
        self._charges.append((subjects, cost, fields))
        if not self._charge_scheduled and not self._closing:
            self._charge_scheduled = True
            self._spawn(self._charge_soon(SETTLE_EVERY_S))

    async def _charge_soon(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            self._charge_scheduled = False
        async with self._charging:
            charges, self._charges = self._charges, []
            await self._send_charges(charges)

    async def drain(self) -> None:
        """Return once every charge made so far has reached Redis or been given up on. The spend
        ledger calls it before it writes a batch to the database, so that a charge is in the
        database only after it is in Redis: a hash seeded from the database can then never be
        charged the same request again."""
        charges, self._charges = self._charges, []
        async with self._charging:  # after the batches taken before this one
            await self._send_charges(charges)

    async def _send_charges(self, charges: list[Charge]) -> None:
        """One call, never retried: a charge that may not have landed marks its subjects stale,
        and the next call drops their hashes so they are seeded again from the database (which
        has every charge). Lost charges are never sent twice, so nothing is counted twice."""
        if not charges and not self._stale:
            return
        stale = [PREFIX + subject + ":spend" for subject in self._stale]
        keys = {key: i + 1 for i, key in enumerate(stale)}
        # Summed per subject and period fields first: one increment per subject per batch, not
        # per request (the fields differ only when a day turned over within the batch).
        totals: dict[tuple[int, Sequence[str]], float] = {}
        for subjects, cost, fields in charges:
            for subject in subjects:
                at = (keys.setdefault(PREFIX + subject + ":spend", len(keys) + 1), tuple(fields))
                totals[at] = totals.get(at, 0.0) + cost
        argv: list[Any] = [len(stale), SPEND_TTL_MS]
        for (index, fields), cost in totals.items():
            argv += [index, cost, *fields]
        dropping = set(self._stale)
        try:
            await self._call(self._charge, list(keys), argv)
        except StateUnavailable:
            self._stale.update(subject for subjects, _, _ in charges for subject in subjects)
            if not self._charge_scheduled and not self._closing:  # the drop must reach Redis
                self._charge_scheduled = True
                self._spawn(self._charge_soon(RETRY_S))
        else:
            self._stale -= dropping

    async def seed(self, subject: str, values: Mapping[str, float]) -> bool:
        """Start a subject's spend in Redis from the database's figures, unless it is there
        already. True when this call seeded it."""
        argv: list[Any] = [SPEND_TTL_MS]
        for field, value in values.items():
            argv += [field, value]
        return bool(await self._call(self._seed, [PREFIX + subject + ":spend"], argv))

    async def _call(self, script: Any, keys: list[str], argv: list[Any]) -> Any:
        return await self._guarded(script(keys=keys, args=argv))

    async def _guarded(self, call: Any) -> Any:
        if time.monotonic() < self._down_until:
            call.close()
            raise StateUnavailable("Redis failed a moment ago")
        try:  # the client's socket timeouts bound the call
            result = await call
        except (RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            if not self._failing:
                log.warning("state: Redis is not answering (%s); trying again every %gs", type(exc).__name__, RETRY_S)
            self._failing = True
            self._down_until = time.monotonic() + RETRY_S
            raise StateUnavailable(str(exc)) from None
        if self._failing:
            self._failing = False
            log.warning("state: Redis answers again")
        return result
