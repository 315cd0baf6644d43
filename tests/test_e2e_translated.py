"""End to end across providers: the official openai SDK, the real server, fake Anthropic and Gemini
APIs on loopback. The client must not be able to tell who answered, except by `model` and our headers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolParam

from tests.fakes import (
    FakeAnthropic,
    FakeGemini,
    FakeUpstream,
    running_anthropic,
    running_gemini,
    running_upstream,
)
from tests.live import running_proxy

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]
TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
    for name in ("get_weather", "get_time")
]


@dataclass
class Env:
    client: openai.OpenAI
    anthropic: FakeAnthropic
    openai_fake: FakeUpstream
    gemini: FakeGemini


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("anthropic")
    with running_anthropic() as anthropic, running_upstream() as up, running_gemini() as gemini:
        path = tmp / "config.yaml"
        path.write_text(
            f"""
providers:
  claude: {{type: anthropic, base_url: "http://127.0.0.1:{anthropic.port}", api_key: sk-ant-e2e}}
  up: {{type: openai, base_url: "http://127.0.0.1:{up.port}/v1", api_key: sk-up}}
  gem: {{type: gemini, base_url: "http://127.0.0.1:{gemini.port}", api_key: gemini-e2e-key}}
models:
  gemini: {{targets: [{{provider: gem, model: gemini-2.5-flash}}]}}
  cross-gemini: {{targets: [{{provider: up, model: fail500}}, {{provider: gem, model: gemini-2.5-flash}}]}}
  claude: {{targets: [{{provider: claude, model: claude-sonnet-4-5}}]}}
  cross: {{targets: [{{provider: up, model: fail500}}, {{provider: claude, model: claude-sonnet-4-5}}]}}
resilience:
  retry: {{initial_backoff_s: 0.01}}
