"""Stream capacity (``./dev bench --capacity``): how many concurrent long streams one proxy core
holds while still delivering them on time.

nginx paces each stream at one 200-byte event every 20 ms, 1,000 events (a 20 s answer). A client
on the other CPU opens N streams at once and counts every event. A stream's completion delay is
how much longer it took than one stream alone straight from nginx. nginx and the client share the
load CPU, so at a few hundred streams the harness itself is late: ``direct`` (no proxy) is run at
every step, and a subject's delay is counted over direct's at the same N. A subject holds N
streams when every one completes and its p99 delay over direct's is under 1 s. N climbs a ladder
until a step fails. Also reported at the largest N held: the time to the first event, the
proxy's CPU per relayed event (from /proc) and its RSS per open stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.upstream import PACED_EVENTS

MAX_DELAY_S = 1.0
EVENT = b"data: {"
TICKS = 100  # /proc/<pid>/stat counts CPU time in clock ticks of 10 ms


@dataclass
class Step:
    streams: int
    completed: int
    p99_delay_s: float
    p50_first_event_ms: float
    cpu_us_per_event: float
    rss_kb_per_stream: float
    harness_delay_s: float = 0.0  # direct's p99 delay at the same N

    @property
    def added_delay_s(self) -> float:
        return self.p99_delay_s - self.harness_delay_s

    @property
    def held(self) -> bool:
        return self.completed == self.streams and self.added_delay_s < MAX_DELAY_S


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[float, float, int]:
    """(seconds to the first event, seconds to the end, events) of one stream."""
    started = time.monotonic()
    first = 0.0
    events = 0
    async with session.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            return 0.0, 0.0, 0
        # Counted per read, not parsed per line: the client shares its CPU with nginx and must not
        # be what falls behind.
        tail = b""  # a marker may be split between two reads
        async for piece in response.content.iter_any():
            joined = tail + piece
            events += joined.count(EVENT) - tail.count(EVENT)
            if events and not first:
                first = time.monotonic() - started
            tail = joined[-(len(EVENT) - 1) :]
    return first, time.monotonic() - started, events


async def run_step(
    url: str, body: bytes, streams: int, ideal_s: float, pid: int | None, headers: dict[str, str]
) -> Step:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=ideal_s * 4 + 60)
    rss_before = rss_kb(pid) if pid else 0
    cpu_before = cpu_seconds(pid) if pid else 0.0
    peak = [rss_before]

    async def sample() -> None:
        while pid:
            peak[0] = max(peak[0], rss_kb(pid))
            await asyncio.sleep(1)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(
            *(_one(session, url, body, headers) for _ in range(streams)), return_exceptions=True
        )
        sampler.cancel()
    cpu = (cpu_seconds(pid) - cpu_before) if pid else 0.0
    done = [r for r in results if isinstance(r, tuple) and r[2] >= PACED_EVENTS]
    delays = sorted(max(0.0, r[1] - ideal_s) for r in done) or [float("inf")]
    firsts = sorted(r[0] for r in done) or [0.0]
    events = sum(r[2] for r in results if isinstance(r, tuple))
    return Step(
        streams=streams,
        completed=len(done),
        p99_delay_s=delays[min(len(delays) - 1, int(len(delays) * 0.99))],
        p50_first_event_ms=firsts[len(firsts) // 2] * 1000,
        cpu_us_per_event=cpu / events * 1e6 if events else 0.0,
        rss_kb_per_stream=(peak[0] - rss_before) / streams if pid else 0.0,
    )


def ideal_seconds(direct_url: str, body: bytes) -> float:
    """One stream straight from nginx: the pace itself."""
    step = asyncio.run(run_step(direct_url, body, 1, 0.0, None, {}))
    return step.p99_delay_s  # with ideal 0, the delay is the whole duration


def climb(
    url: str,
    body: bytes,
    ladder: Sequence[int],
    ideal_s: float,
    pid: int | None,
    headers: dict[str, str],
    harness: dict[int, float] | None = None,
) -> list[Step]:
    """Each step of ``ladder`` until one is not held (``harness``: direct's p99 delay per step;
    without it, every step is run)."""
    steps: list[Step] = []
    for streams in ladder:
        step = asyncio.run(run_step(url, body, streams, ideal_s, pid, headers))
        if harness is not None:
            step.harness_delay_s = harness.get(streams, 0.0)
        steps.append(step)
        if harness is not None and not step.held:
            break
    return steps


def held(steps: Sequence[Step]) -> Step | None:
    ok = [s for s in steps if s.held]
    return ok[-1] if ok else None


def report(results: dict[str, list[Step]], ideal_s: float) -> str:
    lines = [
        f"Stream capacity on one proxy core: {PACED_EVENTS} events of 200 bytes, one per 20 ms "
        f"({ideal_s:.1f} s straight from nginx); held = every stream complete, p99 completion delay < 1 s",
        "",
        "| subject | streams held | p99 delay (s), over direct's | first event p50 (ms) | CPU µs/event "
        "| KB RSS/stream | next step |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, steps in results.items():
        best = held(steps)
        failed = next((s for s in steps if not s.held), None)
        nxt = (
            f"{failed.streams}: {failed.completed} complete, p99 delay {failed.p99_delay_s:.2f} s "
            f"({failed.added_delay_s:+.2f} s over direct's), {failed.cpu_us_per_event:.0f} µs/event"
            if failed is not None
            else "not reached"
        )
        if name == "direct":
            each = ", ".join(f"{s.streams}: {s.p99_delay_s:.2f} s" for s in steps)
            lines.append(f"| direct (the harness alone) | - | {each} | - | - | - | - |")
            continue
        if best is None:
            lines.append(f"| {name} | none of {steps[0].streams} | - | - | - | - | {nxt} |")
            continue
        lines.append(
            f"| {name} | {best.streams} | {best.p99_delay_s:.2f}, {best.added_delay_s:+.2f} | "
            f"{best.p50_first_event_ms:.1f} | "
            f"{best.cpu_us_per_event:.0f} | {best.rss_kb_per_stream:.1f} | {nxt} |"
        )
    passthroughs = [held(s) for n, s in results.items() if n.startswith("passthrough")]
    # "direct" is the harness alone (nginx and the client on the load CPU): no subject can be
    # shown to hold more streams than it does.
    best_bare = max((s.streams for s in passthroughs if s is not None), default=0)
    for name, target in (("switchboard", 1.0), ("switchboard-full", 0.9)):
        if name in results and best_bare:
            got = held(results[name])
            ratio = (got.streams if got else 0) / best_bare
            lines.append(f"- {name}: {ratio:.2f}x the best bare pass-through (target >= {target})")
    return "\n".join(lines)
