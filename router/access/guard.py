"""The guard the API calls: who is calling (``authenticate``), whether they may use a model, and
whether their limits admit the request now (``admit``).

Keys are served from memory. With a database, every worker reads its change counter every
``REFRESH_S`` and reloads keys and teams when it moved, so a revocation, an expiry or an edit made
through any worker or replica takes effect everywhere within a second; the request path never
waits on the database.

Without ``auth.master_key`` Switchboard runs open: every caller is let through unchecked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Final

from router.access.limits import Admission, Admitted, Budget, Headroom, Limiter, Refusal
from router.access.secrets import digest, key_id_of
from router.access.spend import Ledger, next_reset, utc_today
from router.config_schema import Config, DeclaredKey
from router.errors import AuthenticationFailed, ModelNotAllowed, QuotaExceeded, Refused, StateRefused
from router.gateway.outcome import Pricer
from router.state.redis_limits import RedisLimiter, Spec, StateUnavailable
from router.store.database import Database
from router.store.records import KeyRecord, ModelRule, TeamRecord

log = logging.getLogger(__name__)

REFRESH_S: Final = 0.5
_WHAT: Final = {"rpm": "requests per minute", "tpm": "tokens per minute", "parallel": "requests in parallel"}


def _refused(label: str, refusal: Refusal) -> Refused:
    wait = max(refusal.wait_s, 0.001)
    return Refused(
        f"Rate limit reached for {label}: {refusal.limit} {_WHAT[refusal.kind]}. Try again in {wait:.3g}s.",
        code="rate_limit_exceeded",
        retry_after=wait,
        headers=refusal.headers(),
    )


PERIOD_WORDS: Final = {"daily": "a day", "weekly": "a week", "monthly": "a month"}
INVALID_KEY: Final = (
    "Incorrect or missing API key. Send a Switchboard key as `Authorization: Bearer <key>`, "
    "`api-key: <key>` or `x-api-key: <key>`."
)
_SPACE: Final = re.compile(r"\s")


class Caller:
    """An authenticated caller: the master key, a virtual key (with its team), or anyone when
    Switchboard runs open."""

    __slots__ = (
        "_rules",
        "budgeted",
        "by_model",
        "expires",
        "key",
        "label",
        "limited",
        "local",
        "model_local",
        "params",
        "specs",
        "team",
    )

    def __init__(self, key: KeyRecord | None, team: TeamRecord | None, label: str) -> None:
        self.key = key
        self.team = team
        self.label = label
        rules = [ModelRule(r.models) for r in (key, team) if r is not None and r.models]
        self._rules = tuple(rules)
        self.expires = key.expires_at.timestamp() if key is not None and key.expires_at is not None else None
        # Worked out once per reload, not per request: the limits that apply and the budgets.
        subjects = [(f"{kind}:{r.id}", r) for kind, r in (("key", key), ("team", team)) if r is not None]
        self.specs: list[Spec] = [
            (name, r.rpm, r.tpm, r.max_parallel, r.budget_usd, r.budget_period or "total")
            for name, r in subjects
            if r.rpm or r.tpm or r.max_parallel or r.budget_usd is not None
        ]
        self.limited = [spec for spec in self.specs if spec[1] or spec[2] or spec[3]]  # counted in memory
        self.budgeted = [(name, r) for name, r in subjects if r.budget_usd is not None]
        self.local: list[Budget] = []  # this process's counts for ``limited`` (the guard fills it in)
        # The key's limits per model pattern, in order (the first that matches a request counts),
        # each a subject of its own counted beside the key's and the team's.
        self.by_model: list[tuple[str, ModelRule, Spec]] = []
        for pattern, m in key.model_limits.items() if key is not None else ():
            if m.rpm or m.tpm or m.max_parallel:
                spec: Spec = (f"{subjects[0][0]}:model:{pattern}", m.rpm, m.tpm, m.max_parallel, None, "")
                self.by_model.append((pattern, ModelRule((pattern,)), spec))
        self.model_local: list[Budget] = []  # this process's counts for ``by_model`` (the guard fills it in)
        self.params = key.params if key is not None else None

    @property
    def restricted(self) -> bool:
        """Whether any model list applies."""
        return bool(self._rules)

    def allows(self, model: str) -> bool:
        return all(rule.allows(model) for rule in self._rules)


OPEN: Final = Caller(None, None, "open")
MASTER: Final = Caller(None, None, "master")


def key_id_of_caller(caller: Caller) -> str | None:
    """What the Outcome records: the key's id, "" for the master key, None when open."""
    if caller.key is not None:
        return caller.key.id
    return "" if caller is MASTER else None


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key in ``Authorization: Bearer``, ``api-key`` or ``x-api-key`` (in that order of
    preference; the first of each name counts), or None. A malformed value is not a key."""
    api_key = x_api_key = None
    for name, value in headers:
        if name == b"authorization":  # the preferred header: no need to look further
            return _parsed(name, value)
        if name == b"api-key":
            if api_key is None:
                api_key = value
        elif name == b"x-api-key" and x_api_key is None:
            x_api_key = value
    if api_key is not None:
        return _parsed(b"api-key", api_key)
    if x_api_key is not None:
        return _parsed(b"x-api-key", x_api_key)
    return None


def _parsed(name: bytes, raw: bytes) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return ""
    if name == b"authorization":
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer":
            return ""
        text = token
    text = text.strip()
    return text if text and not _SPACE.search(text) else ""


class Guard:
    def __init__(self, config: Config, database: Database | None, pricing: Pricer | None = None) -> None:
        self.master_key = config.auth.master_key
        self.enforcing = bool(self.master_key)
        self._master_digest = digest(self.master_key)
        self.database = database
        self.limiter = Limiter()  # this process's count (and the fallback while Redis is away)
        state = config.state
        self.shared = RedisLimiter(state.url, state.timeout_s) if state.backend == "redis" else None
        self.on_state_error = state.on_state_error
        self.ledger: Ledger | None = Ledger(database, pricing, shared=self.shared) if database is not None else None
        self.version = -1
        self._declared = _declared_keys(config.keys)
        self._by_id: dict[str, tuple[KeyRecord, Caller]] = {}
        self._by_digest: dict[str, tuple[KeyRecord, Caller]] = {}
        self._teams: dict[str, TeamRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self._install([], [])

    # the in-memory copy

    async def start(self) -> None:
        if self.database is None:
            return
        await self.reload()
        if self.ledger is not None:
            await self.ledger.start()
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            if self.ledger is not None:
                await self.ledger.stop()  # its last batch charges Redis first
        finally:  # the database away must not keep Redis from getting its settlements
            if self.shared is not None:
                await self.shared.close()

    async def reload(self) -> None:
        assert self.database is not None
        version, keys, teams = await self.database.load()
        if version < self.version:  # a slower, older read finishing after a newer one
            return
        self._install(keys, teams)
        self.version = version

    async def _refresh_forever(self) -> None:
        assert self.database is not None
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                if await self.database.version() != self.version:
                    await self.reload()
            except Exception:  # the database away: keep serving the keys we have, say so
                log.warning("keys: cannot refresh from the database; serving the last copy", exc_info=True)

    def _install(self, keys: Sequence[KeyRecord], teams: Sequence[TeamRecord]) -> None:
        team_of = {t.id: t for t in teams}
        by_id: dict[str, tuple[KeyRecord, Caller]] = {}
        by_digest: dict[str, tuple[KeyRecord, Caller]] = {}
        for key in (*self._declared, *keys):
            caller = Caller(key, team_of.get(key.team_id or ""), key.id)
            caller.local = [self.limiter.subject(*spec[:4]) for spec in caller.limited]  # counts survive reloads
            caller.model_local = [self.limiter.subject(*spec[:4]) for _, _, spec in caller.by_model]
            entry = (key, caller)
            by_digest[key.key_hash] = entry
            by_id[key.id] = entry
        self._by_id, self._by_digest, self._teams = by_id, by_digest, team_of

    # the request path

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]]) -> Caller:
        """The caller, or ``AuthenticationFailed``: the same answer whether the key is missing,
        unknown, revoked, disabled or expired."""
        if not self.enforcing:
            return OPEN
        presented = presented_key(headers)
        if not presented:
            raise AuthenticationFailed(INVALID_KEY)
        presented_digest = digest(presented)  # once: every comparison is of digests, in constant time
        if hmac.compare_digest(presented_digest, self._master_digest):
            return MASTER
        key_id = key_id_of(presented)
        entry = self._by_id.get(key_id) if key_id is not None else None
        if entry is None:  # a key declared in config.yaml, which may have any shape
            entry = self._by_digest.get(presented_digest)
        if entry is None or not hmac.compare_digest(presented_digest, entry[0].key_hash):
            raise AuthenticationFailed(INVALID_KEY)
        if not _usable(*entry):
            raise AuthenticationFailed(INVALID_KEY)
        return entry[1]

    def caller_of(self, key_id: str | None) -> Caller:
        """The caller with the key ``key_id`` (as ``key_id_of_caller`` names it), as it stands now:
        for a request started elsewhere (a stream another replica handed off). The same
        ``AuthenticationFailed`` as ``authenticate`` if that key may no longer be used."""
        if not self.enforcing:
            return OPEN
        if key_id == "":
            return MASTER
        entry = self._by_id.get(key_id) if key_id is not None else None
        if entry is None or not _usable(*entry):
            raise AuthenticationFailed(INVALID_KEY)
        return entry[1]

    def check_model(self, caller: Caller, model: str) -> None:
        if caller.restricted and not caller.allows(model):
            raise ModelNotAllowed(f"This key may not use the model '{model}'.", param="model")

    async def admit(self, caller: Caller, model: str, estimate: int, new_id: Callable[[], str]) -> Admitted | None:
        """Take the request's share of its key's and team's limits (and the key's limit on the
        model asked for), or refuse it with a 429 (``insufficient_quota`` over a budget,
        ``rate_limit_exceeded`` over a limit). With the Redis backend the count is shared; Redis
        away, ``state.on_state_error`` decides: this process's own count (``open``) or a 503
        (``closed``)."""
        if caller.budgeted:
            self._check_budgets(caller)
        specs, local, model_label = caller.specs, caller.local, None
        for i, (pattern, rule, spec) in enumerate(caller.by_model):
            if rule.allows(model):  # the model asked for (its fallbacks count as it); always last
                specs, local = [*specs, spec], [*local, caller.model_local[i]]
                model_label = f"{caller.label} on '{pattern}'"
                break
        if not specs:
            return None
        if self.shared is not None:
            try:
                return await self._admit_shared(self.shared, caller, specs, estimate, new_id(), model_label)
            except StateUnavailable:
                if self.on_state_error == "closed":
                    raise StateRefused(
                        "Rate limits cannot be checked right now (the state backend is not answering); "
                        "try again shortly."
                    ) from None
        if not local:
            return None
        decision = self.limiter.admit(local, estimate, time.monotonic())
        if isinstance(decision, Admission):
            return decision
        label = model_label if model_label and decision.index == len(local) - 1 else caller.label
        raise _refused(label, decision)

    async def _admit_shared(
        self,
        shared: RedisLimiter,
        caller: Caller,
        specs: list[Spec],
        estimate: int,
        request_id: str,
        model_label: str | None,
    ) -> SharedAdmission:
        fields = self.ledger.fields() if self.ledger is not None else None
        answer = await shared.admit(specs, estimate, request_id, fields)
        if answer[0] == 1:
            admission = SharedAdmission(shared, specs, request_id, estimate, answer[1:])
            # (Each subject's spend is every fifth word; "-": Redis has none yet.)
            if caller.budgeted and self.ledger is not None and any(s in (b"-", "-") for s in answer[5::5]):
                try:
                    await self._seed_missing(shared, self.ledger, specs, answer)
                except BaseException:  # cancelled meanwhile: the slot it took goes back
                    admission.settle(None)
                    raise
            return admission
        _, index, kind, figure = answer
        subject, rpm, tpm, parallel, *_ = specs[int(index)]
        kind = _text(kind)
        if kind == "budget":
            record = next(r for name, r in caller.budgeted if name == subject)
            raise _over_budget(subject, record, float(_text(figure)))
        limit = {"rpm": rpm, "tpm": tpm, "parallel": parallel}[kind] or 0
        label = model_label if model_label and int(index) == len(specs) - 1 else caller.label
        raise _refused(label, Refusal(kind, limit, int(figure) / 1000))

    def _check_budgets(self, caller: Caller) -> None:
        """This process's figure: the database's plus what it has not written yet. With Redis it
        is checked as well as the shared count, which may be being rebuilt."""
        for subject, record in caller.budgeted:
            assert record.budget_usd is not None
            spent = self.ledger.spent(subject, record.budget_period or "total") if self.ledger is not None else 0.0
            if spent >= record.budget_usd:
                raise _over_budget(subject, record, spent)

    @staticmethod
    async def _seed_missing(shared: RedisLimiter, ledger: Ledger, specs: Sequence[Spec], answer: list[object]) -> None:
        """Start the shared spend count of any subject Redis has none for (its first request,
        or Redis restarted) from the database's figure. Awaited, so that this request's own
        charge lands on it; after that the count is there for every replica."""
        for i, spec in enumerate(specs):
            stored = ledger.stored(spec[0]) if answer[5 + i * 5] in (b"-", "-") else None
            if stored is not None:  # (None: not read for today yet; the next request asks again)
                with contextlib.suppress(StateUnavailable):  # the next request asks again
                    await shared.seed(spec[0], stored)

    def callers(self) -> list[Caller]:
        return [caller for _, caller in self._by_id.values()]


def _usable(key: KeyRecord, caller: Caller) -> bool:
    """Neither disabled, revoked nor expired."""
    return key.enabled and key.revoked_at is None and (caller.expires is None or time.time() < caller.expires)


def _over_budget(subject: str, record: KeyRecord | TeamRecord, spent: float) -> QuotaExceeded:
    assert record.budget_usd is not None
    period = record.budget_period or "total"
    kind = subject.partition(":")[0]
    reset = next_reset(period, utc_today())
    when = f"it resets on {reset.isoformat()} (UTC)" if reset else "it does not reset: raise it or use another key"
    return QuotaExceeded(
        f"The {kind} '{record.name}' has used its budget of ${record.budget_usd:g}"
        f"{'' if period == 'total' else ' ' + PERIOD_WORDS[period]} (spent ${spent:.4f}); {when}.",
        code="insufficient_quota",
        headers=(("x-should-retry", "false"),),
    )


def _declared_keys(declared: Sequence[DeclaredKey]) -> list[KeyRecord]:
    """Keys from config.yaml (hashed when the config was read). A key whose variable is unset or
    empty has no hash and is left out, with a warning (like a provider without a key)."""
    stamp = datetime.now(UTC)
    records: list[KeyRecord] = []
    for item in declared:
        key_hash = item.key_hash
        if key_hash is None:
            log.warning("keys: '%s' is left out: its variable %s is not set", item.name, item.key_env)
            continue
        records.append(
            KeyRecord(
                id=f"cfg-{item.name}",
                name=item.name,
                key_hash=key_hash,
                models=tuple(item.models),
                rpm=item.rpm,
                tpm=item.tpm,
                max_parallel=item.max_parallel,
                budget_usd=item.budget_usd,
                budget_period=item.budget_period,
                model_limits=dict(item.model_limits),
                params=item.params,
                metadata={"source": "config"},
                created_at=stamp,
                updated_at=stamp,
            )
        )
    return records


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SharedAdmission:
    """A request admitted by the shared count; its settlement goes to Redis off the request path."""

    __slots__ = ("_estimate", "_limiter", "_member", "_settled", "_specs", "headroom")

    def __init__(
        self, limiter: RedisLimiter, specs: list[Spec], member: str, estimate: int, figures: Sequence[bytes]
    ) -> None:
        self._limiter = limiter
        self._specs = specs
        self._member = member
        self._estimate = estimate
        self._settled = False
        self.headroom = Headroom()
        headroom = self.headroom
        for i, (_, rpm, tpm, *_rest) in enumerate(specs):
            rleft, rreset, tleft, treset = map(int, figures[i * 5 : i * 5 + 4])
            if rpm and (headroom.remaining_requests is None or rleft < headroom.remaining_requests):
                headroom.limit_requests, headroom.remaining_requests = rpm, rleft
                headroom.reset_requests_s = rreset / 1000
            if tpm and (headroom.remaining_tokens is None or tleft < headroom.remaining_tokens):
                headroom.limit_tokens, headroom.remaining_tokens = tpm, tleft
                headroom.reset_tokens_s = treset / 1000

    def settle(self, tokens: int | None) -> None:
        if self._settled:
            return
        self._settled = True
        self._limiter.settle(self._specs, self._member, None if tokens is None else tokens - self._estimate)
