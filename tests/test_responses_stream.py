"""The Responses event stream as a pure translation of Chat Completions chunks: the events of a
text message are put together from bytes (``ResponsesStream._raw_event``), so they are held here
to exactly what encoding the same events as dicts gives, and to the openai package's types."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import msgspec
import pytest

from providers import anthropic_inbound
from providers import responses as responses_module
from providers.anthropic_inbound import MessagesStream
from providers.chunk_view import ChunkView, Decoded, decode_body
from providers.errors import SwitchboardError, UpstreamProtocolError, UpstreamServerError
from providers.openai import OpenAIProvider, OpenAIStream
from providers.responses import Builder, ResponsesStream
from router.gateway.upstream_stream import UpstreamStream, for_framing
from tests.test_responses_api import strict_events

REQUEST = {"model": "gpt", "input": "hi", "stream": True}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {"id": "chatcmpl-1", "model": "gpt-4o", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return msgspec.json.encode(body | extra)


CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get", "arguments": ""}}
CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": 'Caf\u00e9 "quoted" '}),
    chunk({"content": "\\ and \u2028 \U0001f98a"}),
    chunk({"tool_calls": [CALL]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1}'}}]}),
    chunk({"content": "After the call."}),
    chunk({}, "stop"),
    msgspec.json.encode({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}),
]


def translated(split: int) -> bytes:
    stream = ResponsesStream(Builder(REQUEST))
    return stream.frames(CHUNKS[:split]) + stream.frames(CHUNKS[split:]) + stream.done()


def test_text_message_events_are_exactly_the_encoded_events() -> None:
    body = translated(3)
    ids = re.compile(rb"(resp|msg|fc)_[0-9a-f]{32}")
    assert ids.sub(b"id", body) == ids.sub(b"id", translated(1))  # however the chunks arrive
    events = strict_events(body)
    for frame in body.split(b"\n\n")[:-1]:  # compact JSON, keys in order: what encoding a dict gives
        data = frame.partition(b"\ndata: ")[2]
        assert msgspec.json.encode(msgspec.json.decode(data)) == data
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    first, second = events[2]["item"]["id"], events[13]["item"]["id"]
    assert first != second
    assert events[2] == {
        "type": "response.output_item.added",
        "sequence_number": 2,
        "output_index": 0,
        "item": {"id": first, "type": "message", "role": "assistant", "status": "in_progress", "content": []},
    }
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    where = {"item_id": first, "output_index": 0, "content_index": 0}
    assert events[3] == {"type": "response.content_part.added", "sequence_number": 3, **where, "part": part}
    assert events[4] == {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        **where,
        "delta": 'Caf\u00e9 "quoted" ',
        "logprobs": [],
    }
    text = 'Caf\u00e9 "quoted" \\ and \u2028 \U0001f98a'
    done = {"type": "response.output_text.done", "sequence_number": 6, **where, "text": text, "logprobs": []}
    assert events[6] == done
    assert events[7] == {"type": "response.content_part.done", "sequence_number": 7, **where} | {
        "part": part | {"text": text}
    }
    message = {"id": first, "type": "message", "role": "assistant", "status": "completed"}
    assert events[8] == {
        "type": "response.output_item.done",
        "sequence_number": 8,
        "output_index": 0,
        "item": message | {"content": [part | {"text": text}]},
    }
    assert events[14]["output_index"] == events[15]["output_index"] == 2
    final = events[-1]["response"]
    assert final["output"] == [events[8]["item"], events[12]["item"], events[18]["item"]]
    assert final["usage"]["output_tokens"] == 7


def test_the_model_is_taken_from_the_first_chunk_that_names_it() -> None:
    unnamed = [msgspec.json.encode({"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    stream = ResponsesStream(Builder(REQUEST))
    body = stream.frames(unnamed + CHUNKS[1:]) + stream.done()  # one read: all at once
    events = strict_events(body)
    assert events[-1]["response"]["model"] == "gpt-4o"
    texts = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert texts == 'Caf\u00e9 "quoted" \\ and \u2028 \U0001f98aAfter the call.'


# ---- chunks decoded once: the translator's views ------------------------------------------------


class _Body(httpx.AsyncByteStream):
    def __init__(self, *reads: bytes) -> None:
        self._reads = reads

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for read in self._reads:
            yield read


def sse(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + p + b"\n\n" for p in payloads)


def upstream(*reads: bytes, hide_usage: bool = False) -> UpstreamStream:
    provider = OpenAIProvider("o", "http://upstream/v1", "sk-test")
    translator = for_framing(OpenAIStream(provider, hide_usage))
    return UpstreamStream(httpx.Response(200, stream=_Body(*reads)), translator, "o", 1 << 20)


async def pulled(stream: UpstreamStream) -> list[Sequence[bytes]]:
    out: list[Sequence[bytes]] = []
    while (payloads := await stream.pull()) is not None:
        out.append(payloads)
    return out


def test_chunks_come_with_the_views_they_were_decoded_into_one_each() -> None:
    usage_only = msgspec.json.encode({"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}})
    reads = (
        sse(CHUNKS[0].replace(b"}]", b'}],"usage":null', 1), CHUNKS[1]) + b"data: :\n\n",  # a keep-alive: no chunk
        sse(CHUNKS[2], usage_only) + b"data: [DONE]\n\n",
    )
    stream = upstream(*reads, hide_usage=True)  # the usage chunk, Switchboard's own, is not passed on
    batches = asyncio.run(pulled(stream))
    assert [len(batch) for batch in batches] == [2, 1]
    for batch in batches:
        assert isinstance(batch, Decoded)
        assert len(batch.views) == len(batch)
        for payload, view in zip(batch, batch.views, strict=True):
            assert view.choices[0].delta.content == decode_body(payload).choices[0].delta.content
    first = batches[0]
    assert b'"usage":null' not in first[0]  # as the client would have had it
    assert isinstance(first, Decoded)
    assert isinstance(first.views[0], ChunkView)
    assert first.views[0].model == "gpt-4o"
    assert stream.report.usage is not None
    assert stream.report.usage.completion == 7
    assert stream.report.response_model == "gpt-4o"


def test_the_chunks_before_a_failure_in_the_same_read_keep_their_views() -> None:
    failed = msgspec.json.encode({"error": {"message": "overloaded"}})
    stream = upstream(sse(CHUNKS[1], CHUNKS[2], failed))
    first = asyncio.run(stream.pull())
    assert isinstance(first, Decoded)
    assert len(first) == len(first.views) == 2
    with pytest.raises(SwitchboardError):
        asyncio.run(stream.pull())


def test_a_framing_given_views_does_not_decode_the_chunks_again(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = upstream(sse(*CHUNKS) + b"data: [DONE]\n\n")
    batches = asyncio.run(pulled(stream))
    plain = [bytes(payload) for batch in batches for payload in batch]

    def refused(_: bytes) -> None:
        raise AssertionError("decoded again")

    ids = re.compile(rb"(resp|msg|fc|toolu)_[0-9a-zA-Z]{24,32}")
    expected = translated(len(CHUNKS))
    messages = MessagesStream("claude", 3)
    expected_messages = messages.frames(plain) + messages.done()
    for module in (responses_module, anthropic_inbound):
        monkeypatch.setattr(module, "decode_body", refused)
        monkeypatch.setattr(module, "decode_chunk", refused)
    responses = ResponsesStream(Builder(REQUEST))
    body = b"".join(responses.frames(batch) for batch in batches) + responses.done()
    assert ids.sub(b"id", body) == ids.sub(b"id", expected)
    messages = MessagesStream("claude", 3)
    body = b"".join(messages.frames(batch) for batch in batches) + messages.done()
    assert ids.sub(b"id", body) == ids.sub(b"id", expected_messages)


def test_an_odd_usage_is_unknown_and_the_stream_goes_on() -> None:
    odd = msgspec.json.encode({"id": "c", "choices": [], "usage": "n/a"})
    stream = upstream(sse(CHUNKS[1], odd, CHUNKS[6]) + b"data: [DONE]\n\n")
    batches = asyncio.run(pulled(stream))
    responses = ResponsesStream(Builder(REQUEST))
    body = b"".join(responses.frames(batch) for batch in batches) + responses.done()
    assert strict_events(body)[-1]["response"]["usage"] is None
    plain = ResponsesStream(Builder(REQUEST))  # decoding the chunks itself: the same
    events = strict_events(plain.frames([CHUNKS[1], odd, CHUNKS[6]]) + plain.done())
    assert events[-1]["response"]["usage"] is None
    messages = MessagesStream("claude", 3)
    assert b"message_stop" in messages.frames([CHUNKS[1], odd, CHUNKS[6]]) + messages.done()


def test_a_chunk_of_another_shape_fails_the_stream_and_an_error_in_one_keeps_its_message() -> None:
    error = msgspec.json.encode({"error": {"message": "overloaded right now"}, "choices": None})
    with pytest.raises(UpstreamServerError, match="overloaded right now"):
        asyncio.run(pulled(upstream(sse(error))))
    odd = msgspec.json.encode({"id": "c", "choices": [{"index": 0, "delta": 5}]})
    with pytest.raises(UpstreamProtocolError, match="unexpected shape"):
        asyncio.run(pulled(upstream(sse(odd))))
