"""Attempt planning and execution: the failover loop.

A request walks its route's targets in order (each group ordered by its balancing strategy),
skipping unavailable providers, open breakers and full targets. Each target gets its first try
and, for retryable failures, more tries under the retry policy. A failure that is the client's
(400, 404, 413, 422 from the upstream) goes straight back. Everything happens inside one
deadline (``timeouts.total_s``). A stream may move on until its first chunk has arrived; after
that it is committed to its target.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Generic, TypeVar

import httpx

from providers.base import Inbound, Parsed, Provider, SecretRedactor, StreamTranslator
from providers.embeddings import EmbeddingsCall
from providers.errors import (
    SwitchboardError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTimeout,
)
from providers.openai import OpenAIProvider
from router.config import HedgeConfig, TimeoutsConfig
from router.errors import AllTargetsFailed, InvalidRequest, NoTargetAvailable
from router.gateway import completions, messages, responses
from router.gateway.balancing import order
from router.gateway.completions import CompletionsCall
from router.gateway.hedging import HedgeBudget, Race, hedge_after
from router.gateway.messages import MessagesCall
from router.gateway.outcome import AttemptRecord, Exchange
from router.gateway.responses import ResponsesCall
from router.gateway.routing import Group, Route, Router, Target
from router.gateway.skipped import TargetSkipped
from router.gateway.tracing import Trace
from router.gateway.upstream_stream import UpstreamStream
from router.resilience.bulkhead import Bulkhead
from router.resilience.retry import RetryPolicy
from router.resilience.targets import Lease, TargetRegistry, TargetState
from router.upstreams.registry import Upstream
from router.upstreams.transport import upstream_failure

log = logging.getLogger(__name__)
T = TypeVar("T")
Once = Callable[["Attempt", httpx.Request, "Lease", "Run"], Awaitable[T]]  # one try at one target
Build = Callable[["Attempt"], tuple[httpx.Request, Sequence[str]]]  # a target's request, and what it drops
Parse = Callable[["Attempt", bytes], Parsed]  # a whole answer, as the client's API has it


@dataclass(frozen=True, slots=True)
class Attempt:
    target: Target
    adapter: Provider
    transport: httpx.AsyncBaseTransport
    state: TargetState
    kind: str  # the provider's type (openai, azure, anthropic, gemini, mock)
    drop_unsupported: bool = True


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole non-streamed answer, already in OpenAI's format."""

    body: bytes
    target: Target
    calls: int
    dropped: Sequence[str] = ()


@dataclass(slots=True)
class OpenStream:
    """A stream whose first chunks have arrived: from here on the response is committed. The
    lease ends when the stream does. ``first`` is emptied once relayed (not frozen for that: a
    long stream must not hold its first read to the end)."""

    upstream: UpstreamStream
    first: Sequence[bytes]
    target: Target
    deadline: float  # loop time by which the whole request must be done
    lease: Lease
    calls: int
    dropped: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Prepared:
    """One group of a route with its attempts built (or the reasons they cannot be made)."""

    group: Group
    entries: tuple[Attempt | str, ...]

    def order(self, rng: random.Random) -> Sequence[int]:
        if self.group.strategy == "priority" or len(self.entries) < 2:
            return range(len(self.entries))
        states = [e.state for e in self.entries if isinstance(e, Attempt)]
        if len(states) < len(self.entries):  # some unavailable: balance those that are not
            usable = [i for i, e in enumerate(self.entries) if isinstance(e, Attempt)]
            weights = [self.group.weights[i] for i in usable]
            return [usable[j] for j in order(self.group.strategy, states, weights, rng)] + [
                i for i, e in enumerate(self.entries) if not isinstance(e, Attempt)
            ]
        return order(self.group.strategy, states, self.group.weights, rng)


