"""Metrics from the Outcome, rendered at ``GET /metrics`` in Prometheus text.

The hot path only adds to plain dictionaries keyed by label tuples (a histogram is a bisect and
three additions): the OpenTelemetry SDK's synchronous instruments cost 7 to 8 µs per measurement
here, several times the rest of a request's record. Everything is rendered when scraped.

With ``--workers N`` each worker writes its figures to a file in a directory the CLI made for
the server (``SWITCHBOARD_METRICS_DIR``) every ``FLUSH_S``; the worker a scrape reaches merges
every worker's file with its own live figures, so one scrape reports the whole server. Counters
and histograms of a worker that has exited still count (they never go backwards); gauges count
only live workers.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from router.gateway.outcome import GENAI_PROVIDERS, AttemptRecord, Outcome

if TYPE_CHECKING:
    from router.telemetry.export import MetricExport

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4"  # Litestar adds the charset
METRICS_DIR_ENV: Final = "SWITCHBOARD_METRICS_DIR"  # where a server's workers leave their figures
FLUSH_S: Final = 1.0
# The GenAI semantic conventions' advice (seconds; tokens).
DURATION_BUCKETS: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS: Final = tuple(float(4**i) for i in range(14))  # 1, 4, 16 … 67,108,864
OVERHEAD_BUCKETS: Final = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
GENAI_LABELS: Final = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model")
BREAKER_STATES: Final = {"closed": 0, "half-open": 1, "open": 2}

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[str, ...]


class Spec(msgspec.Struct, frozen=True):
    name: str  # as rendered (a counter gets `_total` from the renderer)
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    merge: Literal["sum", "max"] = "sum"  # for gauges across workers
    live: bool = False  # read from the app's state when scraped, not recorded from Outcomes
    otel: str = ""  # the OpenTelemetry instrument's name (OTLP export), and its unit
    unit: str = ""


SPECS: Final = {
    s.name: s
    for s in (
        Spec(
            "gen_ai_client_operation_duration_seconds",
            "histogram",
            "GenAI operation duration, per upstream call",
            (*GENAI_LABELS, "error_type"),
            DURATION_BUCKETS,
            otel="gen_ai.client.operation.duration",
            unit="s",
        ),
        Spec(
            "gen_ai_client_token_usage",
            "histogram",
            "Tokens used per answer",
            (*GENAI_LABELS, "gen_ai_token_type"),
            TOKEN_BUCKETS,
            otel="gen_ai.client.token.usage",
            unit="{token}",
        ),
        Spec(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "histogram",
            "Time to a stream's first chunk",
            GENAI_LABELS,
            DURATION_BUCKETS,
            otel="gen_ai.client.operation.time_to_first_chunk",
            unit="s",
        ),
        Spec(
            "switchboard_requests",
            "counter",
            "Requests by alias, answering target, status and error code",
            ("alias", "target", "status", "code"),
            otel="switchboard.requests",
            unit="{request}",
        ),
        Spec(
            "switchboard_failovers",
            "counter",
            "Upstream calls that failed and sent the request on",
            ("alias", "reason"),
            otel="switchboard.failovers",
            unit="{call}",
        ),
        Spec(
            "switchboard_retries",
            "counter",
            "Second and later tries at one target",
            ("target",),
            otel="switchboard.retries",
            unit="{call}",
        ),
        Spec(
            "switchboard_skips",
            "counter",
            "Targets passed over, by reason",
            ("alias", "reason"),
            otel="switchboard.skips",
            unit="{target}",
        ),
        Spec(
            "switchboard_hedges",
            "counter",
            "Hedged requests by alias, and which attempt answered: first, hedge or none",
            ("alias", "winner"),
            otel="switchboard.hedges",
            unit="{request}",
        ),
        Spec(
            "switchboard_continuations",
            "counter",
            "Times a stream went on at another target after its upstream failed mid-way, by alias",
            ("alias",),
            otel="switchboard.continuations",
            unit="{continuation}",
        ),
        Spec(
            "switchboard_client_disconnects",
            "counter",
            "Requests whose client left before the end",
            otel="switchboard.client_disconnects",
            unit="{request}",
        ),
        Spec(
            "switchboard_bulkhead_rejections",
            "counter",
            "Requests refused at resilience.max_concurrent",
            otel="switchboard.bulkhead_rejections",
            unit="{request}",
        ),
        Spec(
            "switchboard_tokens",
            "counter",
            "Tokens by alias, target and type",
            ("alias", "target", "type"),
            otel="switchboard.tokens",
            unit="{token}",
        ),
        Spec(
            "switchboard_cost_usd",
            "counter",
            "Cost of the answers, USD",
            ("alias", "target"),
            otel="switchboard.cost_usd",
            unit="USD",
        ),
        Spec(
            "switchboard_overhead_seconds",
            "histogram",
            "Time in Switchboard itself, not waiting on an upstream",
            (),
            OVERHEAD_BUCKETS,
            otel="switchboard.overhead",
            unit="s",
        ),
        Spec(
            "switchboard_active_streams",
            "gauge",
            "Streams being relayed now",
            live=True,
            otel="switchboard.active_streams",
            unit="{stream}",
        ),
        Spec(
            "switchboard_breaker_state",
            "gauge",
            "Breaker state per target: 0 closed, 1 half-open, 2 open",
            ("target",),
            merge="max",
            live=True,
            otel="switchboard.breaker.state",
            unit="1",
        ),
        Spec(
            "switchboard_state_errors",
            "counter",
            "Calls to the shared state backend (Redis) that failed or timed out",
            live=True,
            otel="switchboard.state.errors",
            unit="{call}",
        ),
        Spec(
            "switchboard_breaker_transitions",
            "counter",
            "Breaker transitions per target, by the state entered",
            ("target", "state"),
            live=True,
            otel="switchboard.breaker.transitions",
            unit="{transition}",
        ),
    )
}


class Series(msgspec.Struct):
    """One metric's figures: per label tuple, a value, or bucket counts then sum then count."""

    values: dict[str, float] = {}  # "\x1f"-joined labels → value
    buckets: dict[str, list[float]] = {}  # labels → [bucket counts…, +Inf count, sum, count]


