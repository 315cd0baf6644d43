"""Deploys never drop a stream: SIGTERM to the real server (``python -m router serve``), as an
operator's orchestrator sends it, while the openai SDK reads a stream from the offline mock."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.live import ProxyProcess, proxy_process

WORDS = " ".join(f"w{i}" for i in range(60))  # the mock echoes them: 60 tokens, 50 ms apart: 3 s


def _config(drain_s: float) -> str:
    return f"""
server: {{drain_s: {drain_s}}}
providers:
  demo: {{type: mock, token_delay_s: 0.05}}
  slow: {{type: mock, latency_s: 5}}
  crawl: {{type: mock, token_delay_s: 0.5}}
models:
  crawl: {{targets: [{{provider: crawl, model: echo}}]}}
  demo: {{targets: [{{provider: demo, model: echo}}]}}
  slow: {{targets: [{{provider: slow, model: echo}}]}}
"""


@pytest.fixture
def serve(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProxyProcess]:
    config = tmp_path / "config.yaml"
    config.write_text(_config(getattr(request, "param", 30.0)))
    with proxy_process(config, {}, tmp_path / "proxy.log") as proxy:
        yield proxy


def _client(proxy: ProxyProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.base}/v1", api_key="sk-any", max_retries=0, timeout=30)


class Reader(threading.Thread):
    """Reads a stream with the openai SDK; ``started`` once its first chunk is in."""

    def __init__(self, proxy: ProxyProcess, model: str = "demo") -> None:
        super().__init__(daemon=True)
        self.model = model
        self.client = _client(proxy)
        self.started = threading.Event()
        self.text = ""
        self.finish: str | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            stream = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": WORDS}], stream=True
            )
            for chunk in stream:
                self.started.set()
                for choice in chunk.choices:
                    self.text += choice.delta.content or ""
                    self.finish = choice.finish_reason or self.finish
        except Exception as exc:
            self.error = exc
        finally:
            self.started.set()
            self.client.close()


def _stop_mid_stream(proxy: ProxyProcess) -> Reader:
    reader = Reader(proxy)
    reader.start()
    assert reader.started.wait(10)
    proxy.process.send_signal(signal.SIGTERM)
    return reader


def test_sigterm_lets_a_running_stream_finish_and_turns_new_requests_away(serve: ProxyProcess) -> None:
    reader = _stop_mid_stream(serve)
    deadline = time.monotonic() + 2
    while httpx.get(f"{serve.base}/health/ready").status_code != 503:  # the load balancer's cue
        assert time.monotonic() < deadline, "ready did not turn 503"
    assert httpx.get(f"{serve.base}/health/ready").json() == {"status": "draining"}
    with _client(serve) as client, pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 503
    assert refused.value.code == "server_shutting_down"
    assert refused.value.response.headers["retry-after"] == "1"
    reader.join(20)
    assert reader.error is None
    assert reader.text.split() == WORDS.split()  # the whole answer
    assert reader.finish == "stop"
    serve.process.wait(10)  # then it exits by itself
    log = serve.log.read_text()
    assert "Traceback" not in log
    assert "drain: done" in log


@pytest.mark.parametrize("serve", [0.5], indirect=True)
def test_a_stream_that_outlasts_drain_s_ends_with_an_error_event(serve: ProxyProcess) -> None:
    started = time.monotonic()
    reader = _stop_mid_stream(serve)
    reader.join(20)
    assert isinstance(reader.error, openai.APIError)  # the SDK raises on the error event
    assert "shutting down" in reader.error.message
    assert 0 < len(reader.text.split()) < 60
    assert reader.finish is None
    serve.process.wait(10)
    assert time.monotonic() - started < 8
    log = serve.log.read_text()
    assert "Traceback" not in log
    assert '"code":"server_shutting_down"' in log  # the request log says how it ended


@pytest.mark.parametrize("serve", [0.5], indirect=True)
def test_a_request_that_outlasts_drain_s_before_its_answer_gets_a_503(serve: ProxyProcess) -> None:
    outcome: list[object] = []

    def ask() -> None:
        with _client(serve) as client:
            try:
                client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}])
            except openai.APIStatusError as exc:
                outcome.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(0.5)  # the request is waiting on its 5 s upstream
    serve.process.send_signal(signal.SIGTERM)
    thread.join(10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], openai.InternalServerError)
    assert outcome[0].status_code == 503
    assert outcome[0].code == "server_shutting_down"
    serve.process.wait(10)
    assert "Traceback" not in serve.log.read_text()


def test_a_second_ctrl_c_exits_without_waiting_for_the_drain(serve: ProxyProcess) -> None:
    reader = Reader(serve, model="crawl")  # drain_s 30, a 30 s answer
    reader.start()
    assert reader.started.wait(10)
    pressed = time.monotonic()
    serve.process.send_signal(signal.SIGINT)  # the drain begins
    time.sleep(0.3)
    serve.process.send_signal(signal.SIGINT)  # again: uvicorn's own shutdown, up to 5 s, then cut
    serve.process.wait(15)
    assert time.monotonic() - pressed < 9
    reader.join(10)
    assert reader.finish is None  # the answer was cut, not waited for
