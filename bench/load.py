"""Load generation: wrk for throughput and latency, an asyncio client for many open slow streams."""

from __future__ import annotations

import asyncio
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import aiohttp

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0  # answered in the run
    cpu_us: float | None = None  # the server's CPU per answered request, where it was measured


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


CLIENT_KEY = "sk-bench-client"  # every load sends it: the key subjects' virtual key, ignored in open mode


def run_wrk(url: str, body: bytes, *, connections: int, seconds: int, cpu: int, workdir: Path) -> LoadResult:
    script = workdir / "post.lua"
    lua_body = body.decode().replace("\\", "\\\\").replace('"', '\\"')
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = "{lua_body}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {CLIENT_KEY}"\n'
    )
    out = subprocess.run(
        [
            "taskset",
            "-c",
            str(cpu),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    done = re.search(r"(\d+) requests in", out)
    return LoadResult(rps, p50, p99, errors, int(done.group(1)) if done else 0)


async def hold_streams(url: str, body: bytes, count: int, measure: object) -> tuple[int, object]:
    """Open ``count`` streams, wait until each has delivered its first event, call ``measure()``
    while all are open, then close them. Returns how many opened and what ``measure`` returned."""
    opened = 0
    ready = asyncio.Event()
    release = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"}
    refused: list[str] = []

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal opened
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                refused.append(f"stream refused with {response.status}: {(await response.read())[:200]!r}")
                ready.set()  # no point waiting for the rest
                return
            while b"data:" not in await response.content.readline():
                pass
            opened += 1
            if opened == count:
                ready.set()
            await release.wait()

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(count)]
        try:
            await asyncio.wait_for(ready.wait(), 60)
            if refused:
                raise RuntimeError(refused[0])
            await asyncio.sleep(0.5)  # let the server settle its buffers
            result = measure() if callable(measure) else None
        finally:
            release.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return opened, result
