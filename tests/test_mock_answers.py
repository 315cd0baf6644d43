"""The offline ``mock`` provider answers tool calls, structured outputs and ``n`` > 1, in every API,
so an agent or a structured-output client can be tried with no keys."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import anthropic
import httpx2
import openai
import pytest
from litestar.testing import AsyncTestClient

from providers.mock_answers import example, plan
from router.app import create_app
from router.config import settings_from_dict

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1},
            },
            "required": ["city", "unit"],
        },
    },
}
SCHEMA: Any = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "tags", "ok"],
    "additionalProperties": False,
}


@asynccontextmanager
async def clients() -> AsyncIterator[tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]]:
    settings = settings_from_dict(
        {
            "providers": {"demo": {"type": "mock"}},
            "models": {"demo": {"targets": [{"provider": "demo", "model": "echo"}]}},
        },
        {},
    )
    served = create_app(settings)
    transport = httpx2.ASGITransport(cast(Any, served))
    async with AsyncTestClient(app=served), httpx2.AsyncClient(transport=transport) as http:
        yield (
            openai.AsyncOpenAI(base_url="http://sb/v1", api_key="none", http_client=http),
            anthropic.AsyncAnthropic(base_url="http://sb", api_key="none", http_client=http),
        )


def test_examples_satisfy_their_schemas() -> None:
    value = example(WEATHER["function"]["parameters"])
    assert value == {"city": "example", "unit": "celsius", "days": 1}
    assert example(SCHEMA) == {"name": "example", "tags": ["example"], "ok": True}
    assert example({"anyOf": [{"type": "null"}, {"type": "string"}]}) is None
    assert example({"type": ["null", "number"], "minimum": 2.5}) == 2.5
    assert example({"type": "string", "format": "date-time"}) == "2026-01-01T00:00:00Z"
    assert example({"type": "string", "minLength": 12}) == "examplexxxxx"
    assert example({"const": 7}) == 7


def test_a_tool_result_gets_a_sentence_back() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert plan({"messages": messages, "tools": [WEATHER]}, "x").text == "The tool get_weather returned: sunny"
    assert plan({"messages": messages[:1], "tools": [WEATHER], "tool_choice": "none"}, "x").text == "x"


async def test_chat_tools_structured_outputs_and_n() -> None:
    async with clients() as (client, _):
        hello: Any = [{"role": "user", "content": "weather in Paris?"}]
        called = await client.chat.completions.create(model="demo", messages=hello, tools=[WEATHER])
        (call,) = called.choices[0].message.tool_calls or []
        assert called.choices[0].finish_reason == "tool_calls"
        assert call.type == "function"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "example", "unit": "celsius", "days": 1}
        followed: Any = [
            *hello,
            called.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ]
        final = await client.chat.completions.create(model="demo", messages=followed, tools=[WEATHER])
        assert final.choices[0].message.content == "The tool get_weather returned: sunny"
        structured = await client.chat.completions.create(
            model="demo",
            messages=hello,
            response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": SCHEMA}},
        )
        assert json.loads(structured.choices[0].message.content or "") == {
            "name": "example",
            "tags": ["example"],
            "ok": True,
        }
        as_object = await client.chat.completions.create(
            model="demo", messages=hello, response_format={"type": "json_object"}
        )
        assert json.loads(as_object.choices[0].message.content or "") == {"answer": "weather in Paris?"}
        several = await client.chat.completions.create(model="demo", messages=hello, n=3)
        assert [c.index for c in several.choices] == [0, 1, 2]
        stream = await client.chat.completions.create(model="demo", messages=hello, tools=[WEATHER], stream=True, n=2)
        arguments: dict[int, str] = {}
        async for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    arguments[choice.index] = arguments.get(choice.index, "") + (
                        delta.function.arguments or "" if delta.function else ""
                    )
        assert {i: json.loads(a) for i, a in arguments.items()} == {
            0: {"city": "example", "unit": "celsius", "days": 1}
        } | {1: {"city": "example", "unit": "celsius", "days": 1}}


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_and_messages_get_tool_calls_offline(stream: bool) -> None:
    async with clients() as (client, claude):
        tool: Any = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
        response: Any
        message: Any
        if stream:
            async with client.responses.stream(model="demo", input="weather?", tools=[tool]) as events:
                response = await events.get_final_response()
        else:
            response = await client.responses.create(model="demo", input="weather?", tools=[tool])
        (call,) = [item for item in response.output if item.type == "function_call"]
        assert json.loads(call.arguments)["unit"] == "celsius"
        anthropic_tool: Any = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
        if stream:
            async with claude.messages.stream(
                model="demo", max_tokens=100, messages=[{"role": "user", "content": "weather?"}], tools=[anthropic_tool]
            ) as events:
                message = await events.get_final_message()
        else:
            message = await claude.messages.create(
                model="demo", max_tokens=100, messages=[{"role": "user", "content": "weather?"}], tools=[anthropic_tool]
            )
        (use,) = [block for block in message.content if block.type == "tool_use"]
        assert use.input == {"city": "example", "unit": "celsius", "days": 1}
        assert message.stop_reason == "tool_use"


def test_a_clients_schema_cannot_make_the_mock_allocate_without_bound() -> None:
    huge = example({"type": "array", "items": {"type": "string", "minLength": 10**9}, "minItems": 10**9})
    assert len(huge) == 16
    assert all(len(s) == 256 for s in huge)
    assert example({"type": "array", "items": {"type": "integer", "minimum": 1e400}, "minItems": "x"}) == [1]
