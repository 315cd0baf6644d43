"""Message content for spans, only when the operator asks for it
(``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``): the conversation and the answer as
the GenAI semantic conventions' ``gen_ai.input.messages`` and ``gen_ai.output.messages`` JSON
(a role and typed parts per message). Pure functions of the OpenAI-format wire data; nothing here
runs unless capture is on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from providers.schema import Message

CAPTURE_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_encode = msgspec.json.Encoder().encode


def capture_from_env(environ: Mapping[str, str]) -> bool:
    return environ.get(CAPTURE_ENV, "").strip().lower() == "true"


def input_messages(messages: Sequence[Message]) -> str:
    out: list[dict[str, Any]] = []
    for message in messages:
        parts: list[dict[str, Any]] = []
        content = message.content
        if isinstance(content, str):
            parts.append({"type": "text", "content": content})
        elif isinstance(content, list):
            for part in content:
                if isinstance(part.text, str):
                    parts.append({"type": "text", "content": part.text})
                else:
                    parts.append({"type": part.type})  # images, audio, files: named, not copied
        if isinstance(message.tool_calls, list):
            parts += [
                {"type": "tool_call", "id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in message.tool_calls
            ]
        if message.role == "tool" and isinstance(message.tool_call_id, str):
            parts = [{"type": "tool_call_response", "id": message.tool_call_id, "response": content}]
        out.append({"role": message.role, "parts": parts})
    return _encode(out).decode()


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _Call(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_Call] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None


class _Body(msgspec.Struct):
    choices: list[_Choice] = []


_decode_body = msgspec.json.Decoder(_Body).decode


def output_messages(answer: bytes) -> str | None:
    """The answer's choices, or None when the body cannot be read."""
    try:
        body = _decode_body(answer)
    except msgspec.DecodeError:
        return None
    out = [_output(c.message or _Message(), c.finish_reason) for c in body.choices]
    return _encode(out).decode()


def _output(message: _Message, finish_reason: str | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if message.content:
        parts.append({"type": "text", "content": message.content})
    for call in message.tool_calls or ():
        function = call.function or _Function()
        parts.append({"type": "tool_call", "id": call.id, "name": function.name, "arguments": function.arguments})
    return {"role": "assistant", "parts": parts, "finish_reason": finish_reason or ""}


class StreamedOutput:
    """The answer of a stream, put together from its chunks' deltas as they are relayed."""

    __slots__ = ("_choices",)

    def __init__(self) -> None:
        self._choices: dict[int, tuple[list[str], dict[int, _Call], list[str | None]]] = {}

    def add(self, payloads: Sequence[bytes]) -> None:
        for payload in payloads:
            try:
                body = _decode_body(payload)
            except msgspec.DecodeError:
                continue
            for choice in body.choices:
                text, calls, finish = self._choices.setdefault(choice.index, ([], {}, [None]))
                if choice.finish_reason is not None:
                    finish[0] = choice.finish_reason
                delta = choice.delta
                if delta is None:
                    continue
                if delta.content:
                    text.append(delta.content)
                for call in delta.tool_calls or ():
                    known = calls.setdefault(call.index, _Call(index=call.index, function=_Function(arguments="")))
                    known.id = known.id or call.id
                    if call.function is not None and known.function is not None:
                        known.function.name = known.function.name or call.function.name
                        known.function.arguments = (known.function.arguments or "") + (call.function.arguments or "")

    def messages(self) -> str:
        out = [
            _output(_Message(content="".join(text), tool_calls=list(calls.values())), finish[0])
            for _, (text, calls, finish) in sorted(self._choices.items())
        ]
        return _encode(out).decode()
