"""The offline provider: deterministic OpenAI-format answers and fault injection."""

from __future__ import annotations

import re

import httpx
import msgspec
import pytest

from providers.mock import CANNED_TEXT, MockBehaviour, MockTransport
from providers.schema import ChatCompletion, ChatCompletionChunk
from providers.sse import SSEParser


async def call(transport: MockTransport, body: dict[str, object]) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, base_url="http://mock/v1") as client:
        return await client.post("/chat/completions", json=body)


USER = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say this back"}]


async def test_echo_model_repeats_the_last_user_message() -> None:
    response = await call(MockTransport(), {"model": "echo", "messages": USER})
    completion = msgspec.json.decode(response.content, type=ChatCompletion)
    assert completion.choices[0].message.content == "say this back"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "echo"
    assert completion.usage is not msgspec.UNSET
    assert completion.usage.completion_tokens == 3
    assert completion.usage.prompt_tokens == 5


async def test_echo_of_multipart_content() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}]
    response = await call(MockTransport(), {"model": "echo", "messages": messages})
    assert msgspec.json.decode(response.content, type=ChatCompletion).choices[0].message.content == "a"


async def test_other_models_answer_the_canned_text() -> None:
    response = await call(MockTransport(), {"model": "story", "messages": USER})
    assert msgspec.json.decode(response.content, type=ChatCompletion).choices[0].message.content == CANNED_TEXT


async def test_stream_is_word_by_word_in_openai_order_with_usage() -> None:
    body = {"model": "echo", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    response = await call(MockTransport(), body)
    events = SSEParser().feed(response.content)
    assert events[-1].data == b"[DONE]"
    chunks = [msgspec.json.decode(e.data, type=ChatCompletionChunk) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    words = [c.choices[0].delta.content for c in chunks[1:4]]
    assert words == ["say ", "this ", "back"]
    assert chunks[4].choices[0].finish_reason == "stop"
    assert chunks[5].choices == []
    assert chunks[5].usage is not None
    assert chunks[5].usage is not msgspec.UNSET
    assert chunks[5].usage.total_tokens == 8
    assert len({c.id for c in chunks}) == 1


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    response = await call(MockTransport(), {"model": "echo", "messages": USER, "stream": True})
    events = SSEParser().feed(response.content)
    assert all(b'"usage"' not in e.data for e in events)


async def test_max_tokens_truncates_with_length() -> None:
    response = await call(MockTransport(), {"model": "story", "messages": USER, "max_tokens": 2})
    choice = msgspec.json.decode(response.content, type=ChatCompletion).choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == "Hello from "


async def test_failure_injection_is_seeded_and_uses_the_configured_status() -> None:
    transport = MockTransport(MockBehaviour(failure_rate=0.5, failure_status=529, seed=7))
    got = [(await call(transport, {"model": "echo", "messages": USER})).status_code for _ in range(40)]
    again_transport = MockTransport(MockBehaviour(failure_rate=0.5, failure_status=529, seed=7))
    again = [(await call(again_transport, {"model": "echo", "messages": USER})).status_code for _ in range(40)]
    assert got == again
    assert set(got) == {200, 529}
    assert 8 <= got.count(529) <= 32


@pytest.mark.parametrize("rate", [0.0, 1.0])
async def test_failure_rate_extremes(rate: float) -> None:
    transport = MockTransport(MockBehaviour(failure_rate=rate))
    codes = {(await call(transport, {"model": "echo", "messages": USER})).status_code for _ in range(10)}
    assert codes == ({503} if rate else {200})


async def test_answer_ids_are_unique_across_restarts() -> None:
    # A fresh transport is a restarted gateway: its first answer must not reuse an earlier id.
    ids = []
    for _ in range(2):
        response = await call(MockTransport(), {"model": "echo", "messages": USER})
        ids.append(msgspec.json.decode(response.content, type=ChatCompletion).id)
    assert ids[0] != ids[1]
    assert all(re.fullmatch(r"chatcmpl-mock-[0-9a-f]{24}", i) for i in ids)