class Snapshot(msgspec.Struct):
    pid: int
    series: dict[str, Series]


SEP: Final = "\x1f"
_encode = msgspec.json.Encoder().encode
_decode_snapshot = msgspec.json.Decoder(Snapshot).decode


Cell = list[float]  # a counter: [value]; a histogram: [count per bucket…, +Inf count, sum, count]


class Figures:
    """This process's counters and histograms. The recorder keeps references to the cells it
    adds to, so an Outcome costs list additions, not a dictionary lookup per figure."""

    def __init__(self) -> None:
        self.values: dict[str, dict[Labels, Cell]] = {
            n: {} for n, s in SPECS.items() if s.kind == "counter" and not s.live
        }
        self.buckets: dict[str, dict[Labels, Cell]] = {n: {} for n, s in SPECS.items() if s.kind == "histogram"}

    def counter(self, name: str, labels: Labels) -> Cell:
        series = self.values[name]
        cell = series.get(labels)
        if cell is None:
            cell = series[labels] = [0.0]
        return cell

    def histogram(self, name: str, labels: Labels) -> Cell:
        series = self.buckets[name]
        cell = series.get(labels)
        if cell is None:
            cell = series[labels] = [0.0] * (len(SPECS[name].buckets) + 3)
        return cell

    def add(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        self.counter(name, labels)[0] += amount

    def observe(self, name: str, labels: Labels, value: float) -> None:
        _observe(self.histogram(name, labels), SPECS[name].buckets, value)

    def snapshot(self, live: Mapping[str, Mapping[Labels, float]]) -> Snapshot:
        series: dict[str, Series] = {}
        for name, values in self.values.items():
            series[name] = Series(values={SEP.join(k): v[0] for k, v in values.items()})
        for name, now in live.items():
            series[name] = Series(values={SEP.join(k): v for k, v in now.items()})
        for name, buckets in self.buckets.items():
            series[name] = Series(buckets={SEP.join(k): list(v) for k, v in buckets.items()})
        return Snapshot(os.getpid(), series)


def _observe(cell: Cell, bounds: tuple[float, ...], value: float) -> None:
    cell[bisect.bisect_left(bounds, value)] += 1
    cell[-2] += value
    cell[-1] += 1


# Codes Switchboard itself gives; an upstream's own code (a 4xx passed back) is "upstream_error".
OWN_CODES: Final = frozenset(
    {
        "invalid_json",
        "invalid_type",
        "invalid_value",
        "missing_required_parameter",
        "request_too_large",
        "model_not_found",
        "not_found",
        "method_not_allowed",
        "unsupported_parameter",
        "unsupported_for_target",
        "no_target_available",
        "upstream_failed",
        "upstream_auth_failed",
        "rate_limit_exceeded",
        "timeout",
        "gateway_overloaded",
        "internal_error",
        "client_disconnected",
        "request_header_fields_too_large",
        "request_timeout",
        "invalid_http_request",
        "invalid_api_key",
        "cancelled",
        "state_unavailable",
        "forbidden",
        "model_not_allowed",
        "insufficient_quota",
    }
)
DIRECT: Final = "direct"  # the label of every `provider/model` route the config does not name
_FAILED: Final = frozenset({"failed", "abandoned", "rejected"})


class Names:
    """Label values a client cannot make up: configured aliases and targets as they are; any other
    (a direct `provider/model` route) as ``direct`` and ``<provider>/other``."""

    def __init__(self, aliases: Iterable[str], targets: Iterable[str]) -> None:
        self._aliases = frozenset(aliases)
        self._targets = frozenset(targets)

    def alias(self, alias: str | None) -> str:
        if alias is None:
            return ""
        return alias if alias in self._aliases else DIRECT

    def target(self, target: str | None) -> str:
        if target is None:
            return ""
        return target if target in self._targets else target.partition("/")[0] + "/other"

    def configured(self, target: str) -> bool:
        return target in self._targets

    def model(self, target: str) -> str:
        return target.partition("/")[2] if target in self._targets else "other"


def _winner(attempts: Sequence[AttemptRecord]) -> str:
    """Which attempt of a hedged request answered: the hedge, the first (or a failover), or none."""
    for attempt in attempts:
        if attempt.result == "ok":
            return "hedge" if attempt.hedge else "first"
    return "none"


def _moved_on(attempts: Sequence[AttemptRecord], i: int) -> bool:
    """A failover: this was the target's last try, and the request went on to another target."""
    later = attempts[i + 1 :]
    target = attempts[i].target
    return not any(a.target == target for a in later) and any(a.result != "skipped" for a in later)


class _AnswerCells:
    """The cells one answering (alias, target, provider, response model) adds to, each made when
    first needed: a series exists only once it has something to count (no 0 for unknown)."""

    __slots__ = ("_alias", "_f", "_genai", "_target", "cost", "ttft", "usage")

    def __init__(self, f: Figures, alias: str, target: str, genai: Labels) -> None:
        self._f, self._alias, self._target, self._genai = f, alias, target, genai
        self.ttft: Cell | None = None
        self.usage: tuple[Cell, ...] | None = None  # input, output histograms; the four counters
        self.cost: Cell | None = None

    def ttft_cell(self) -> Cell:
        self.ttft = self._f.histogram("gen_ai_client_operation_time_to_first_chunk_seconds", self._genai)
        return self.ttft

    def usage_cells(self) -> tuple[Cell, ...]:
        f, genai, labels = self._f, self._genai, (self._alias, self._target)
        self.usage = (
            f.histogram("gen_ai_client_token_usage", (*genai, "input")),
            f.histogram("gen_ai_client_token_usage", (*genai, "output")),
            *(f.counter("switchboard_tokens", (*labels, kind)) for kind in ("input", "output", "cached", "reasoning")),
        )
        return self.usage

    def cost_cell(self) -> Cell:
        self.cost = self._f.counter("switchboard_cost_usd", (self._alias, self._target))
        return self.cost


class Recorder:
    """The Outcome listener. Label values are bounded: aliases and targets from the config (see
    ``Names``), codes and reasons from Switchboard's own lists. The cells an Outcome adds to are
    found once per combination of labels and kept (as many as the series they name)."""

    def __init__(self, figures: Figures, names: Names) -> None:
        self._figures = figures
        self._names = names
        self._requests: dict[tuple[str, str, int, str], Cell] = {}
        self._answers: dict[tuple[str, str, str | None, str | None, str], _AnswerCells] = {}
        self._calls: dict[tuple[str, str | None, str, str, str], Cell] = {}
        self._overhead = figures.histogram("switchboard_overhead_seconds", ())
        self._disconnects = figures.counter("switchboard_client_disconnects", ())
        self._rejections = figures.counter("switchboard_bulkhead_rejections", ())

    def rename(self, names: Names) -> None:
        self._names = names

    def __call__(self, outcome: Outcome) -> None:
        f, names = self._figures, self._names
        alias, target = names.alias(outcome.alias), names.target(outcome.target)
        code = outcome.code
        if code is None:
            code = ""
        elif code not in OWN_CODES:
            code = "upstream_error"
        key = (alias, target, outcome.status, code)
        cell = self._requests.get(key)
        if cell is None:
            cell = self._requests[key] = f.counter("switchboard_requests", (alias, target, str(outcome.status), code))
        cell[0] += 1
        if outcome.client_disconnected:
            self._disconnects[0] += 1
        if code == "gateway_overloaded":
            self._rejections[0] += 1
        waited, hedged = self._attempts(outcome, alias)
        if outcome.continued:
            f.add("switchboard_continuations", (alias,), outcome.continued)
        if target:
            self._answered(outcome, alias, target)
        # Overhead: the request's time not spent waiting on an upstream (for a stream, up to its
        # first chunk; after it the relay waits on the upstream or the client). A hedged request's
        # attempts overlap, so their sum says nothing of it: not observed.
        spent = outcome.ttft_s if outcome.stream and outcome.ttft_s is not None else outcome.duration_s
        if not hedged:
            _observe(self._overhead, OVERHEAD_BUCKETS, max(0.0, spent - waited))

    def _attempts(self, outcome: Outcome, alias: str) -> tuple[float, bool]:
        """Each attempt's figures; the time spent waiting on upstreams, and whether it was hedged."""
        f, names = self._figures, self._names
        waited = 0.0
        attempts = outcome.attempts
        hedged = False
        for i, attempt in enumerate(attempts):
            if attempt.result == "skipped":
                f.add("switchboard_skips", (alias, attempt.error or "unavailable"))
                continue
            waited += attempt.duration_s
            hedged = hedged or attempt.hedge
            if attempt.retry:
                f.add("switchboard_retries", (names.target(attempt.target),))
            failed = attempt.result in _FAILED
            if failed and _moved_on(attempts, i):
                f.add("switchboard_failovers", (alias, attempt.error or attempt.result))
            self._call_cell(attempt, outcome, failed)
        if hedged:
            f.add("switchboard_hedges", (alias, _winner(attempts)))
        return waited, hedged

    def _call_cell(self, attempt: AttemptRecord, outcome: Outcome, failed: bool) -> None:
        label = self._names.target(attempt.target)
        answered = (outcome.response_model or "") if attempt.result == "ok" else ""
        error = (attempt.error or attempt.result) if failed or attempt.result == "overtaken" else ""
        key = (label, attempt.provider, answered, error, outcome.operation)
        cell = self._calls.get(key)
        if cell is None:
            provider = GENAI_PROVIDERS.get(attempt.provider or "", attempt.provider or "")
            genai = (outcome.operation, provider, self._names.model(attempt.target), answered, error)
            cell = self._calls[key] = self._figures.histogram("gen_ai_client_operation_duration_seconds", genai)
        _observe(cell, DURATION_BUCKETS, attempt.duration_s)

    def _answered(self, outcome: Outcome, alias: str, target: str) -> None:
        key = (alias, target, outcome.provider, outcome.response_model, outcome.operation)
        cells = self._answers.get(key)
        if cells is None:
            provider = GENAI_PROVIDERS.get(outcome.provider or "", outcome.provider or "")
            genai = (outcome.operation, provider, self._names.model(outcome.target or ""), outcome.response_model or "")
            cells = self._answers[key] = _AnswerCells(self._figures, alias, target, genai)
        if outcome.stream and outcome.ttft_s is not None:
            _observe(cells.ttft or cells.ttft_cell(), DURATION_BUCKETS, outcome.ttft_s)
        usage = outcome.usage
        if usage is not None:
            input_hist, output_hist, prompt, completion, cached, reasoning = cells.usage or cells.usage_cells()
            _observe(input_hist, TOKEN_BUCKETS, usage.prompt)
            _observe(output_hist, TOKEN_BUCKETS, usage.completion)
            prompt[0] += usage.prompt
            completion[0] += usage.completion
            cached[0] += usage.cached
            reasoning[0] += usage.reasoning
        if outcome.cost_usd is not None:
            (cells.cost or cells.cost_cell())[0] += outcome.cost_usd


Live = Callable[[], Mapping[str, Mapping[Labels, float]]]


class Metrics:
    """One process's metrics: its figures, its live series, and (with several workers) the files
    of the others."""

    def __init__(self, names: Names, directory: Path | None = None, export: MetricExport | None = None) -> None:
        self.names = names
        self.export = export
        self.figures = Figures()
        self.recorder = Recorder(self.figures, names)
        self.live: Live = dict  # the app sets what its live series read
        self._dir = directory
        self._task: asyncio.Task[None] | None = None

    def rename(self, names: Names) -> None:
        """After a config reload: the aliases and targets that are labels as they are."""
        self.names = names
        self.recorder.rename(names)

    def start(self) -> None:
        if self.export is not None:
            self.export.start(lambda: self.figures.snapshot(self.live()))
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        if self.export is not None:
            try:
                await self.export.stop()
            except Exception:
                log.warning("metrics: the last export failed", exc_info=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            try:
                self._write()  # a last word, so an exiting worker's counts stay in the totals
            except OSError:
                log.warning("metrics: cannot write this worker's last figures to %s", self._dir)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                self._write()
            except OSError:
                log.warning("metrics: cannot write this worker's figures to %s", self._dir)

    def _write(self) -> None:
        if self._dir is None:
            return
        path = self._dir / f"{os.getpid()}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(_encode(self.figures.snapshot(self.live())))
        os.replace(temporary, path)

    def render(self) -> bytes:
        mine = self.figures.snapshot(self.live())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(merge([mine, *self._others()])))
        return generate_latest(registry)

    def _others(self) -> Iterator[Snapshot]:
        if self._dir is None:
            return
        me = os.getpid()
        for path in self._dir.glob("*.json"):
            try:
                snapshot = _decode_snapshot(path.read_bytes())
            except (OSError, msgspec.DecodeError):
                continue  # being replaced, or not ours
            if snapshot.pid == me:
                continue
            if not _alive(snapshot.pid):
                snapshot.series = {n: s for n, s in snapshot.series.items() if SPECS[n].kind != "gauge"}
            yield snapshot


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def merge(snapshots: Iterable[Snapshot]) -> dict[str, Series]:
    merged: dict[str, Series] = {name: Series(values={}, buckets={}) for name in SPECS}
    for snapshot in snapshots:
        for name, series in snapshot.series.items():
            spec = SPECS.get(name)
            if spec is None:
                continue
            into = merged[name]
            for labels, value in series.values.items():
                before = into.values.get(labels)
                if before is None:
                    into.values[labels] = value
                else:
                    into.values[labels] = max(before, value) if spec.merge == "max" else before + value
            for labels, counts in series.buckets.items():
                mine = into.buckets.get(labels)
                into.buckets[labels] = (
                    list(counts) if mine is None else [a + b for a, b in zip(mine, counts, strict=True)]
                )
    return merged


class _Collector:
    def __init__(self, merged: Mapping[str, Series]) -> None:
        self._merged = merged

    def collect(self) -> Iterator[Metric]:
        for name, spec in SPECS.items():
            series = self._merged[name]
            family: Metric
            if spec.kind == "histogram":
                histogram = HistogramMetricFamily(name, spec.help, labels=spec.labels)
                for key, counts in sorted(series.buckets.items()):
                    cumulative, total = [], 0.0
                    for bound, count in zip((*spec.buckets, float("inf")), counts[:-2], strict=True):
                        total += count
                        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), total))
                    histogram.add_metric(_split(key, spec), cumulative, counts[-2])
                family = histogram
            elif spec.kind == "counter":
                counter = CounterMetricFamily(name, spec.help, labels=spec.labels)
                for key, value in sorted(series.values.items()):
                    counter.add_metric(_split(key, spec), value)
                if not spec.labels and not series.values:
                    counter.add_metric([], 0.0)
                family = counter
            else:
                gauge = GaugeMetricFamily(name, spec.help, labels=spec.labels)
                for key, value in sorted(series.values.items()):
                    gauge.add_metric(_split(key, spec), value)
                if not spec.labels and not series.values:
                    gauge.add_metric([], 0.0)
                family = gauge
            yield family


def _split(key: str, spec: Spec) -> list[str]:
    return key.split(SEP) if spec.labels else []


def breaker_gauge(states: Iterable[tuple[str, str]], names: Names) -> dict[Labels, float]:
    """Configured targets only: the breakers of direct routes are the client's to name."""
    return {(target,): float(BREAKER_STATES.get(state, 0)) for target, state in states if names.configured(target)}


def breaker_transitions(transitions: Iterable[tuple[str, str, int]], names: Names) -> dict[Labels, float]:
    return {(target, state): float(count) for target, state, count in transitions if names.configured(target)}