class Run:
    """One request's way across its targets: the deadline, the calls made, and a record of each
    target tried or passed over (kept on the request's ``Exchange``)."""

    __slots__ = ("_loop", "alias", "calls", "deadline", "dropped", "last", "overtaken", "records", "trace")

    def __init__(self, alias: str, total_s: float, records: list[AttemptRecord], trace: Trace | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self.alias = alias
        self.trace = trace
        self.deadline = self._loop.time() + total_s
        self.calls = 0
        self.records = records
        self.last: SwitchboardError | None = None
        self.dropped: Sequence[str] = ()  # what the answering target could not honour
        self.overtaken: set[asyncio.Task[Any]] = set()  # attempts cancelled because a hedge won

    def remaining(self) -> float:
        return self.deadline - self._loop.time()

    def fits(self, delay: float) -> bool:
        """Could a try that starts after ``delay`` seconds still start before the deadline?"""
        return self._loop.time() + delay < self.deadline

    def skipped(self, target: Target, reason: str) -> None:
        code = skip_code(reason)
        self.records.append(AttemptRecord(target=target.label, result="skipped", error=code, detail=reason))
        if self.trace is not None:
            self.trace.event("target_skipped", {"switchboard.target": target.label, "switchboard.reason": code})

    def tried(
        self,
        target: Target,
        kind: str,
        error: SwitchboardError | None,
        duration_s: float,
        retry: bool,
        hedge: bool = False,
    ) -> None:
        if error is None:
            record = AttemptRecord(
                target=target.label,
                result="ok",
                provider=kind,
                status=200,
                duration_s=duration_s,
                retry=retry,
                hedge=hedge,
            )
        else:
            record = AttemptRecord(
                target=target.label,
                provider=kind,
                result="failed" if error.trips_breaker or error.retryable else "rejected",
                error=type(error).__name__,
                status=getattr(error, "upstream_status", None),
                detail=error.message,
                duration_s=duration_s,
                retry=retry,
                hedge=hedge,
            )
        self.records.append(record)

    def failed(self, target: Target, error: SwitchboardError) -> None:
        self.last = error
        if self.trace is not None:
            self.trace.event("failover", {"switchboard.target": target.label, "error.type": type(error).__name__})
        log.warning(
            "failover model=%s target=%s calls=%d reason=%r", self.alias, target.label, self.calls, error.message
        )

    def summary(self) -> str:
        """Why each target did not answer: its last record (a retried target once)."""
        last = {record.target: record for record in self.records if record.result != "ok"}
        return "; ".join(record.describe() for record in last.values()) or "no targets"

    def exhausted(self) -> SwitchboardError:
        summary = self.summary()
        if self.calls == 0:
            log.warning("no-target model=%s reasons=%r", self.alias, summary)
            return NoTargetAvailable(f"No target can serve model '{self.alias}' now: {summary}", param="model")
        timed_out = isinstance(self.last, UpstreamTimeout) or self.remaining() <= 0
        log.warning("exhausted model=%s calls=%d timed_out=%s", self.alias, self.calls, timed_out)
        retry_after = self.last.retry_after if isinstance(self.last, UpstreamError) else None
        return AllTargetsFailed(
            f"Every target for model '{self.alias}' failed ({self.calls} upstream calls): {summary}",
            timed_out=timed_out,
            retry_after=retry_after,
            calls=self.calls,
        )


def skip_code(reason: str) -> str:
    """A bounded name for why a target was passed over (for metrics and logs)."""
    if reason.startswith("circuit open"):
        return "circuit_open"
    if reason.startswith("circuit half-open"):
        return "probe_in_flight"
    if reason.startswith("at max_concurrent"):
        return "at_capacity"
    if reason.startswith("deadline"):
        return "deadline"
    if reason.startswith("not allowed"):
        return "model_not_allowed"
    return "unavailable"


class Gateway:
    def __init__(
        self,
        router: Router,
        upstreams: Mapping[str, Upstream],
        timeouts: TimeoutsConfig,
        targets: TargetRegistry,
        retry: RetryPolicy,
        rng: random.Random,
        bulkhead: Bulkhead,
        *,
        max_answer_bytes: int = 32 * 1024 * 1024,
        max_event_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.router = router
        self.max_answer_bytes = max_answer_bytes
        self.max_event_bytes = max_event_bytes
        self.bulkhead = bulkhead
        self.upstreams = upstreams
        self.timeouts = timeouts
        self.targets = targets
        self.retry = retry
        self.rng = rng
        self._chat_once = partial(self._complete_once, _parse_chat)
        self._hedge_budgets = {
            alias: HedgeBudget(route.hedge.budget_pct) for alias, route in router.routes.items() if route.hedge
        }
        self._prepared = {
            alias: tuple(self._prepare(group) for group in route.groups) for alias, route in router.routes.items()
        }

    def _prepare(self, group: Group) -> Prepared:
        """A group's targets resolved once: the attempt for each, or why it is unavailable."""
        entries: list[Attempt | str] = []
        for target in group.targets:
            upstream = self.upstreams[target.provider]
            if upstream.adapter is None or upstream.transport is None:
                entries.append(upstream.unavailable or "unavailable")
            else:
                state = self.targets.get(target.provider, target.model)
                entries.append(
                    Attempt(
                        target, upstream.adapter, upstream.transport, state, upstream.kind, upstream.drop_unsupported
                    )
                )
        return Prepared(group, tuple(entries))

    def candidates(self, route: Route, run: Run, allows: Callable[[str], bool] | None = None) -> Iterator[Attempt]:
        """The targets to try, in order; unavailable ones are noted and passed over, and so are
        fallback models the caller's key may not use."""
        prepared = self._prepared.get(route.alias)
        if prepared is None or route is not self.router.routes.get(route.alias):
            prepared = tuple(self._prepare(group) for group in route.groups)  # a direct route: not cached
        seen: set[Target] = set()
        for n, entry in enumerate(prepared):
            group = entry.group
            if n and allows is not None and not allows(group.alias):
                for target in group.targets:
                    run.skipped(target, f"not allowed for this key (fallback model '{group.alias}')")
                continue
            for i in entry.order(self.rng):
                target = group.targets[i]
                if target in seen:
                    continue
                seen.add(target)
                attempt = entry.entries[i]
                if isinstance(attempt, str):
                    run.skipped(target, attempt)
                    continue
                yield attempt

    async def _walk(self, model: str, build: Build, once: Once[T], exchange: Exchange) -> tuple[T, Attempt, Run]:
        """Walk the route of ``model`` until a target answers. The loop knows nothing of the
        operation: ``build`` makes each target's request (or raises ``TargetSkipped`` for a target
        that cannot serve it, or a client error for a request no target could take), and
        ``once`` makes one try."""
        route = self.router.resolve(model)
        exchange.alias = route.alias
        run = Run(route.alias, self.timeouts.total_s, exchange.attempts, exchange.trace)
        if route.hedge is not None:
            return await self._race(route, route.hedge, run, build, once, exchange)
        for attempt in self.candidates(route, run, exchange.allows):
            if run.remaining() <= 0:
                run.skipped(attempt.target, "deadline passed before this target")
                break
            try:
                # Built before any lease: a request the target cannot express fails without touching it.
                request, run.dropped = build(attempt)
                return await self._on_target(attempt, request, run, once), attempt, run
            except TargetSkipped as skipped:
                run.skipped(attempt.target, str(skipped))
            except UpstreamRejected:
                raise  # the client's own request is at fault: no other target would take it
            except UpstreamError as exc:
                run.failed(attempt.target, exc)
        raise run.exhausted()

    async def _race(
        self, route: Route, hedge: HedgeConfig, run: Run, build: Build, once: Once[T], exchange: Exchange
    ) -> tuple[T, Attempt, Run]:
        """``_walk`` with hedging (``router.gateway.hedging``): when the attempt under way has not
        answered after the hedge's delay, the next target starts beside it, within the alias's
        hedge budget and ``max_extra``; the first to answer wins and the others are cancelled (their
        connections closed, their breakers not charged). A failure moves on as ``_walk`` does."""
        budget = self._hedge_budgets.get(route.alias) or HedgeBudget(hedge.budget_pct)
        budget.earn()
        walk = _HedgedWalk(self, hedge, run, self.candidates(route, run, exchange.allows), build, once)
        loop = asyncio.get_running_loop()
        won: tuple[T, Attempt] | None = None
        try:
            hedge_at = walk.start(False)
            while walk.race and won is None:
                finished = await walk.race.finished(None if hedge_at is None else max(0.0, hedge_at - loop.time()))
                if not finished:  # the hedge is due
                    hedge_at = walk.start(True) if budget.spend() else None
                    continue
                won = await walk.settle(finished)
                if won is None and not walk.race:  # everything under way failed: move on, as without hedging
                    hedge_at = walk.start(False)
        finally:
            try:
                await walk.race.cancel_rest(_discard)
            except asyncio.CancelledError:
                if won is not None:  # cancelled (the client left) while the losers unwound: the winner too
                    await _discard(won[0])
                raise
        if won is None:
            raise run.exhausted()
        return won[0], won[1], run

    async def _on_target(
        self, attempt: Attempt, request: httpx.Request, run: Run, once: Once[T], hedged: bool = False
    ) -> T:
        """The first try, then (for retryable failures) tenacity's."""
        try:
            return await self._try(attempt, request, run, once, False, hedged)
        except UpstreamError as exc:
            first = exc
            if not self.retry.should_retry(exc):
                raise
        delay = self.retry.delay(first, 1)
        if self.retry.cfg.max_attempts < 2 or not run.fits(delay):
            raise first
        log.info("retry target=%s in=%.3fs reason=%r", attempt.target.label, delay, first.message)
        if run.trace is not None:
            run.trace.event("retry", {"switchboard.target": attempt.target.label, "switchboard.delay_s": delay})
        await self.retry.sleep(delay)
        try:
            return await self.retry.retrying(1, run.fits)(self._try, attempt, request, run, once, True, hedged)
        except TargetSkipped:
            raise first from None  # the breaker opened meanwhile: the target's last word stands

    async def _try(
        self, attempt: Attempt, request: httpx.Request, run: Run, once: Once[T], retry: bool, hedged: bool = False
    ) -> T:
        lease = attempt.state.acquire()
        if isinstance(lease, str):
            raise TargetSkipped(lease)
        run.calls += 1
        trace, span, kind = run.trace, None, attempt.kind
        if trace is not None:
            span = trace.attempt(attempt.target.label, kind, attempt.target.model, request)
        started = time.perf_counter()
        try:
            result = await once(attempt, request, lease, run)
        except SwitchboardError as exc:
            lease.failed(exc)
            run.tried(attempt.target, kind, exc, time.perf_counter() - started, retry, hedged)
            if trace is not None and span is not None:
                trace.attempt_failed(span, type(exc).__name__, getattr(exc, "upstream_status", None))
            raise
        except BaseException:
            overtaken = asyncio.current_task() in run.overtaken  # a hedge's race was won by another
            if overtaken:  # it took at least this long: a percentile that left it out would be too low
                attempt.state.samples.append(time.perf_counter() - started)
            if trace is not None and span is not None:
                trace.attempt_failed(span, "overtaken" if overtaken else "cancelled", None)
            lease.abandoned()  # cancelled (the client left, another attempt won) or a bug: nothing learned
            run.records.append(
                AttemptRecord(
                    target=attempt.target.label,
                    provider=kind,
                    result="overtaken" if overtaken else "abandoned",
                    duration_s=time.perf_counter() - started,
                    retry=retry,
                    hedge=hedged,
                )
            )
            raise
        run.tried(attempt.target, kind, None, time.perf_counter() - started, retry, hedged)
        if trace is not None and span is not None:
            trace.attempt_answered(span)
        return result

    async def complete(self, call: Inbound, exchange: Exchange) -> Answer:
        parsed, attempt, run = await self._walk(
            call.chat.model, partial(_chat_request, call), self._chat_once, exchange
        )
        _answered(exchange, attempt)
        exchange.reported(parsed.report)
        return Answer(parsed.body, attempt.target, run.calls, run.dropped)

    async def open_stream(self, call: Inbound, exchange: Exchange) -> OpenStream:
        """Start a stream and wait for its first chunk, so that a failure before it can still move
        on to the next target, or become an HTTP error."""
        build = partial(_chat_request, call)
        once = partial(self._open_once, partial(_chat_translator, call))
        opened, attempt, _ = await self._walk(call.chat.model, build, once, exchange)
        _answered(exchange, attempt)
        return opened

    def resumable(self, alias: str | None) -> bool:
        """Whether every stream of ``alias`` is resumable."""
        route = self.router.routes.get(alias or "")
        return route is not None and route.resumable

    def continues(self, alias: str | None) -> bool:
        """Whether ``alias`` goes on at another target when a committed stream's upstream fails."""
        route = self.router.routes.get(alias or "")
        return route is not None and route.continue_on_failure

    async def open_continuation(
        self, prefill: Inbound, prompt: Inbound, exchange: Exchange, failed: frozenset[Target]
    ) -> OpenStream:
        """A stream that goes on from where a failed one stopped (``router.gateway.continuation``):
        the route walked again without the targets that failed, each target asked with ``prefill``
        where it continues an assistant turn (Anthropic), else with ``prompt``."""

        def build(attempt: Attempt) -> tuple[httpx.Request, Sequence[str]]:
            if attempt.target in failed:
                raise TargetSkipped("it failed mid-stream")
            return _chat_request(prefill if attempt.kind == "anthropic" else prompt, attempt)

        def translator(attempt: Attempt) -> StreamTranslator:
            return _chat_translator(prefill if attempt.kind == "anthropic" else prompt, attempt)

        opened, attempt, _ = await self._walk(prefill.chat.model, build, partial(self._open_once, translator), exchange)
        _answered(exchange, attempt)
        return opened

    async def completions(self, call: CompletionsCall, exchange: Exchange) -> Answer:
        """The legacy completions API, passed through to OpenAI-compatible targets only."""
        once = partial(self._complete_once, completions.parse)
        parsed, attempt, run = await self._walk(
            self._text_model(call), partial(completions.build, call), once, exchange
        )
        _answered(exchange, attempt)
        exchange.reported(parsed.report)
        return Answer(parsed.body, attempt.target, run.calls, run.dropped)

    async def open_completions(self, call: CompletionsCall, exchange: Exchange) -> OpenStream:
        once, build = partial(self._open_once, partial(completions.translator, call)), partial(completions.build, call)
        opened, attempt, _ = await self._walk(self._text_model(call), build, once, exchange)
        _answered(exchange, attempt)
        return opened

    def _text_model(self, call: CompletionsCall) -> str:
        """The model, once it is known to have an OpenAI-compatible target: else a 400."""
        route = self.router.resolve(call.model)
        if not any(completions.compatible(self.upstreams[t.provider].adapter) for t in route.plan):
            raise InvalidRequest(
                f"The model '{route.alias}' has no OpenAI-compatible target: the legacy completions API "
                "(/v1/completions) is only passed through to openai, azure and mock providers. "
                "Use /v1/chat/completions.",
                param="model",
                code="invalid_value",
            )
        return call.model

    async def responses(self, call: ResponsesCall, exchange: Exchange) -> tuple[Answer, bool]:
        """OpenAI's Responses API, non-streamed (see ``router.gateway.responses``); whether a
        native target answered."""
        once = partial(self._complete_once, partial(responses.parse, call))
        build = partial(responses.build, call, _unsupported)
        parsed, attempt, run = await self._walk(call.model, build, once, exchange)
        _answered(exchange, attempt)
        exchange.reported(parsed.report)
        answer = Answer(parsed.body, attempt.target, run.calls, run.dropped)
        return answer, responses.native(call, attempt) is not None

    def native_responses(self, model: str) -> bool:
        """Whether any target of ``model`` serves the Responses API natively."""
        route = self.router.resolve(model)
        return any(
            isinstance(adapter := self.upstreams[t.provider].adapter, OpenAIProvider) and adapter.responses_native
            for t in route.plan
        )

    async def open_responses(self, call: ResponsesCall, exchange: Exchange) -> tuple[OpenStream, bool]:
        once = partial(self._open_once, partial(responses.translator, call))
        build = partial(responses.build, call, _unsupported)
        opened, attempt, _ = await self._walk(call.model, build, once, exchange)
        _answered(exchange, attempt)
        return opened, responses.native(call, attempt) is not None

    async def messages(self, call: MessagesCall, exchange: Exchange) -> Answer:
        """Anthropic's Messages API, non-streamed (see ``router.gateway.messages``)."""
        once = partial(self._complete_once, partial(messages.parse, call))
        build = partial(messages.build, call, _unsupported)
        parsed, attempt, run = await self._walk(call.model, build, once, exchange)
        _answered(exchange, attempt)
        exchange.reported(parsed.report)
        return Answer(parsed.body, attempt.target, run.calls, run.dropped)

    async def open_messages(self, call: MessagesCall, exchange: Exchange) -> OpenStream:
        """Anthropic's Messages API, streamed: the stream's chunks are Anthropic events from an
        ``anthropic`` target, Chat Completions chunks from any other (``exchange.provider`` says)."""
        once = partial(self._open_once, partial(messages.translator, call))
        build = partial(messages.build, call, _unsupported)
        opened, attempt, _ = await self._walk(call.model, build, once, exchange)
        _answered(exchange, attempt)
        return opened

    async def embed(self, call: EmbeddingsCall, exchange: Exchange) -> Answer:
        """An embeddings request. Vectors from two models are not interchangeable, so it fails
        over only between targets serving one upstream model: an alias whose targets name
        different models is refused (``switchboard check`` says so), and fallbacks to another
        model are passed over."""
        route = self.router.resolve(call.request.model)
        models = sorted({t.model for t in route.targets})  # the alias's own; fallbacks may differ
        if len(models) > 1:
            raise InvalidRequest(
                f"The model '{route.alias}' routes to different upstream models ({', '.join(models)}); "
                "embeddings from different models are not interchangeable, so it cannot serve /v1/embeddings. "
                "Use an alias whose targets all serve one embedding model.",
                param="model",
                code="invalid_value",
            )
        once = partial(self._complete_once, partial(_parse_embeddings, call))
        build = partial(_embeddings_request, call, models[0] if models else "")
        parsed, attempt, run = await self._walk(call.request.model, build, once, exchange)
        _answered(exchange, attempt)
        exchange.reported(parsed.report)
        return Answer(parsed.body, attempt.target, run.calls, run.dropped)

    async def _complete_once(
        self, parse: Parse, attempt: Attempt, request: httpx.Request, lease: Lease, run: Run
    ) -> Parsed:
        adapter, provider = attempt.adapter, attempt.target.provider
        budget = min(self.timeouts.attempt_s, run.remaining())
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(budget):
                response = await _send(attempt, request)
                body = await read_body(response, self.max_answer_bytes, provider)
        except TimeoutError:
            raise UpstreamTimeout(f"provider '{provider}' did not answer within {budget:g}s") from None
        except httpx.HTTPError as exc:
            raise _logged(upstream_failure(exc, provider), exc, adapter.redact) from None
        answer = parse(attempt, body)
        attempt.state.observe_latency(loop.time() - started)
        lease.succeeded()
        return answer

    async def _open_once(
        self,
        translator: Callable[[Attempt], StreamTranslator],
        attempt: Attempt,
        request: httpx.Request,
        lease: Lease,
        run: Run,
    ) -> OpenStream:
        adapter, provider = attempt.adapter, attempt.target.provider
        loop = asyncio.get_running_loop()
        started = loop.time()
        budget = min(self.timeouts.first_token_s, run.remaining())
        upstream: UpstreamStream | None = None
        try:
            async with asyncio.timeout(budget):
                response = await _send(attempt, request)
                upstream = UpstreamStream(response, translator(attempt), provider, self.max_event_bytes)
                first = await upstream.pull()
        except TimeoutError:
            await _close(upstream)
            raise UpstreamTimeout(f"provider '{provider}' sent no first token within {budget:g}s") from None
        except httpx.HTTPError as exc:
            await _close(upstream)
            raise _logged(upstream_failure(exc, provider), exc, adapter.redact) from None
        except BaseException:
            await _close(upstream)
            raise
        attempt.state.observe_latency(loop.time() - started)
        return OpenStream(upstream, first or (), attempt.target, run.deadline, lease, run.calls, run.dropped)

    def snapshot(self) -> list[dict[str, object]]:
        return self.targets.snapshot()


class _HedgedWalk(Generic[T]):
    """One request's hedged walk: the targets not yet tried, and the race between those started."""

    def __init__(
        self, gateway: Gateway, hedge: HedgeConfig, run: Run, candidates: Iterator[Attempt], build: Build, once: Once[T]
    ) -> None:
        self._gateway = gateway
        self._hedge = hedge
        self._run = run
        self._candidates = candidates
        self._build = build
        self._once = once
        self.extra = 0
        self.race: Race[T, tuple[Attempt, Sequence[str]]] = Race()
        run.overtaken = self.race.overtaken

    def start(self, hedged: bool) -> float | None:
        """Start the next target that can take the request (a hedge if ``hedged``); the loop time
        at which a hedge beside it is due, if one may be."""
        run = self._run
        for attempt in self._candidates:
            if run.remaining() <= 0:
                run.skipped(attempt.target, "deadline passed before this target")
                break
            try:
                request, dropped = self._build(attempt)
            except TargetSkipped as skipped:
                run.skipped(attempt.target, str(skipped))
                continue
            if hedged:
                self.extra += 1
                log.info("hedge model=%s target=%s calls=%d", run.alias, attempt.target.label, run.calls)
                if run.trace is not None:
                    run.trace.event("hedge", {"switchboard.target": attempt.target.label})
            self.race.start(self._gateway._on_target(attempt, request, run, self._once, hedged), (attempt, dropped))
            after = hedge_after(self._hedge, attempt.state) if self.extra < self._hedge.max_extra else None
            return None if after is None else asyncio.get_running_loop().time() + after
        return None

    async def settle(
        self, finished: list[tuple[tuple[Attempt, Sequence[str]], asyncio.Task[T]]]
    ) -> tuple[T, Attempt] | None:
        """The first answer among ``finished`` (any other is discarded), or None when they all
        failed (each noted); a client error is raised."""
        answered: list[tuple[T, Attempt, Sequence[str]]] = []
        rejected: UpstreamRejected | None = None
        for (attempt, dropped), task in finished:
            try:
                answered.append((task.result(), attempt, dropped))
            except TargetSkipped as skipped:
                self._run.skipped(attempt.target, str(skipped))
            except UpstreamRejected as exc:
                rejected = exc
            except UpstreamError as exc:
                self._run.failed(attempt.target, exc)
        if answered:
            for result, _, _ in answered[1:]:
                await _discard(result)
            result, attempt, self._run.dropped = answered[0]
            return result, attempt
        if rejected is not None:
            raise rejected  # the client's own request is at fault: no other target would take it
        return None


def _answered(exchange: Exchange, attempt: Attempt) -> None:
    exchange.target = attempt.target.label
    exchange.model = attempt.target.model
    exchange.provider = attempt.kind


def _chat_request(call: Inbound, attempt: Attempt) -> tuple[httpx.Request, Sequence[str]]:
    dropped = _unsupported(call, attempt)
    return attempt.adapter.build_request(call, attempt.target.model), dropped


def _chat_translator(call: Inbound, attempt: Attempt) -> StreamTranslator:
    return attempt.adapter.stream_translator(call)


def _parse_chat(attempt: Attempt, body: bytes) -> Parsed:
    return attempt.adapter.parse_response(body, attempt.target.model)


def _embeddings_request(call: EmbeddingsCall, model: str, attempt: Attempt) -> tuple[httpx.Request, Sequence[str]]:
    if attempt.target.model != model:
        raise TargetSkipped(f"serves another embedding model ({attempt.target.model}, not {model})")
    request = attempt.adapter.embeddings_request(call, attempt.target.model)
    if request is None:
        raise TargetSkipped(f"its provider type ({attempt.kind}) has no embeddings API")
    return request, ()


def _parse_embeddings(call: EmbeddingsCall, attempt: Attempt, body: bytes) -> Parsed:
    return attempt.adapter.parse_embeddings(body, call, attempt.target.model)


def _unsupported(call: Inbound, attempt: Attempt) -> Sequence[str]:
    """Parameters the target cannot honour: dropped (and named in a header), or refused with a 400
    when the provider says ``drop_unsupported_params: false``."""
    dropped = attempt.adapter.unsupported(call)
    if dropped and not attempt.drop_unsupported:
        raise InvalidRequest(
            f"{attempt.target.label} does not support the parameter '{dropped[0]}' "
            f"(its provider has drop_unsupported_params: false).",
            param=dropped[0],
            code="unsupported_parameter",
        )
    return dropped


ERROR_BODY_BYTES: Final = 64 * 1024  # of an error answer, only this much is read: the message is at the start


async def read_body(response: httpx.Response, limit: int, provider: str) -> bytes:
    """The whole body, closed after; an answer past ``limit`` bytes (after decompression) fails
    the attempt."""
    body, whole = await read_upto(response, limit)
    if not whole:
        raise UpstreamProtocolError(f"provider '{provider}' answered with more than {limit} bytes")
    return body


async def read_upto(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether that was all of it; the response is
    closed after. Reads the transport's stream directly: the transport already undid any content
    encoding, so httpx's decoders would only cost time."""
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in stream:
            size += len(chunk)
            chunks.append(chunk)
            if size > limit:
                return b"".join(chunks)[:limit], False
    finally:
        await response.aclose()
    return b"".join(chunks), True


async def _send(attempt: Attempt, request: httpx.Request) -> httpx.Response:
    """The upstream's response, if it is an answer; a 3xx, 204 or 1xx is not, whatever its body."""
    response = await attempt.transport.handle_async_request(request)
    if response.status_code != 200:
        raise await _refusal(attempt.adapter, response, attempt.target.provider)
    return response


async def _refusal(adapter: Provider, response: httpx.Response, provider: str) -> UpstreamError:
    """The failure a non-200 answer means. A redirect, a 204 or any other status below 400 is not
    an answer: it fails the attempt like a malformed one."""
    status = response.status_code
    body, _ = await read_upto(response, ERROR_BODY_BYTES)
    if status < 400:
        return _upstream_said(
            UpstreamProtocolError(
                f"provider '{provider}' answered with HTTP {status}, not an answer", upstream_status=status
            ),
            provider,
        )
    return _upstream_said(adapter.parse_error(status, body, response.headers), provider)


async def _discard(result: object) -> None:
    """A result that lost a hedged race: a stream's upstream closed, its lease ended untold."""
    if isinstance(result, OpenStream):
        result.lease.abandoned()
        await _close(result.upstream)


async def _close(upstream: UpstreamStream | None) -> None:
    if upstream is not None:
        await upstream.aclose()


def _upstream_said(error: UpstreamError, provider: str) -> UpstreamError:
    """Log an upstream's error answer (already free of secrets) once, where it is received."""
    level = logging.INFO if isinstance(error, UpstreamRejected) else logging.WARNING
    log.log(level, "upstream-error provider=%s status=%s message=%r", provider, error.upstream_status, error.message)
    return error


def _logged(error: SwitchboardError, cause: Exception, redact: SecretRedactor) -> SwitchboardError:
    # The transport's own words help an operator (DNS, TLS, refused), but may name the host or
    # echo a URL: redacted like everything else from upstream.
    log.warning("%s (%s: %s)", error.message, type(cause).__name__, redact(str(cause)))
    return error
