"""``/v1/responses``: the openai SDK's ``responses.create`` and ``responses.stream`` with a function
tool, ``previous_response_id`` (in memory and across a restart through the database),
``GET``/``DELETE``, answered by OpenAI-format and Anthropic-format upstreams; every answer and
event held strictly to the openai package's own types."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import httpx2
import openai
import pydantic
import pytest
from litestar.testing import AsyncTestClient
from openai.types.responses import Response, ResponseStreamEvent

from router.app import create_app
from router.config import settings_from_dict
from tests.conformance import check_error
from tests.conftest import fixture_bytes
from tests.test_keys import ADMIN, MASTER, bearer
from tests.test_messages import TOOL_ANSWER

WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
_events = pydantic.TypeAdapter(ResponseStreamEvent)


class Upstreams:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        stream = body.get("stream") is True
        if request.url.host == "claude.test":
            if stream:
                return httpx.Response(
                    200,
                    headers={"content-type": "text/event-stream"},
                    content=fixture_bytes("anthropic", "stream_tools.sse"),
                )
            return httpx.Response(
                200,
                content=fixture_bytes(
                    "anthropic", "message_tool_use.json" if body.get("tools") else "message_text.json"
                ),
            )
        if stream:
            name = "stream_tools.sse" if body.get("tools") else "stream_text.sse"
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=fixture_bytes("openai", name)
            )
        if body.get("tools"):
            return httpx.Response(200, json=TOOL_ANSWER)
        if body.get("max_completion_tokens") == 1:
            answer = json.loads(fixture_bytes("openai", "completion.json"))
            answer["choices"][0]["finish_reason"] = "length"
            return httpx.Response(200, json=answer)
        return httpx.Response(200, content=fixture_bytes("openai", "completion.json"))


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "oai": {"type": "openai", "base_url": "http://oai.test/v1", "api_key": "sk-oai"},
            "claude": {"type": "anthropic", "base_url": "http://claude.test", "api_key": "sk-ant"},
        },
        "models": {
            "gpt": {"targets": [{"provider": "oai", "model": "gpt-4o"}]},
            "claude": {"targets": [{"provider": "claude", "model": "claude-sonnet-4-5"}]},
        },
        **extra,
    }


@asynccontextmanager
async def sdk(
    tmp_path: Path, upstreams: Upstreams | None = None, api_key: str = "none", **extra: Any
) -> AsyncIterator[tuple[openai.AsyncOpenAI, Upstreams, AsyncTestClient[Any]]]:
    upstreams = upstreams or Upstreams()
    served = create_app(settings_from_dict(config(tmp_path, **extra), {}), transport=httpx.MockTransport(upstreams))
    transport = httpx2.ASGITransport(cast(Any, served))
    async with AsyncTestClient(app=served) as http, httpx2.AsyncClient(transport=transport) as http_client:
        client = openai.AsyncOpenAI(
            base_url="http://switchboard/v1", api_key=api_key, http_client=http_client, max_retries=0
        )
        yield client, upstreams, http


def strict_events(body: bytes) -> list[dict[str, Any]]:
    events = []
    for frame in body.split(b"\n\n"):
        if not frame.strip():
            continue
        name, data = frame.split(b"\n", 1)
        event = json.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + event["type"].encode()
        _events.validate_python(event, strict=True)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


async def test_create_answers_a_strict_response(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, upstreams, _):
        raw = await client.responses.with_raw_response.create(
            model="gpt", input="Hello", instructions="Be brief.", max_output_tokens=50
        )
        Response.model_validate_json(raw.http_response.content, strict=True)
        response = raw.parse()
        assert response.status == "completed"
        assert response.output_text == "Hello! How can I help?"
        assert response.usage is not None
        assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (9, 7, 16)
        assert response.instructions == "Be brief."
        sent = upstreams.bodies[-1]
        assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
        assert sent["max_completion_tokens"] == 50


async def test_a_function_tool_call_and_its_output_continue_by_previous_response_id(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, upstreams, _):
        first = await client.responses.create(
            model="gpt", input="Weather in Paris?", tools=[WEATHER_TOOL], instructions="Tools first."
        )
        (call,) = [item for item in first.output if item.type == "function_call"]
        assert (call.name, call.call_id, json.loads(call.arguments)) == ("get_weather", "call_1", {"city": "Paris"})
        assert call.id != call.call_id
        assert upstreams.bodies[-1]["tools"] == [
            {
                "type": "function",
                "function": {k: WEATHER_TOOL[k] for k in ("name", "description", "parameters", "strict")},
            }
        ]
        second = await client.responses.create(
            model="gpt",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"}],
        )
        assert second.output_text == "Hello! How can I help?"
        assert second.previous_response_id == first.id
        assert upstreams.bodies[-1]["messages"] == [  # the instructions are not carried over
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21C"},
        ]


async def test_the_stream_is_typed_events_in_order(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, _, http):
        async with client.responses.stream(model="gpt", input="Weather?", tools=[WEATHER_TOOL]) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        assert kinds[0] == "response.created"
        assert kinds[-1] == "response.completed"
        calls = [item for item in final.output if item.type == "function_call"]
        assert [(c.name, c.call_id) for c in calls] == [("get_weather", "call_abc"), ("get_time", "call_def")]
        assert json.loads(calls[0].arguments) == {"city": "Paris"}
        raw = await http.post("/v1/responses", json={"model": "gpt", "input": "Hello", "stream": True})
        events = strict_events(raw.content)
        added = [e for e in events if e["type"] == "response.output_item.added"]
        assert [e["output_index"] for e in added] == list(range(len(added)))
        deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        (done,) = [e for e in events if e["type"] == "response.output_text.done"]
        assert done["text"] == deltas
        completed = events[-1]["response"]
        Response.model_validate(completed, strict=True)
        assert completed["usage"]["input_tokens"] == 9


async def test_an_anthropic_upstream_answers_responses(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, upstreams, _):
        response = await client.responses.create(model="claude", input="Hello")
        assert response.output_text == "Hello! How can I help you today?"
        assert upstreams.bodies[-1]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
        async with client.responses.stream(model="claude", input="Weather?", tools=[WEATHER_TOOL]) as stream:
            final = await stream.get_final_response()
        assert [item.type for item in final.output if item.type == "function_call"]


async def test_incomplete_answers_say_why(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, _, _):
        response = await client.responses.create(model="gpt", input="Hello", max_output_tokens=1)
        assert response.status == "incomplete"
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"


async def test_stored_responses_are_read_deleted_and_not_kept_when_asked(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, _, http):
        kept = await client.responses.create(model="gpt", input="Hello")
        assert (await client.responses.retrieve(kept.id)).output_text == kept.output_text
        assert (await http.get(f"/responses/{kept.id}")).status_code == 200  # without /v1 too
        await client.responses.delete(kept.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(kept.id)
        unkept = await client.responses.create(model="gpt", input="Hello", store=False)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(unkept.id)
        with pytest.raises(openai.BadRequestError) as unknown:
            await client.responses.create(model="gpt", input="x", previous_response_id="resp_nope")
        assert (unknown.value.code, unknown.value.param) == ("previous_response_not_found", "previous_response_id")
        error = await http.post(
            "/v1/responses", json={"model": "gpt", "input": "x", "previous_response_id": "resp_nope"}
        )
        check_error(error.content)


async def test_responses_survive_a_restart_and_belong_to_their_key(tmp_path: Path) -> None:
    extra: dict[str, Any] = {"auth": {"master_key": MASTER}, "database": {"url": f"sqlite:///{tmp_path / 'r.db'}"}}
    async with sdk(tmp_path, **extra) as (_, _, http):
        a = (await http.post("/admin/keys", json={"name": "a"}, headers=ADMIN)).json()["key"]
        b = (await http.post("/admin/keys", json={"name": "b"}, headers=ADMIN)).json()["key"]
        created = (await http.post("/v1/responses", json={"model": "gpt", "input": "Hello"}, headers=bearer(a))).json()
        other = await http.post(
            "/v1/responses",
            json={"model": "gpt", "input": "x", "previous_response_id": created["id"]},
            headers=bearer(b),
        )
        assert other.status_code == 400
        assert other.json()["error"]["code"] == "previous_response_not_found"
        assert (await http.get(f"/v1/responses/{created['id']}", headers=bearer(b))).status_code == 404
        await asyncio.sleep(0.8)  # written to the database within half a second
    async with sdk(tmp_path, **extra) as (_, upstreams, http):  # a restart: only the database remembers
        got = await http.get(f"/v1/responses/{created['id']}", headers=bearer(a))
        assert got.status_code == 200
        assert got.json()["output"] == created["output"]
        again = await http.post(
            "/v1/responses",
            json={"model": "gpt", "input": "More", "previous_response_id": created["id"]},
            headers=bearer(a),
        )
        assert again.status_code == 200
        assert [m["content"] for m in upstreams.bodies[-1]["messages"]] == ["Hello", "Hello! How can I help?", "More"]


async def test_what_chat_cannot_carry_is_a_400_naming_it(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (_, upstreams, http):
        for body, param in (
            ({"model": "gpt", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
            ({"model": "gpt", "input": [{"type": "item_reference", "id": "msg_unknown"}]}, "input[0].id"),
            ({"model": "gpt", "input": [{"type": "mystery"}]}, "input[0]"),
            ({"model": "gpt"}, "input"),
        ):
            answer = await http.post("/v1/responses", json=body)
            assert answer.status_code == 400, answer.text
            assert check_error(answer.content)["error"]["param"] == param
        assert upstreams.bodies == []


async def test_text_format_reasoning_and_item_references_translate(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (client, upstreams, http):
        first = await client.responses.create(model="gpt", input="Hello")
        reasoning, message = first.output  # the answer's reasoning_content, then its text
        assert (reasoning.type, message.type) == ("reasoning", "message")
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        body = {
            "model": "gpt",
            "input": [
                {"type": "item_reference", "id": message.id},
                {"role": "user", "content": [{"type": "input_text", "text": "Go on"}]},
            ],
            "text": {"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}},
            "reasoning": {"effort": "low"},
            "parallel_tool_calls": False,
        }
        assert (await http.post("/v1/responses", json=body)).status_code == 200
        sent = upstreams.bodies[-1]
        assert sent["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": schema, "strict": True},
        }
        assert sent["reasoning_effort"] == "low"
        assert sent["parallel_tool_calls"] is False
        assert sent["messages"] == [
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Go on"},
        ]


async def test_malformed_responses_requests_are_400s(tmp_path: Path) -> None:
    async with sdk(tmp_path) as (_, upstreams, http):
        for body in (
            {"model": "gpt", "input": "hi", "tools": 5},
            {"model": "gpt", "input": [{"type": "function_call_output", "call_id": "c", "output": [{"text": 5}]}]},
            {"model": "gpt", "input": "hi", "tool_choice": {"type": "allowed_tools", "tools": 5}},
        ):
            answer = await http.post("/v1/responses", json=body)
            assert answer.status_code == 400, (body, answer.text)
            check_error(answer.content)
        assert upstreams.bodies == []


async def test_a_row_the_database_refuses_does_not_block_the_others(tmp_path: Path) -> None:
    from router.store.database import Database
    from router.store.responses import ResponseStore
    from router.store.url import async_url

    database = Database(async_url(f"sqlite:///{tmp_path / 's.db'}"))
    await database.migrate()
    store = ResponseStore(database, 3600)
    try:
        store.put("k", {"id": "resp_dup", "output": []}, [])
        store.put("k", {"id": "resp_dup", "output": []}, [])  # a provider that reused an id
        store.put("k", {"id": "resp_ok", "output": []}, [])
        await store.flush()
        store.put("k", {"id": "resp_later", "output": []}, [])
        await store.flush()
        for response_id in ("resp_dup", "resp_ok", "resp_later"):
            assert await database.get_response(response_id) is not None, response_id
    finally:
        await database.close()


async def test_kept_responses_are_nothing_for_the_garbage_collector_to_walk_and_read_back_whole() -> None:
    import gc

    import msgspec

    from router.store.responses import ResponseStore

    store = ResponseStore(None, 3600)
    text = [{"type": "output_text", "text": "hi"}]
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": text}
    response = {"id": "resp_gc", "output": [message], "usage": {"input_tokens": 1}}
    before = len(gc.get_objects())
    for i in range(200):  # each its own nested objects, as each request's are
        fresh = msgspec.json.decode(msgspec.json.encode(response | {"id": f"resp_{i}"}))
        store.put("k", fresh, [{"role": "user", "content": "hi"}])
    gc.collect()
    # Nested dicts and lists for each response would be thousands of objects kept alive.
    assert len(gc.get_objects()) - before < 200
    stored = await store.get("resp_7", "k")
    assert stored is not None
    assert stored.response == response | {"id": "resp_7"}
    assert stored.items == [{"role": "user", "content": "hi"}, message]
    assert await store.item("msg_1", "k") == message
    assert await store.item("msg_1", "another key") is None
    assert await store.get("resp_7", "another key") is None


async def test_an_item_is_read_from_its_response_wherever_that_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``item_reference`` finds an output item through its response: in memory, or in the
    database once memory has let it go; never once the response has expired."""
    import asyncio

    from router.store import responses
    from router.store.database import Database
    from router.store.url import async_url

    monkeypatch.setattr(responses, "MEMORY", 2)
    database = Database(async_url(f"sqlite:///{tmp_path / 's.db'}"))
    await database.migrate()
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "hi"}],
    }
    question = {"type": "message", "role": "user", "content": "hi"}
    try:
        store = responses.ResponseStore(database, 3600)
        store.put("k", {"id": "resp_1", "output": [message]}, [question])
        await store.flush()
        assert await store.item("msg_1", "k") == message  # from memory
        for i in range(3):
            store.put("k", {"id": f"resp_{i + 2}", "output": []}, [question])
        assert "resp_1" not in store._recent  # let go of: only the database has it now
        assert await store.item("msg_1", "k") == message
        assert await store.item("msg_1", "another key") is None
        stored = await store.get("resp_1", "k")
        assert stored is not None
        assert stored.items == [question, message]

        brief = responses.ResponseStore(database, 0.05)
        brief.put("k", {"id": "resp_brief", "output": [message | {"id": "msg_2"}]}, [question])
        assert await brief.item("msg_2", "k") is not None
        await asyncio.sleep(0.1)
        assert await brief.item("msg_2", "k") is None  # expired with its response
    finally:
        await database.close()
