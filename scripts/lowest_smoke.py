"""Smoke-test a Switchboard install: start ``python -m router serve`` and make one non-streamed and
one streamed chat completion to the offline mock model ``demo``, then the same two to ``upstream``,
an ``openai`` provider pointed at a fake OpenAI server in this process (the real HTTP path:
aiohttp, gzip, SSE pass-through), and one to ``down``, whose provider refuses connections (the
transport's error mapping answers 502, not 500). The server runs with a master key: it creates
its SQLite database, and a virtual key made through the admin API answers (SQLAlchemy, Alembic,
aiosqlite).

``./dev test`` runs it with ``.venv-lowest``, a venv holding the lowest versions that
``pyproject.toml`` admits, so a floor the code cannot run on fails the build. Standard library
only, so that it runs under any interpreter::

    python scripts/lowest_smoke.py [--python PATH]   # PATH starts the server (default: this one)
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

CONFIG = """\
providers:
  demo: {type: mock}
  upstream: {type: openai, base_url: "http://127.0.0.1:%d/v1"}
  down: {type: openai, base_url: "http://127.0.0.1:%d/v1"}
models:
  demo:
    targets: [{provider: demo, model: echo}]
  upstream:
    targets: [{provider: upstream, model: fake}]
  down:
    targets: [{provider: down, model: fake}]
resilience:
  retry: {max_attempts: 1}
auth: {master_key: %s}
database: {url: "sqlite:///keys.db"}
"""
MASTER_KEY = "smoke-master-key"
PROMPT = "hello from the lowest-versions smoke"
UPSTREAM_TEXT = ["Hello", " from", " the", " fake", " upstream"]
STARTUP_S = 30.0  # the server answers /health/live within this
REQUEST_S = 10.0  # each request completes within this
SHUTDOWN_S = 10.0  # the server exits cleanly within this after SIGTERM


class SmokeFailed(Exception):
    """A check failed; the message says which."""


class FakeOpenAI(http.server.BaseHTTPRequestHandler):
    """``POST /v1/chat/completions`` answered like OpenAI: gzip JSON when accepted, or an SSE stream."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
        elif request.get("stream"):
            self._stream()
        else:
            self._complete()

    def _complete(self) -> None:
        message = {"role": "assistant", "content": "".join(UPSTREAM_TEXT)}
        answer = {"id": "chatcmpl-smoke", "object": "chat.completion", "created": 0, "model": "fake"}
        answer["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if "gzip" in self.headers.get("accept-encoding", ""):
            body = gzip.compress(body)
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        chunk = {"id": "chatcmpl-smoke", "object": "chat.completion.chunk", "created": 0, "model": "fake"}
        deltas: list[tuple[dict[str, str], str | None]] = [({"role": "assistant"}, None)]
        deltas += [({"content": word}, None) for word in UPSTREAM_TEXT] + [({}, "stop")]
        for delta, finish in deltas:
            chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
            self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        return


def free_ports(count: int) -> list[int]:
    """Distinct ports nothing listens on (all bound at once, so none is handed out twice)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def request(
    port: int, method: str, path: str, body: dict[str, Any] | None = None, key: str = MASTER_KEY
) -> tuple[int, str, bytes]:
    """Status, content type and the whole body (chunked bodies are read to their end)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_S)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if payload is not None else {}
        headers["authorization"] = f"Bearer {key}"
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        conn.close()


