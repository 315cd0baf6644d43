"""End to end: the real server (``python -m router serve``) on 127.0.0.1, driven by the official
openai SDK, in front of a fake upstream on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.fakes import FakeUpstream, running_upstream
from tests.live import ROOT, free_port, running_proxy

UPSTREAM_KEY = "sk-upstream-e2e-SECRET"
CLIENT_KEY = "sk-client-not-forwarded"


CONFIG = """
providers:
  up: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", api_key: "${{E2E_KEY}}"}}
  demo: {{type: mock}}
models:
  gpt: {{targets: [{{provider: up, model: fast}}]}}
  tools: {{targets: [{{provider: up, model: tools}}]}}
  slow: {{targets: [{{provider: up, model: slow}}]}}
  endless: {{targets: [{{provider: up, model: endless}}]}}
  broken: {{targets: [{{provider: up, model: broken}}]}}
  leaky: {{targets: [{{provider: up, model: leaky}}]}}
  hang: {{targets: [{{provider: up, model: hang}}]}}
  demo: {{targets: [{{provider: demo, model: echo}}]}}
  embed: {{targets: [{{provider: up, model: text-embedding-3-small}}]}}
"""


class Proxy:
    def __init__(self, base_url: str, fake: FakeUpstream, log: Path) -> None:
        self.base_url = base_url
        self.fake = fake
        self.log = log

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("e2e")
    log = tmp / "proxy.log"
    with running_upstream() as fake:
        config = tmp / "config.yaml"
        config.write_text(CONFIG.format(port=fake.port))
        with running_proxy(config, {"E2E_KEY": UPSTREAM_KEY}, log) as base:
            yield Proxy(f"{base}/v1", fake, log)
    assert UPSTREAM_KEY not in log.read_text(), "the provider key reached the log"


HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


def test_sync_completion(proxy: Proxy) -> None:
    raw = proxy.client().chat.completions.with_raw_response.create(model="gpt", messages=HELLO)
    completion = raw.parse()
    assert raw.headers["x-switchboard-target"] == "up/fast"
    assert completion.choices[0].message.content == "Hello! How can I help?"
    assert completion.model == "gpt-4o-mini-2024-07-18"  # what the upstream reports
    assert completion.service_tier == "default"
    assert completion.choices[0].message.model_dump()["reasoning_content"] == "The user greets me."
    assert completion.usage is not None
    assert completion.usage.total_tokens == 16
    seen = proxy.fake.seen[-1]
    assert seen.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in str(seen.headers)
    assert seen.body["model"] == "fast"


def test_sync_stream_with_usage(proxy: Proxy) -> None:
    stream = proxy.client().chat.completions.create(
        model="gpt",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello!"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 11
    assert {c.id for c in chunks} == {"chatcmpl-CbX2"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_sync_stream_without_usage(proxy: Proxy) -> None:
    chunks = list(proxy.client().chat.completions.create(model="gpt", messages=HELLO, stream=True))
    assert all(c.usage is None for c in chunks)  # Switchboard asked for usage, and kept it to itself
    assert proxy.fake.seen[-1].body.get("stream_options") == {"include_usage": True}


async def test_async_completion_and_stream(proxy: Proxy) -> None:
    client = proxy.async_client()
    completion = await client.chat.completions.create(model="gpt", messages=HELLO)
    assert completion.choices[0].message.content == "Hello! How can I help?"
    stream = await client.chat.completions.create(model="gpt", messages=HELLO, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello!"
    await client.close()


WEATHER_TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": {arg: {"type": "string"}}}},
    }
    for name, arg in (("get_weather", "city"), ("get_time", "tz"))
]


def test_stream_helper_reassembles_parallel_tool_calls(proxy: Proxy) -> None:
    with proxy.client().chat.completions.stream(
        model="tools",
        messages=HELLO,
        tools=WEATHER_TOOLS,
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_abc", "get_weather", '{"city": "Paris"}'),
        ("call_def", "get_time", '{"tz": "CET"}'),
    ]
    assert "tool_calls.function.arguments.done" in events


def test_tool_call_completion(proxy: Proxy) -> None:
    completion = proxy.client().chat.completions.create(model="tools", messages=HELLO, tools=WEATHER_TOOLS)
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]


def test_demo_model_through_the_real_server(proxy: Proxy) -> None:
    chunks = list(
        proxy.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "echo me please"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo me please"


def test_errors_reach_the_sdk_as_its_exceptions(proxy: Proxy) -> None:
    client = proxy.client()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=HELLO)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt", messages=HELLO, extra_body={"temperature": "hot"})
    assert bad.value.param == "temperature"


def test_mid_stream_error_raises_in_the_sdk(proxy: Proxy) -> None:
    stream = proxy.client().chat.completions.create(model="broken", messages=HELLO, stream=True)
    iterator = iter(stream)
    assert next(iterator).choices[0].delta.content == "Hel"
    with pytest.raises(openai.APIError, match="model crashed"):
        next(iterator)


def test_an_upstream_that_echoes_the_key_leaks_it_nowhere(proxy: Proxy) -> None:
    client = proxy.client()
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="leaky", messages=HELLO)
    assert refused.value.status_code == 502
    assert UPSTREAM_KEY not in str(refused.value.body)
    assert UPSTREAM_KEY not in refused.value.response.text
    stream = client.chat.completions.create(model="leaky", messages=HELLO, stream=True)
    iterator = iter(stream)
    next(iterator)
    with pytest.raises(openai.APIError) as mid_stream:
        next(iterator)
    assert UPSTREAM_KEY not in str(mid_stream.value.body)
    assert "bad key" in mid_stream.value.message
    deadline = time.monotonic() + 5  # log records reach the file through a queue thread
    while "bad key" not in (log := proxy.log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "bad key" in log, "the failures were not logged at all"
    assert UPSTREAM_KEY not in log
    # The module fixture checks again at teardown, after every test has run.


def test_each_event_is_flushed_as_it_arrives(proxy: Proxy) -> None:
    fake = proxy.fake
    fake.release.clear()
    fake.slow_finished.clear()
    stream = proxy.client().chat.completions.create(model="slow", messages=HELLO, stream=True)
    iterator = iter(stream)
    first = next(iterator)
    second = next(iterator)
    # The upstream is still holding the rest: these two chunks were not buffered behind it.
    assert not fake.slow_finished.is_set()
    assert first.choices[0].delta.role == "assistant"
    assert second.choices[0].delta.content == "Hel"
    fake.release.set()
    rest = list(iterator)
    assert fake.slow_finished.is_set()
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices) == "lo!"


def test_client_disconnect_cancels_the_upstream_within_a_second(proxy: Proxy) -> None:
    fake = proxy.fake
    fake.disconnected.clear()
    body = {"model": "endless", "messages": HELLO, "stream": True}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{proxy.base_url}/chat/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        received = [line for _, line in zip(range(6), lines, strict=False)]
        assert any(line.startswith("data: {") for line in received)
        closed_at = time.monotonic()
        r.close()
    assert fake.disconnected.wait(3), "the upstream never saw the disconnect"
    assert fake.disconnected_at - closed_at < 1.0
    sent = fake.endless_sent
    time.sleep(0.3)
    assert fake.endless_sent == sent  # nothing is generated for a client that left


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_before_the_first_byte_cancels_the_upstream(proxy: Proxy, stream: bool) -> None:
    fake = proxy.fake
    fake.disconnected.clear()
    fake.hung.clear()
    body = {"model": "hang", "messages": HELLO, "stream": stream}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=httpx.Timeout(10, read=0.5)) as client:
        client.post(f"{proxy.base_url}/chat/completions", json=body)
    gave_up_at = time.monotonic()
    assert fake.hung.is_set(), "the request never reached the upstream"
    assert fake.disconnected.wait(3), "the upstream call outlived its client"
    assert fake.disconnected_at - gave_up_at < 1.0


def test_workers_flag_starts_several_processes(tmp_path: Path) -> None:
    config = tmp_path / "demo.yaml"
    config.write_text("providers: {d: {type: mock}}\nmodels: {demo: {targets: [{provider: d, model: echo}]}}\n")
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=5)
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = client.chat.completions.create(model="demo", messages=HELLO)
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "workers did not start"
                time.sleep(0.1)
        assert answer.choices[0].message.content == "Hello"
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=15)
    assert out.count(b"Started server process") == 2, out.decode(errors="replace")


@pytest.mark.parametrize("model", ["embed", "demo"])
def test_embeddings_in_both_encodings(proxy: Proxy, model: str) -> None:
    """The SDK asks for base64 unless told otherwise, and decodes it; floats come as they are."""
    client = proxy.client()
    default = client.embeddings.create(model=model, input=["one", "two"])
    floats = client.embeddings.create(model=model, input=["one", "two"], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    for a, b in zip(default.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    if model == "embed":  # passed through: what the upstream sent, base64 asked of it by the SDK
        assert floats.data[0].embedding == [0.125, -0.25, 0.5]
        assert proxy.fake.seen[-2].body["encoding_format"] == "base64"
        assert proxy.fake.seen[-2].body["model"] == "text-embedding-3-small"
        assert proxy.fake.seen[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert floats.usage.prompt_tokens > 0


def test_the_anthropic_sdk_through_a_live_switchboard(proxy: Proxy) -> None:
    """Anthropic's SDK, base URL at Switchboard, answered by the OpenAI-format upstream."""
    import anthropic

    client = anthropic.Anthropic(base_url=proxy.base_url.removesuffix("/v1"), api_key=CLIENT_KEY, max_retries=0)
    message = client.messages.create(model="gpt", max_tokens=50, messages=[{"role": "user", "content": "Hello"}])
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello! How can I help?"
    assert message.stop_reason == "end_turn"
    with client.messages.stream(model="gpt", max_tokens=50, messages=[{"role": "user", "content": "Hello"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert client.messages.count_tokens(model="gpt", messages=[{"role": "user", "content": "Hello"}]).input_tokens > 0
    seen = proxy.fake.seen[-1]
    assert seen.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in str(seen.headers)


def test_responses_through_a_live_switchboard(proxy: Proxy) -> None:
    """The openai SDK's Responses API: a function call, its output continued by
    previous_response_id, and the stream helper, answered by the Chat Completions upstream."""
    from openai.types.responses import FunctionToolParam

    tool: FunctionToolParam = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": False,
    }
    client = proxy.client()
    first = client.responses.create(model="tools", input="Weather in Paris?", tools=[tool])
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls
    assert calls[0].call_id != calls[0].id
    second = client.responses.create(
        model="gpt",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny"}],
    )
    assert second.output_text == "Hello! How can I help?"
    sent = proxy.fake.seen[-1].body["messages"]
    assert isinstance(sent, list)
    assert sent[0] == {"role": "user", "content": "Weather in Paris?"}
    assert sent[-1] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "Sunny"}
    with client.responses.stream(model="tools", input="Weather?", tools=[tool]) as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output if item.type == "function_call"]
    assert final.usage is None  # this upstream stream reports none: unknown, not zero
