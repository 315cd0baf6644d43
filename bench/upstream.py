"""The mock upstream: nginx on loopback answering like OpenAI from memory, far faster than any
proxy under test. ``/json`` answers a completion, ``/stream`` a whole streamed answer at once,
``/slow`` the same stream trickled over ~30 s (for the open-streams memory test), and
``/flaky-json``, ``/flaky-stream`` fail half their requests with a 503 (the failover scenario), and
``/anthropic/v1/messages`` streams the same answer in Anthropic's event format."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Final

import httpx
import msgspec

CHUNKS: Final = 40  # content chunks per streamed answer, as a short real reply has
MODEL: Final = "gpt-4o-mini-2024-07-18"


def completion_body() -> bytes:
    text = "The quick brown fox jumps over the lazy dog. " * 4
    return msgspec.json.encode(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1763000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60},
            "service_tier": "default",
            "system_fingerprint": "fp_bench",
        }
    )


def stream_body() -> bytes:
    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1763000000,
            "model": MODEL,
            "service_tier": "default",
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
            "obfuscation": "x1y2",
        }
        return b"data: " + msgspec.json.encode(body) + b"\n\n"

    parts = [chunk({"role": "assistant", "content": "", "refusal": None})]
    parts += [chunk({"content": f" word{i}"}) for i in range(CHUNKS)]
    parts.append(chunk({}, "stop"))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


PACED_EVENTS: Final = 1000  # the stream-capacity scenario: 1,000 events of 200 bytes, one per 20 ms
PACED_EVENT_BYTES: Final = 200
PACED_RATE: Final = PACED_EVENT_BYTES * 50  # bytes per second: nginx's limit_rate paces them


def paced_body() -> bytes:
    """A long answer of ``PACED_EVENTS`` chunks of ``PACED_EVENT_BYTES`` each (then ``[DONE]``)."""

    def chunk(text: str) -> bytes:
        body = {
            "id": "chatcmpl-paced",
            "object": "chat.completion.chunk",
            "created": 1763000000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}],
        }
        return b"data: " + msgspec.json.encode(body) + b"\n\n"

    pad = PACED_EVENT_BYTES - len(chunk(""))
    parts = [chunk(("x" * pad)[: max(0, pad)]) for _ in range(PACED_EVENTS)]
    return b"".join(parts) + b"data: [DONE]\n\n"


def anthropic_stream_body() -> bytes:
    """The same answer as ``stream_body`` in Anthropic's event format (``event:`` + ``data:``)."""

    def event(kind: str, data: dict[str, object]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode({"type": kind, **data}) + b"\n\n"

    usage = {"input_tokens": 20, "cache_read_input_tokens": 0, "output_tokens": 1}
    message = {"id": "msg_bench", "type": "message", "role": "assistant", "content": [], "model": MODEL, "usage": usage}
    parts = [event("message_start", {"message": message})]
    parts.append(event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
    parts += [
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f" word{i}"}})
        for i in range(CHUNKS)
    ]
    parts.append(event("content_block_stop", {"index": 0}))
    parts.append(event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": CHUNKS}}))
    parts.append(event("message_stop", {}))
    return b"".join(parts)


def write_site(root: Path) -> Path:
    """Answers as static files: nginx serves them from memory-mapped pages at full speed."""
    www = root / "www"
    sites = [("json", completion_body()), ("stream", stream_body()), ("slow", stream_body())]
    sites += [("flaky-json", completion_body()), ("flaky-stream", stream_body()), ("paced", paced_body())]
    for kind, body in sites:
        path = www / kind / "v1" / "chat" / "completions"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    messages = www / "anthropic" / "v1" / "messages"
    messages.parent.mkdir(parents=True, exist_ok=True)
    messages.write_bytes(anthropic_stream_body())
    return www


def nginx_conf(port: int, root: Path) -> str:
    www = write_site(root)
    # Static files refuse POST with 405; `error_page 405 =200 $uri` serves them anyway.
    # /flaky-*/ answer 503 to half the requests (drawn by request id), for the failover scenario.
    return f"""
daemon off;
master_process off;
worker_processes 1;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    sendfile on;
    tcp_nodelay on;
    split_clients "${{request_id}}" $flaky {{
        50% "fail";
        * "ok";
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        error_page 405 =200 $uri;
        location /json/ {{ default_type application/json; }}
        location /stream/ {{ default_type text/event-stream; }}
        location /anthropic/ {{ default_type text/event-stream; }}
        location /slow/ {{ default_type text/event-stream; limit_rate 400; }}
        location /paced/ {{ default_type text/event-stream; sendfile off; output_buffers 1 {PACED_EVENT_BYTES};
                           postpone_output 0; limit_rate {PACED_RATE}; }}
        # An OTLP/HTTP sink for the traced subject: takes every export, keeps nothing.
        location /v1/ {{ client_max_body_size 64m; return 200 ''; }}
        location /flaky-json/ {{
            default_type application/json;
            if ($flaky = "fail") {{ return 503 '{{"error":{{"message":"injected","type":"server_error"}}}}'; }}
        }}
        location /flaky-stream/ {{
            default_type text/event-stream;
            if ($flaky = "fail") {{ return 503 '{{"error":{{"message":"injected","type":"server_error"}}}}'; }}
        }}
    }}
}}
"""


def ensure_nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return found
    print("bench: installing nginx and wrk from Debian (apt-get)…")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light", "wrk"], check=True)
    return "/usr/sbin/nginx"


class Nginx:
    def __init__(self, port: int, workdir: Path, cpu: int) -> None:
        self.port = port
        self.workdir = workdir
        self.cpu = cpu
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        binary = ensure_nginx()
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(nginx_conf(self.port, self.workdir))
        self.process = subprocess.Popen(
            ["taskset", "-c", str(self.cpu), binary, "-c", str(conf), "-p", str(self.workdir)]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.post(f"http://127.0.0.1:{self.port}/json/v1/chat/completions", content=b"{}", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
