"""The Responses event stream as a pure translation of Chat Completions chunks: the events of a
text message are put together from bytes (``ResponsesStream._raw_event``), so they are held here
to exactly what encoding the same events as dicts gives, and to the openai package's types."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from providers.responses import Builder, ResponsesStream
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
