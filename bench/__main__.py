"""``./dev bench``: direct upstream, the bare pass-throughs and Switchboard, measured in one run.

The server under test is pinned to CPU 0; nginx, wrk and this script to CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Final

import httpx
import msgspec

from bench import capacity
from bench.discard import entry_point_dir
from bench.load import CLIENT_KEY, LoadResult, hold_streams, run_wrk
from bench.upstream import Nginx

PROXY_CPU, LOAD_CPU = 0, 1
HTTPX_PASSTHROUGHS = ("passthrough-httpx", "passthrough-httpx-aiohttp", "passthrough-direct")
# switchboard: the proxy at --log-level warning (no request lines); -logged: the defaults, one JSON
# request line per request (to a file) and the metrics; -traced: that and tracing at 100%
# sampling to an in-process exporter that drops the spans (tracing's own cost); -traced-otlp: the
# same exported over OTLP/HTTP (protobuf) to a sink in nginx (the SDK's encoder on the same CPU);
# baseline: the build named by --baseline, by default the last one before telemetry, which the
# telemetry targets compare with.
TELEMETRY_SUBJECTS = ("switchboard-logged", "switchboard-traced", "switchboard-traced-otlp")
# The defaults (as -logged) with a master key and every request made with a virtual key that has
# rpm, tpm, parallel and budget limits (none reached): counted in memory, or in the local Redis.
KEY_SUBJECTS = ("switchboard-keys", "switchboard-keys-redis", "switchboard-full")
# -full: keys as -keys, the request lines as -logged, keep-alive (on by default) and every stream
# resumable (its events numbered and kept): the stream-capacity scenario's "everything on".
SUBJECTS = (
    "direct",
    *HTTPX_PASSTHROUGHS,
    "passthrough-aiohttp",
    "switchboard",
    *TELEMETRY_SUBJECTS,
    *KEY_SUBJECTS,
    "baseline",
    "switchboard-full",
)
BEFORE_TELEMETRY = "7e899d7"  # the end of issue #7: Switchboard before the Outcome, metrics, logs and traces
SCENARIOS = (("json", 1), ("json", 64), ("stream", 1), ("stream", 64))


@dataclass
class SubjectResult:
    name: str
    runs: dict[str, LoadResult] = field(default_factory=dict)
    rss_mb: float | None = None
    kb_per_stream: float | None = None
    # Every round's run of each scenario, in round order: ratios between two subjects (or two
    # scenarios of one) are also taken round by round, each from runs seconds apart.
    rounds: dict[str, list[LoadResult]] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def request_body(model: str, stream: bool) -> bytes:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write one sentence about foxes."},
    ]
    return msgspec.json.encode({"model": model, "messages": messages, "temperature": 0.7, "stream": stream})


def keys_config(workdir: Path, redis: bool) -> str:
    lines = [
        "auth: {master_key: sk-bench-master-key-0123456789}",
        f"database: {{url: 'sqlite:///{workdir / 'bench-keys.db'}'}}",
        "keys:",
        "  - {name: bench, key_env: BENCH_CLIENT_KEY, rpm: 100000000, tpm: 100000000000, max_parallel: 100000,",
        "     budget_usd: 1000000000}",
    ]
    if redis:
        lines.append("state: {backend: redis, url: 'redis://127.0.0.1:6379/0'}")
    return "\n".join(lines) + "\n"


def switchboard_config(upstream: str, resumable: bool = False) -> str:
    """Breakers and retries are on (the defaults) in every run; the retry backoff is short so that
    the failover scenario measures failing over, not sleeping."""
    kinds = ("json", "stream", "slow", "flaky-json", "flaky-stream", "paced")
    lines = ["providers:"]
    lines += [f"  {k}: {{type: openai, base_url: '{upstream}/{k}/v1', api_key: sk-bench}}" for k in kinds]
    lines.append("models:")
    lines += [f"  bench-{k}: {{targets: [{{provider: {k}, model: gpt-4o-mini}}]}}" for k in ("json", "stream", "slow")]
    # (``resumable`` only when on: the baseline build predates the key.)
    paced = "{targets: [{provider: paced, model: gpt-4o-mini}]" + ", resumable: true" * resumable + "}"
    lines.append(f"  bench-paced: {paced}")
    lines += [
        f"  bench-failover-{k}: {{targets: [{{provider: flaky-{k}, model: m}}, {{provider: {k}, model: m}}]}}"
        for k in ("json", "stream")
    ]
    lines.insert(1, f"  anthropic: {{type: anthropic, base_url: '{upstream}/anthropic', api_key: sk-bench}}")
    lines.append("  bench-anthropic-stream: {targets: [{provider: anthropic, model: claude-bench}]}")
    lines.append("resilience: {retry: {max_attempts: 2, initial_backoff_s: 0.005, max_backoff_s: 0.02}}")
    return "\n".join(lines) + "\n"


class Subject:
    """A server under test, started pinned to the proxy CPU."""

    def __init__(self, name: str, upstream: str, workdir: Path, baseline: str = BEFORE_TELEMETRY) -> None:
        self.name = name
        self.baseline = baseline
        self.port = free_port()
        self.upstream = upstream
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def is_switchboard(self) -> bool:
        return self.name.startswith("switchboard") or self.name == "baseline"

    def url(self, kind: str) -> str:
        if self.is_switchboard:
            return f"http://127.0.0.1:{self.port}/v1/chat/completions"
        return f"http://127.0.0.1:{self.port}/{kind}/v1/chat/completions"

    def model(self, kind: str) -> str:
        return f"bench-{kind}" if self.is_switchboard else "gpt-4o-mini"

    def __enter__(self) -> Subject:
        env = {**os.environ, "BENCH_UPSTREAM": self.upstream}
        cwd: Path | None = None
        if self.is_switchboard:
            config = self.workdir / f"{self.name}.yaml"
            text = switchboard_config(self.upstream, resumable=self.name == "switchboard-full")
            if self.name in KEY_SUBJECTS:
                text += keys_config(self.workdir, self.name.endswith("redis"))
                env["BENCH_CLIENT_KEY"] = CLIENT_KEY
            config.write_text(text)
            level = "warning" if self.name in ("switchboard", "baseline") else "info"  # keys: as -logged
            argv = [sys.executable, "-m", "router", "serve", "--config", str(config), "--log-level", level]
            argv += ["--port", str(self.port)]
            if self.name == "baseline":
                # Run from the checkout: ``python -m`` puts the working directory first on the
                # path, ahead of PYTHONPATH, so from here it would import this build instead.
                cwd = self._checkout()
            else:
                argv += ["--log-format", "json"]
            if self.name == "switchboard-traced":
                entry = entry_point_dir(self.workdir / "entry-points")
                env.update(
                    PYTHONPATH=os.pathsep.join([str(entry), str(Path(__file__).resolve().parent.parent)]),
                    OTEL_TRACES_EXPORTER="discard",
                    OTEL_TRACES_SAMPLER="always_on",
                )
            if self.name == "switchboard-traced-otlp":
                env.update(
                    OTEL_TRACES_EXPORTER="otlp",
                    OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                    OTEL_EXPORTER_OTLP_ENDPOINT=self.upstream,
                    OTEL_TRACES_SAMPLER="always_on",
                )
        else:
            env["BENCH_CLIENT"] = self.name.removeprefix("passthrough-")
            argv = [sys.executable, "-m", "uvicorn", "--factory", "bench.passthrough:create", "--port", str(self.port)]
            argv += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
        self.log = (self.workdir / f"{self.name}.log").open("wb")
        self.process = subprocess.Popen(
            ["taskset", "-c", str(PROXY_CPU), *argv], env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        body = request_body(self.model("json"), False)
        while time.monotonic() < deadline:
            try:
                headers = {"authorization": f"Bearer {CLIENT_KEY}"}
                if httpx.post(self.url("json"), content=body, headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start: see {self.workdir / self.name}.log")

    def _checkout(self) -> Path:
        """The baseline build's sources (git archive of the ref), run with this venv's packages."""
        tree = self.workdir / "baseline"
        tree.mkdir(exist_ok=True)
        archive = subprocess.run(["git", "archive", self.baseline], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        return tree

    def rss_kb(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(15)
            self.log.close()


class Direct:
    """The upstream itself, as a subject."""

    name = "direct"

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    def url(self, kind: str) -> str:
        return f"{self.upstream}/{kind}/v1/chat/completions"

    def model(self, kind: str) -> str:
        return "gpt-4o-mini"


def load(subject: Subject | Direct, kind: str, connections: int, seconds: int, workdir: Path) -> LoadResult:
    """One wrk run; for a server under test, with the CPU it spent per answered request (on a
    shared machine a steadier measure of its cost than req/s, which another tenant's load moves)."""
    if kind in API_KINDS and isinstance(subject, Subject):
        url, body = api_request(subject, kind)
    else:
        url, body = subject.url(kind), request_body(subject.model(kind), kind.endswith("stream"))
    pid = subject.process.pid if isinstance(subject, Subject) and subject.process is not None else None
    before = capacity.cpu_seconds(pid) if pid is not None else 0.0
    result = run_wrk(url, body, connections=connections, seconds=seconds, cpu=LOAD_CPU, workdir=workdir)
    if pid is None or not result.requests:
        return result
    return replace(result, cpu_us=(capacity.cpu_seconds(pid) - before) / result.requests * 1e6)


API_KINDS: Final = ("responses-stream", "messages-stream")


def api_request(subject: Subject, kind: str) -> tuple[str, bytes]:
    """The same conversation, streamed from the same OpenAI-format upstream, asked through the
    Responses API or Anthropic's Messages API: every event translated on the way back."""
    system, user = "You are a helpful assistant.", "Write one sentence about foxes."
    if kind == "responses-stream":
        body = {"model": "bench-stream", "instructions": system, "input": user, "temperature": 0.7, "stream": True}
        return f"http://127.0.0.1:{subject.port}/v1/responses", msgspec.json.encode(body)
    message = {"role": "user", "content": user}
    body = {"model": "bench-stream", "system": system, "messages": [message], "max_tokens": 256, "stream": True}
    return f"http://127.0.0.1:{subject.port}/v1/messages", msgspec.json.encode(body)


def median_run(runs: list[LoadResult]) -> LoadResult:
    """The run with the median throughput (its latencies come with it), and the median of the
    runs' CPU per request."""
    middle = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
    cpu = sorted(r.cpu_us for r in runs if r.cpu_us is not None)
    return replace(middle, cpu_us=cpu[len(cpu) // 2]) if cpu else middle


def open_stream_kb(subject: Subject, count: int) -> float:
    baseline = subject.rss_kb()
    body = request_body(subject.model("slow"), True)
    opened, rss = asyncio.run(hold_streams(subject.url("slow"), body, count, subject.rss_kb))
    assert isinstance(rss, int)
    return (rss - baseline) / opened


def switchboard_scenarios(
    subject: Subject, args: argparse.Namespace, workdir: Path
) -> tuple[dict[str, LoadResult], dict[str, list[LoadResult]]]:
    """Failover (one of two targets failing half the time) and an Anthropic-format stream against
    an OpenAI-format one, 64 clients, interleaved in rounds like the main scenarios. The chat
    stream runs between the translated ones, so that each is compared with a run next to it."""
    kinds = ("failover-json", "failover-stream", "anthropic-stream", "stream", "responses-stream", "messages-stream")
    samples: dict[str, list[LoadResult]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            samples[kind].append(load(subject, kind, 64, args.seconds, workdir))
    named = {("openai-stream" if kind == "stream" else kind) + "-c64": runs for kind, runs in samples.items()}
    return {name: median_run(runs) for name, runs in named.items()}, named


def measure(subjects: list[Subject | Direct], args: argparse.Namespace, workdir: Path) -> list[SubjectResult]:
    """Every scenario runs for every subject in rounds, the order rotating each round, so that the
    machine's drift during the run spreads over all subjects instead of favouring one."""
    results = {s.name: SubjectResult(s.name) for s in subjects}
    for subject in subjects:
        load(subject, "json", 8, 1, workdir)  # warm-up: imports, pools, caches
        load(subject, "stream", 8, 1, workdir)
        if isinstance(subject, Subject) and args.streams:
            print(f"bench: {subject.name}: {args.streams} open streams…", file=sys.stderr)
            results[subject.name].kb_per_stream = open_stream_kb(subject, args.streams)
    for kind, connections in SCENARIOS:
        print(f"bench: {kind}, {connections} client(s), {args.rounds} rounds…", file=sys.stderr)
        samples: dict[str, list[LoadResult]] = {s.name: [] for s in subjects}
        for round_ in range(args.rounds):
            for subject in subjects[round_ % len(subjects) :] + subjects[: round_ % len(subjects)]:
                samples[subject.name].append(load(subject, kind, connections, args.seconds, workdir))
        for name, runs in samples.items():
            results[name].runs[f"{kind}-c{connections}"] = median_run(runs)
            results[name].rounds[f"{kind}-c{connections}"] = runs
    for subject in subjects:
        if isinstance(subject, Subject) and subject.name == "switchboard":
            medians, rounds = switchboard_scenarios(subject, args, workdir)
            results[subject.name].runs.update(medians)
            results[subject.name].rounds.update(rounds)
        if isinstance(subject, Subject):
            results[subject.name].rss_mb = subject.rss_kb() / 1024
    return list(results.values())


API_ROWS: Final = (("responses", "Responses API"), ("messages", "Messages API"))


def paired(runs: list[LoadResult], against: list[LoadResult]) -> float | None:
    """The median, over rounds, of ``against``'s CPU per request over ``runs``'s in the same
    round: a throughput ratio from runs seconds apart, which the machine's drift over a whole
    run (another tenant's load) moves far less than the ratio of two medians."""
    ratios = sorted(b.cpu_us / a.cpu_us for a, b in zip(runs, against, strict=False) if a.cpu_us and b.cpu_us)
    if not ratios:
        return None
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def _cpu(run: LoadResult, chat: LoadResult | None = None) -> str:
    """CPU per request, and as a throughput ratio to ``chat``'s (its CPU over this one's)."""
    if run.cpu_us is None:
        return "-"
    if chat is None or chat.cpu_us is None:
        return f"{run.cpu_us:,.0f}"
    return f"{run.cpu_us:,.0f} ({chat.cpu_us / run.cpu_us:.2f}x)"


def report(results: list[SubjectResult]) -> str:
    head = "| subject | " + " | ".join(f"{k} c{c}: req/s · p50 · p99 (ms)" for k, c in SCENARIOS)
    lines = [head + " | RSS MB | KB/open stream |", "|---" * (len(SCENARIOS) + 3) + "|"]
    for r in results:
        cells = [
            f"{run.rps:,.0f} · {run.p50_ms:.2f} · {run.p99_ms:.2f}" + (f" ({run.errors} err)" if run.errors else "")
            for run in (r.runs[f"{k}-c{c}"] for k, c in SCENARIOS)
        ]
        rss = f"{r.rss_mb:.0f}" if r.rss_mb is not None else "-"
        kb = f"{r.kb_per_stream:.1f}" if r.kb_per_stream is not None else "-"
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {rss} | {kb} |")
    by_name = {r.name: r for r in results}
    if "switchboard" in by_name and "failover-json-c64" in by_name["switchboard"].runs:
        runs = by_name["switchboard"].runs
        lines += [
            "",
            "| switchboard, 64 clients | healthy: req/s · p99 | one of two targets failing 50%: req/s · p99 |",
        ]
        lines.append("|---|---|---|")
        for kind in ("json", "stream"):
            healthy, failing = runs[f"{kind}-c64"], runs[f"failover-{kind}-c64"]
            errors = f" ({failing.errors} errors)" if failing.errors else " (0 errors)"
            lines.append(
                f"| {kind} | {healthy.rps:,.0f} · {healthy.p99_ms:.2f} ms | "
                f"{failing.rps:,.0f} · {failing.p99_ms:.2f} ms{errors} |"
            )
        if "anthropic-stream-c64" in runs:
            openai = runs["openai-stream-c64"]
            lines += [
                "",
                "| switchboard, streamed, 64 clients | req/s · p50 · p99 (ms) | proxy CPU µs/request "
                "| CPU ratio, median of rounds |",
                "|---|---|---|---|",
                f"| `openai` target | {openai.rps:,.0f} · {openai.p50_ms:.2f} · {openai.p99_ms:.2f} "
                f"| {_cpu(openai)} | |",
            ]
            rounds = by_name["switchboard"].rounds
            rows = [("anthropic", "`anthropic` target (every event translated)")]
            rows += [(kind, f"{what} from the `openai` target (every event translated)") for kind, what in API_ROWS]
            for kind, what in rows:
                api = runs.get(f"{kind}-stream-c64")
                if api is not None:
                    ratio = paired(rounds.get(f"{kind}-stream-c64", []), rounds.get("openai-stream-c64", []))
                    lines.append(
                        f"| {what} | {api.rps:,.0f} · {api.p50_ms:.2f} · {api.p99_ms:.2f} "
                        f"({api.rps / openai.rps:.2f}x, target >= 0.8) | {_cpu(api, openai)} | "
                        + (f"{ratio:.2f}x |" if ratio is not None else "- |")
                    )
    reference = "baseline" if "baseline" in by_name else "switchboard"
    telemetry = (("switchboard-logged", 0.95), ("switchboard-traced", 0.8), ("switchboard-traced-otlp", 0.0))
    lines += _ratios(by_name, reference, reference, telemetry)
    keys = (("switchboard-keys", 0.9), ("switchboard-keys-redis", 0.8))
    lines += _ratios(by_name, "switchboard-logged", "open mode", keys)
    if "switchboard" in by_name and any(n in by_name for n in HTTPX_PASSTHROUGHS):
        sb = by_name["switchboard"]
        lines.append("")
        for kind, target in (("json", 0.8), ("stream", 0.7)):
            best = max(
                (by_name[n] for n in HTTPX_PASSTHROUGHS if n in by_name), key=lambda r: r.runs[f"{kind}-c64"].rps
            )
            ratio = sb.runs[f"{kind}-c64"].rps / best.runs[f"{kind}-c64"].rps
            added = sb.runs[f"{kind}-c1"].p50_ms - best.runs[f"{kind}-c1"].p50_ms
            lines.append(
                f"- {kind}: Switchboard at 64 clients = {ratio:.2f}x {best.name} (target >= {target}); "
                f"added p50 at 1 client = {added:+.3f} ms (target <= 0.3 ms)"
            )
    return "\n".join(lines)


def _ratios(
    by_name: dict[str, SubjectResult], reference: str, label: str, subjects: tuple[tuple[str, float], ...]
) -> list[str]:
    """Each subject's throughput at 64 clients against ``reference``'s, with its target."""
    if reference not in by_name or not any(name in by_name for name, _ in subjects):
        return []
    base = by_name[reference]
    lines = [""]
    for name, target in subjects:
        if name not in by_name:
            continue
        for kind in ("json", "stream"):
            run, against = by_name[name].runs[f"{kind}-c64"], base.runs[f"{kind}-c64"]
            goal = f" (target >= {target})" if target else ""
            cpu = ""
            if run.cpu_us and against.cpu_us:  # the steadier figure: the proxy's CPU per request
                cpu = f"; by CPU per request {against.cpu_us / run.cpu_us:.2f}x ({run.cpu_us:,.0f} µs)"
            ratio = paired(by_name[name].rounds.get(f"{kind}-c64", []), base.rounds.get(f"{kind}-c64", []))
            if ratio is not None:
                cpu += f"; by CPU, median of rounds {ratio:.2f}x"
            lines.append(f"- {kind}: {name} at 64 clients = {run.rps / against.rps:.2f}x {label}{goal}{cpu}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--seconds", type=int, default=4, help="duration of each load run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per scenario and subject (the median is reported)")
    parser.add_argument("--streams", type=int, default=500, help="slow streams held open for the memory test (0: skip)")
    parser.add_argument("--subjects", nargs="*", default=list(SUBJECTS), choices=SUBJECTS)
    parser.add_argument("--baseline", default=BEFORE_TELEMETRY, help="git ref of the baseline subject's build")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="the stream-capacity scenario instead (bench/capacity.py): paced 20 s streams, N at once",
    )
    parser.add_argument(
        "--ladder", default="150,200,250,300,350,400", help="stream counts the capacity scenario climbs"
    )
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("bench: needs 2 CPUs (one for the proxy, one for the load)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CPU})
    if args.capacity:
        return capacity_main(args)
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        nginx = stack.enter_context(Nginx(free_port(), workdir / "nginx", LOAD_CPU))
        upstream = f"http://127.0.0.1:{nginx.port}"
        subjects: list[Subject | Direct] = []
        for name in args.subjects:
            print(f"bench: starting {name}…", file=sys.stderr)
            subjects.append(
                Direct(upstream)
                if name == "direct"
                else stack.enter_context(Subject(name, upstream, workdir, args.baseline))
            )
        results = measure(subjects, args, workdir)
    text = report(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(msgspec.json.format(msgspec.json.encode([asdict(r) for r in results])))
    return 0


CAPACITY_SUBJECTS: Final = (
    "direct",
    "passthrough-aiohttp",
    "passthrough-httpx-aiohttp",
    "switchboard",
    "switchboard-full",
)


def capacity_main(args: argparse.Namespace) -> int:
    """The stream-capacity scenario: each subject climbs the ladder of concurrent paced streams."""
    names = args.subjects if args.subjects != list(SUBJECTS) else list(CAPACITY_SUBJECTS)
    ladder = [int(n) for n in args.ladder.split(",")]
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        nginx = stack.enter_context(Nginx(free_port(), workdir / "nginx", LOAD_CPU))
        upstream = f"http://127.0.0.1:{nginx.port}"
        direct = Direct(upstream)
        ideal = capacity.ideal_seconds(direct.url("paced"), request_body("gpt-4o-mini", True))
        results: dict[str, list[capacity.Step]] = {}
        harness: dict[int, float] = {}
        for name in names:
            if name == "baseline":
                continue
            print(f"bench: capacity of {name}…", file=sys.stderr)
            if name == "direct":  # the harness itself: nginx and the client, with no proxy between
                body = request_body("gpt-4o-mini", True)
                results[name] = capacity.climb(direct.url("paced"), body, ladder, ideal, None, {})
                harness = {s.streams: s.p99_delay_s for s in results[name]}
                continue
            with Subject(name, upstream, workdir, args.baseline) as subject:
                assert subject.process is not None
                headers = {"authorization": f"Bearer {CLIENT_KEY}"} if name in KEY_SUBJECTS else {}
                body = request_body(subject.model("paced"), True)
                pid = subject.process.pid
                results[name] = capacity.climb(subject.url("paced"), body, ladder, ideal, pid, headers, harness)
    print(capacity.report(results, ideal))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