def post(port: int, what: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    try:
        return request(port, "POST", "/v1/chat/completions", body)
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, malformed
        raise SmokeFailed(f"{what}: {type(exc).__name__}: {exc}") from exc


def wait_until_live(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SmokeFailed(f"the server exited with status {server.returncode} before answering /health/live")
        try:
            status, _, _ = request(port, "GET", "/health/live")
        except (OSError, http.client.HTTPException):
            status = 0
        if status == 200:
            return
        time.sleep(0.1)
    raise SmokeFailed(f"/health/live did not answer 200 within {STARTUP_S:.0f} s")


def check_completion(port: int, model: str, expected: str) -> None:
    what = f"{model}, non-streamed"
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    status, content_type, raw = post(port, what, body)
    if status != 200:
        raise SmokeFailed(f"{what}: status {status}: {raw[:500]!r}")
    if not content_type.startswith("application/json"):
        raise SmokeFailed(f"{what}: content-type {content_type!r}")
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError) as exc:
        raise SmokeFailed(f"{what}: no choices[0].message.content ({exc!r}): {raw[:500]!r}") from exc
    if content != expected:
        raise SmokeFailed(f"{what}: content {content!r}, expected {expected!r}")


def check_stream(port: int, model: str, expected: str) -> None:
    what = f"{model}, streamed"
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    status, content_type, raw = post(port, what, body)
    if status != 200:
        raise SmokeFailed(f"{what}: status {status}: {raw[:500]!r}")
    if not content_type.startswith("text/event-stream"):
        raise SmokeFailed(f"{what}: content-type {content_type!r}")
    events = [line for line in raw.decode().splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "data: [DONE]":
        raise SmokeFailed(f"{what}: does not end with 'data: [DONE]': {raw[-500:]!r}")
    text = ""
    for event in events[:-1]:
        try:
            chunk = json.loads(event.removeprefix("data: "))
        except ValueError as exc:
            raise SmokeFailed(f"{what}: an event is not JSON: {event[:200]!r}") from exc
        for choice in chunk.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or ""
    if text != expected:
        raise SmokeFailed(f"{what}: content {text!r}, expected {expected!r}")


def check_refused(port: int, model: str) -> None:
    what = f"{model}, connection refused"
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    status, _, raw = post(port, what, body)
    try:
        error = json.loads(raw)["error"]
    except (ValueError, LookupError, TypeError) as exc:
        raise SmokeFailed(f"{what}: status {status}, no OpenAI error body ({exc!r}): {raw[:500]!r}") from exc
    if status != 502 or not isinstance(error, dict) or not error.get("message"):
        raise SmokeFailed(f"{what}: status {status}, expected 502 with an error message: {raw[:500]!r}")


def check_metrics(port: int, requests: int) -> None:
    """The requests made so far, counted in /metrics (prometheus-client, the metrics' floor)."""
    status, _, raw = request(port, "GET", "/metrics")
    text = raw.decode("utf-8", "replace")
    counted = sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("switchboard_requests_total{")
    )
    if status != 200 or counted != requests:
        raise SmokeFailed(
            f"/metrics: status {status}, {counted:g} requests counted, expected {requests}: {text[:500]!r}"
        )


def check_virtual_key(port: int) -> None:
    """A key made through the admin API (stored in SQLite) answers; no key is refused with 401."""
    status, _, raw = request(port, "POST", "/admin/keys", {"name": "smoke", "models": ["demo"], "rpm": 100})
    if status != 201:
        raise SmokeFailed(f"POST /admin/keys: status {status}: {raw[:500]!r}")
    key = json.loads(raw)["key"]
    body = {"model": "demo", "messages": [{"role": "user", "content": PROMPT}]}
    status, _, raw = request(port, "POST", "/v1/chat/completions", body, key=key)
    if status != 200:
        raise SmokeFailed(f"a virtual key: status {status}: {raw[:500]!r}")
    status, _, raw = request(port, "POST", "/v1/chat/completions", body, key="sk-sb-000000000000-wrong")
    if status != 401:
        raise SmokeFailed(f"a wrong key: status {status}, expected 401: {raw[:500]!r}")


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait for a clean exit (the lifespan's shutdown runs); SIGKILL as a last resort.
    uvicorn ≥ 0.29 re-raises the signal once it has shut down, so -SIGTERM is a clean exit too."""
    if server.poll() is not None:
        raise SmokeFailed(f"the server exited early with status {server.returncode}")
    server.send_signal(signal.SIGTERM)
    try:
        status = server.wait(timeout=SHUTDOWN_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        raise SmokeFailed(f"the server did not exit within {SHUTDOWN_S:.0f} s of SIGTERM") from None
    if status not in {0, -signal.SIGTERM}:
        raise SmokeFailed(f"the server exited with status {status} after SIGTERM")


def smoke(python: str, workdir: Path, log: IO[bytes]) -> None:
    fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=fake.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        serve(python, workdir, log, fake.server_address[1])
    finally:
        fake.shutdown()
        fake.server_close()
    log.flush()
    if b"Traceback" in Path(log.name).read_bytes():
        raise SmokeFailed("the server logged a traceback")


def serve(python: str, workdir: Path, log: IO[bytes], upstream_port: int) -> None:
    config = workdir / "config.yaml"
    port, refused_port = free_ports(2)
    config.write_text(CONFIG % (upstream_port, refused_port, MASTER_KEY))
    command = [python, "-m", "router", "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k not in {"SWITCHBOARD_CONFIG", "PYTHONPATH", "VIRTUAL_ENV"}}
    server = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)  # noqa: S603
    try:
        wait_until_live(port, server)
        check_completion(port, "demo", PROMPT)  # the mock's echo model repeats the prompt
        check_stream(port, "demo", PROMPT)
        check_completion(port, "upstream", "".join(UPSTREAM_TEXT))
        check_stream(port, "upstream", "".join(UPSTREAM_TEXT))
        check_refused(port, "down")
        check_metrics(port, 5)
        check_virtual_key(port)
        stop(server)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def installed_versions(python: str) -> str:
    names = ["litestar", "httpx", "aiohttp", "msgspec", "pybreaker", "tenacity", "opentelemetry-sdk"]
    names += ["PyYAML", "uvicorn", "uvloop", "httptools", "genai-prices", "prometheus-client"]
    names += ["SQLAlchemy", "alembic", "aiosqlite", "asyncpg", "redis"]
    code = "import sys, importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))"
    result = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, check=False, timeout=30)  # noqa: S603
    return result.stdout.strip() or result.stderr.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="switchboard-smoke-") as tmp:
        workdir = Path(tmp)
        with (workdir / "server.log").open("w+b") as log:
            try:
                smoke(args.python, workdir, log)
            except SmokeFailed as exc:
                log.flush()
                print(f"lowest-smoke: FAILED: {exc}", file=sys.stderr)
                print(f"lowest-smoke: versions: {installed_versions(args.python)}", file=sys.stderr)
                print("lowest-smoke: server output:", file=sys.stderr)
                sys.stderr.write(Path(log.name).read_text(errors="replace")[-5000:])
                return 1
    elapsed = time.monotonic() - started
    print(f"lowest-smoke: ok ({installed_versions(args.python)}) in {elapsed:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
