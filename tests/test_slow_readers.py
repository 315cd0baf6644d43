"""A client that stops reading a stream: backpressure holds a bounded buffer, and after
``server.write_timeout_s`` (or the request's ``total_s``) both sides are closed. The real server
(``python -m router serve``) against an upstream that streams as fast as it is read."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.fakes import running_upstream
from tests.live import running_proxy

CONFIG = """
server: {{write_timeout_s: {write_s}}}
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{port}/v1"}}
models:
  flood: {{targets: [{{provider: up, model: flood}}]}}
resilience:
  timeouts: {{total_s: {total_s}, idle_s: 30}}
"""
REQUEST = b'{"model":"flood","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def stall(base: str) -> socket.socket:
    """Open a stream, read its first bytes, then read nothing more."""
    port = int(base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65_536)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(REQUEST), REQUEST)
    )
    sock.settimeout(10)
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Drain what was buffered; True once the server has closed its end."""
    sock.settimeout(5)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize(
    ("write_s", "total_s", "within"),
    [(0.5, 60, 5.0), (30, 1.5, 5.0)],
    ids=["write_timeout", "total_deadline"],
)
def test_a_client_that_stops_reading_is_cut_off_and_the_upstream_closed(
    tmp_path: Path, write_s: float, total_s: float, within: float
) -> None:
    """Regression: an unread stream held its upstream, generation and bulkhead slot past
    ``total_s`` (60 s with ``total_s: 30``)."""
    with running_upstream() as fake:
        config = tmp_path / "config.yaml"
        config.write_text(CONFIG.format(port=fake.port, write_s=write_s, total_s=total_s))
        with running_proxy(config, {}, tmp_path / "proxy.log") as base:
            started = time.monotonic()
            sock = stall(base)
            try:
                assert fake.disconnected.wait(within + 5), "the upstream stream was never closed"
                assert fake.disconnected_at - started < within
                # Backpressure: the upstream got to write only what the socket buffers hold.
                assert fake.flood_bytes < 64 * 1024 * 1024, fake.flood_bytes
                assert closed_by_server(sock)
            finally:
                sock.close()
            log = (tmp_path / "proxy.log").read_text()
            assert "client-stalled" in log
            assert "Traceback" not in log
            assert "ASGI callable returned without completing response" not in log