"""
        )
        with running_proxy(path, {}, tmp / "proxy.log") as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-client", max_retries=0, timeout=20)
            yield Env(client, anthropic, up, gemini)


def test_stream_helper_reassembles_the_exact_tool_call_json(env: Env) -> None:
    with env.client.chat.completions.stream(model="claude", messages=HELLO, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", '{"city": "Paris"}'),
        ("toolu_02B", "get_time", '{"tz": "CET"}'),
    ]
    assert choice.message.content == "Checking both."
    sent = env.anthropic.seen[-1]
    assert sent.headers["x-api-key"] == "sk-ant-e2e"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent.headers
    tools = sent.body["tools"]
    assert isinstance(tools, list)
    assert [t["name"] for t in tools] == ["get_weather", "get_time"]


def test_include_usage_gives_correct_totals(env: Env) -> None:
    chunks = list(
        env.client.chat.completions.create(
            model="claude", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello! How are you?"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1025, 15, 1040)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1000


def test_a_whole_answer(env: Env) -> None:
    completion = env.client.chat.completions.create(model="claude", messages=HELLO, max_tokens=50)
    assert completion.choices[0].message.content == "Hello! How can I help you today?"
    assert completion.model == "claude-sonnet-4-5-20250929"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 2122
    assert env.anthropic.seen[-1].body["max_tokens"] == 50


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_cross_provider_failover_is_invisible_but_for_model_and_headers(env: Env, stream: bool) -> None:
    raw = env.client.chat.completions.with_raw_response.create(model="cross", messages=HELLO, stream=stream)
    assert raw.headers["x-switchboard-target"] == "claude/claude-sonnet-4-5"
    assert raw.headers["x-switchboard-attempts"] == "3"  # the OpenAI target twice, then Anthropic
    parsed = raw.parse()
    if isinstance(parsed, ChatCompletion):
        assert parsed.choices[0].message.content == "Hello! How can I help you today?"
        assert parsed.object == "chat.completion"
    else:
        chunks = list(parsed)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello! How are you?"
        assert chunks[0].model == "claude-sonnet-4-5-20250929"
    assert isinstance(parsed, ChatCompletion) is not stream


def test_parameters_anthropic_cannot_honour_are_named(env: Env) -> None:
    raw = env.client.chat.completions.with_raw_response.create(
        model="claude", messages=HELLO, seed=7, logprobs=True, temperature=0.3
    )
    assert set(raw.headers["x-switchboard-dropped-params"].split(", ")) == {"seed", "logprobs"}
    assert "seed" not in env.anthropic.seen[-1].body
    assert env.anthropic.seen[-1].body["temperature"] == 0.3


def test_gemini_stream_helper_reassembles_whole_function_calls(env: Env) -> None:
    with env.client.chat.completions.stream(model="gemini", messages=HELLO, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", '{"city": "Paris"}'),
        ("get_time", '{"tz": "CET"}'),
    ]
    assert len({c.id for c in calls}) == 2
    assert env.gemini.paths[-1] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert env.gemini.seen[-1].headers["x-goog-api-key"] == "gemini-e2e-key"


def test_gemini_usage_totals_and_text(env: Env) -> None:
    chunks = list(
        env.client.chat.completions.create(
            model="gemini", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world!"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 14, 19)
    completion = env.client.chat.completions.create(model="gemini", messages=HELLO)
    assert completion.choices[0].message.content == "Hello there! How can I help?"
    assert completion.model == "gemini-2.5-flash"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_failover_from_openai_to_gemini(env: Env, stream: bool) -> None:
    raw = env.client.chat.completions.with_raw_response.create(model="cross-gemini", messages=HELLO, stream=stream)
    assert raw.headers["x-switchboard-target"] == "gem/gemini-2.5-flash"
    parsed = raw.parse()
    if isinstance(parsed, ChatCompletion):
        assert parsed.choices[0].message.content == "Hello there! How can I help?"
    else:
        assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) == "Hello, world!"


@pytest.mark.parametrize("streamed", [False, True])
def test_an_agents_sdk_agent_uses_tools_answered_by_anthropic(env: Env, streamed: bool) -> None:
    """The OpenAI Agents SDK (Responses API by default) runs a tool-using agent through Switchboard;
    the model's turns come from the Anthropic-format upstream."""
    import asyncio

    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # the SDK would otherwise send traces to OpenAI
    called: list[str] = []

    @function_tool
    def get_weather(city: str, unit: str = "celsius") -> str:
        """The weather in a city."""
        called.append(f"weather {city} {unit}")
        return f"Sunny in {city}, 21 degrees {unit}"

    @function_tool
    def get_time(tz: str) -> str:
        """The time in a time zone."""
        called.append(f"time {tz}")
        return f"12:00 {tz}"

    client = openai.AsyncOpenAI(base_url=str(env.client.base_url), api_key="sk-client", max_retries=0)
    agent = Agent(
        name="weather",
        instructions="Use the tools.",
        tools=[get_weather, get_time],
        model=OpenAIResponsesModel(model="claude", openai_client=client),
    )

    async def run() -> str:
        try:
            if streamed:
                result = Runner.run_streamed(agent, "Weather and time in Paris?")
                async for _ in result.stream_events():
                    pass
                return str(result.final_output)
            return str((await Runner.run(agent, "Weather and time in Paris?")).final_output)
        finally:
            await client.close()  # its connections, before the loop closes

    before = len(env.anthropic.seen)
    final = asyncio.run(run())
    assert called == ["weather Paris celsius", "time CET"]
    assert final == ("Hello! How are you?" if streamed else "Hello! How can I help you today?")  # the fixtures' texts
    sent = env.anthropic.seen[before:]
    assert len(sent) == 2  # the call, then the answer to its results
    messages = sent[1].body["messages"]
    assert isinstance(messages, list)
    results = [b for b in messages[-1]["content"] if b["type"] == "tool_result"]
    assert [r["content"] for r in results] == ["Sunny in Paris, 21 degrees celsius", "12:00 CET"]
