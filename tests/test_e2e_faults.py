"""Fault injection end to end: the official openai SDK against the real server, in front of a fake
upstream on loopback that fails in every way we can name. Each alias `fo-<fault>` tries the faulty
model first and a healthy one second; the test checks what the client sees and how many calls
the faulty model received."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes import FAULTS, FakeUpstream, running_upstream
from tests.live import free_port, running_proxy

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


def config(port: int, closed_port: int) -> str:
    models = "\n".join(
        f"  fo-{fault}: {{targets: [{{provider: up, model: {fault}}}, {{provider: up, model: fast}}]}}"
        for fault in FAULTS
    )
    return f"""
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", api_key: sk-faults}}
  down: {{type: openai, base_url: "http://127.0.0.1:{closed_port}/v1", api_key: sk-faults}}
models:
{models}
  fo-refused: {{targets: [{{provider: down, model: x}}, {{provider: up, model: fast}}]}}
resilience:
  retry: {{max_attempts: 2, initial_backoff_s: 0.01, max_backoff_s: 0.05, max_retry_after_s: 1}}
  breaker: {{fail_max: 1000}}
  timeouts: {{first_token_s: 0.5, attempt_s: 0.5, idle_s: 5, total_s: 20}}
"""


@dataclass
class Env:
    client: openai.OpenAI
    fake: FakeUpstream
    log: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("faults")
    with running_upstream() as fake:
        path = tmp / "config.yaml"
        path.write_text(config(fake.port, free_port()))
        with running_proxy(path, {}, tmp / "proxy.log") as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-client", max_retries=0, timeout=20)
            yield Env(client, fake, tmp / "proxy.log")


# fault, calls the faulty model gets, upstream calls the client is told about (x-switchboard-attempts)
RECOVERED = [
    ("fail500", 2),
    ("fail503", 2),
    ("r429short", 2),  # Retry-After of 50 ms: waited for, retried
    ("r429long", 1),  # Retry-After of 120 s: moved on at once
    ("auth401", 1),
    ("hang", 1),  # timed out, not retried
    ("slowfirst", 1),
    ("malformed", 1),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("fault", "calls"), RECOVERED)
def test_the_client_never_sees_a_failure_a_healthy_target_can_cover(
    env: Env, fault: str, calls: int, stream: bool
) -> None:
    before, healthy_before = env.fake.calls[fault], env.fake.calls["fast"]
    raw = env.client.chat.completions.with_raw_response.create(model=f"fo-{fault}", messages=HELLO, stream=stream)
    assert raw.headers["x-switchboard-target"] == "up/fast"
    assert raw.headers["x-switchboard-attempts"] == str(calls + 1)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)  # type: ignore[union-attr]
        assert text == "Hello!"
    else:
        assert raw.parse().choices[0].message.content == "Hello! How can I help?"  # type: ignore[union-attr]
    assert env.fake.calls[fault] - before == calls
    assert env.fake.calls["fast"] - healthy_before == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_connection_refused_fails_over(env: Env, stream: bool) -> None:
    raw = env.client.chat.completions.with_raw_response.create(model="fo-refused", messages=HELLO, stream=stream)
    assert raw.headers["x-switchboard-target"] == "up/fast"
    assert raw.headers["x-switchboard-attempts"] == "3"  # refused twice (retried), then the healthy one


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_clients_bad_request_is_answered_with_one_upstream_call(env: Env, stream: bool) -> None:
    before, healthy_before = env.fake.calls["bad400"], env.fake.calls["fast"]
    with pytest.raises(openai.BadRequestError) as info:
        env.client.chat.completions.create(model="fo-bad400", messages=HELLO, stream=stream)
    assert "fake upstream says 400" in info.value.message
    assert env.fake.calls["bad400"] - before == 1
    assert env.fake.calls["fast"] == healthy_before


def test_a_stream_that_dies_after_its_first_chunk_ends_with_an_error_and_is_not_retried(env: Env) -> None:
    before, healthy_before = env.fake.calls["diemid"], env.fake.calls["fast"]
    iterator = iter(env.client.chat.completions.create(model="fo-diemid", messages=HELLO, stream=True))
    assert next(iterator).choices[0].delta.content == "Hel"
    with pytest.raises(openai.APIError):
        next(iterator)
    assert env.fake.calls["diemid"] - before == 1
    assert env.fake.calls["fast"] == healthy_before  # nothing is silently retried after the first chunk


def test_a_non_streamed_answer_cut_short_fails_over(env: Env) -> None:
    before = env.fake.calls["diemid"]
    raw = env.client.chat.completions.with_raw_response.create(model="fo-diemid", messages=HELLO)
    assert raw.headers["x-switchboard-target"] == "up/fast"
    assert env.fake.calls["diemid"] - before == 1


def test_every_failover_decision_is_one_log_line(env: Env) -> None:
    log = env.log.read_text()
    assert "failover model=fo-hang target=up/hang" in log
    assert "sk-faults" not in log
