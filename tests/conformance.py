"""Strict OpenAI conformance of what Switchboard emits: answers, stream chunks, streams, errors
and the model list.

Each check validates against the ``openai`` package's own pydantic types in strict mode (types
must match exactly: no ``"1"`` for an int, no ``1.0`` for ``created``, ``Literal`` values such as
``object`` and ``finish_reason`` checked, tool calls discriminated by their ``type``), then checks
on the raw JSON what OpenAI always sends even where its types are lenient: keys that the types
default to ``None`` (``finish_reason`` in chunks, ``content`` in messages), ``index`` on streamed
tool calls, ``id``/``type``/``function.name`` on each call's first fragment, one ``id``/``created``
/``model`` per stream, one role per choice, usage totals that add up, and error bodies with exactly
their four keys.

A failure raises ``ConformanceError`` naming the offending path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec
import pydantic
from openai import BaseModel as OpenAIModel
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.shared import ErrorObject

__all__ = [
    "ConformanceError",
    "StreamSummary",
    "check_chunk",
    "check_completion",
    "check_error",
    "check_models",
    "check_stream",
]

ERROR_KEYS: Final = frozenset({"message", "type", "param", "code"})
DONE: Final = b"[DONE]"
DATA_PREFIX: Final = b"data: "
M = TypeVar("M", bound=OpenAIModel)


class ConformanceError(AssertionError):
    """What Switchboard emitted is not what OpenAI would have sent."""


@dataclass(frozen=True, slots=True)
class ToolCallSummary:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """A checked stream, reassembled per choice."""

    chunks: tuple[dict[str, Any], ...]
    error: dict[str, Any] | None  # the error event's ``error`` object, when the stream ended with one
    done: bool  # ended with ``data: [DONE]``
    usage: dict[str, Any] | None
    content: Mapping[int, str]
    reasoning: Mapping[int, str]
    tool_calls: Mapping[int, tuple[ToolCallSummary, ...]]
    finish_reasons: Mapping[int, str]


def _fail(where: str, what: str) -> ConformanceError:
    return ConformanceError(f"{where}: {what}")


def _decode(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _fail(where, f"not JSON ({exc}): {raw[:200]!r}") from None
    return _object(value, where)


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {type(value).__name__}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"expected an array, got {type(value).__name__}")
    return value


def _require(obj: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [key for key in keys if key not in obj]
    if missing:
        raise _fail(where, f"missing key(s) {missing} (OpenAI always sends them)")


def _nonempty_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(f"{where}.{key}", f"expected a non-empty string, got {value!r}")
    return value


def _count(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if type(value) is not int or value < 0:
        raise _fail(f"{where}.{key}", f"expected a non-negative integer, got {value!r}")
    return value


def _strict(model: type[M], raw: bytes, where: str) -> M:
    try:
        return model.model_validate_json(raw, strict=True)
    except pydantic.ValidationError as exc:
        raise _fail(where, f"not a strict openai {model.__name__}:\n{exc}") from None


def _check_envelope(obj: Mapping[str, Any], object_type: str, where: str) -> None:
    _require(obj, ("id", "object", "created", "model", "choices"), where)
    _nonempty_str(obj, "id", where)
    _nonempty_str(obj, "model", where)
    if obj["object"] != object_type:
        raise _fail(f"{where}.object", f"expected {object_type!r}, got {obj['object']!r}")
    if type(obj["created"]) is not int or obj["created"] <= 0:
        raise _fail(f"{where}.created", f"expected a Unix timestamp, got {obj['created']!r}")


def _check_usage(value: object, where: str) -> dict[str, Any]:
    usage = _object(value, where)
    _require(usage, ("prompt_tokens", "completion_tokens", "total_tokens"), where)
    prompt = _count(usage, "prompt_tokens", where)
    completion = _count(usage, "completion_tokens", where)
    total = _count(usage, "total_tokens", where)
    if total != prompt + completion:
        raise _fail(where, f"total_tokens {total} != prompt_tokens {prompt} + completion_tokens {completion}")
    for key, part, limit in (
        ("prompt_tokens_details", "cached_tokens", prompt),
        ("completion_tokens_details", "reasoning_tokens", completion),
    ):
        if usage.get(key) is None:
            continue
        details = _object(usage[key], f"{where}.{key}")
        if part in details and _count(details, part, f"{where}.{key}") > limit:
            raise _fail(f"{where}.{key}.{part}", f"{details[part]} is more than the {limit} tokens it is part of")
    return usage


def _check_arguments(arguments: object, where: str) -> str:
    if not isinstance(arguments, str):
        raise _fail(where, f"arguments must be a string, got {type(arguments).__name__}")
    try:
        decoded = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        raise _fail(where, f"arguments are not JSON: {arguments!r}") from None
    if not isinstance(decoded, dict):
        raise _fail(where, f"arguments must encode a JSON object, got {arguments!r}")
    return arguments


# ---- answers -------------------------------------------------------------------------------------


def check_completion(body: bytes) -> dict[str, Any]:
    """A non-streamed ``chat.completion``; returns it decoded."""
    _strict(ChatCompletion, body, "completion")
    completion = _decode(body, "completion")
    _check_envelope(completion, "chat.completion", "completion")
    choices = _list(completion["choices"], "completion.choices")
    if not choices:
        raise _fail("completion.choices", "an answer has at least one choice")
    for position, value in enumerate(choices):
        where = f"completion.choices[{position}]"
        choice = _object(value, where)
        _require(choice, ("index", "message", "finish_reason"), where)
        if choice["index"] != position:
            raise _fail(f"{where}.index", f"expected {position}, got {choice['index']!r}")
        message = _object(choice["message"], f"{where}.message")
        _require(message, ("role", "content"), f"{where}.message")
        if message["role"] != "assistant":
            raise _fail(f"{where}.message.role", f"expected 'assistant', got {message['role']!r}")
        for i, call_value in enumerate(_list(message.get("tool_calls") or [], f"{where}.message.tool_calls")):
            call_where = f"{where}.message.tool_calls[{i}]"
            call = _object(call_value, call_where)
            _require(call, ("id", "type", "function"), call_where)
            _nonempty_str(call, "id", call_where)
            if call["type"] != "function":
                raise _fail(f"{call_where}.type", f"expected 'function', got {call['type']!r}")
            function = _object(call["function"], f"{call_where}.function")
            _require(function, ("name", "arguments"), f"{call_where}.function")
            _nonempty_str(function, "name", f"{call_where}.function")
            _check_arguments(function["arguments"], f"{call_where}.function.arguments")
    if "usage" not in completion:
        raise _fail("completion", "missing key ['usage'] (OpenAI always sends it in an answer)")
    _check_usage(completion["usage"], "completion.usage")
    return completion


# ---- streams -------------------------------------------------------------------------------------


def check_chunk(payload: bytes, *, where: str = "chunk") -> dict[str, Any]:
    """One ``chat.completion.chunk`` on its own; returns it decoded."""
    _strict(ChatCompletionChunk, payload, where)
    chunk = _decode(payload, where)
    _check_envelope(chunk, "chat.completion.chunk", where)
    choices = _list(chunk["choices"], f"{where}.choices")
    for i, value in enumerate(choices):
        choice_where = f"{where}.choices[{i}]"
        choice = _object(value, choice_where)
        _require(choice, ("index", "delta", "finish_reason"), choice_where)
        delta = _object(choice["delta"], f"{choice_where}.delta")
        for j, call in enumerate(_list(delta.get("tool_calls") or [], f"{choice_where}.delta.tool_calls")):
            _require(_object(call, f"{choice_where}.delta.tool_calls[{j}]"), ("index",), f"{choice_where}.delta")
    usage = chunk.get("usage")
    if usage is not None:
        if choices:
            raise _fail(f"{where}.usage", "the usage chunk has `choices: []`")
        _check_usage(usage, f"{where}.usage")
    elif not choices:
        raise _fail(f"{where}.choices", "only the usage chunk has no choices")
    return chunk


def _is_azure_prelude(payload: bytes) -> bool:
    """Azure's first chunk: prompt filter results, no choices, empty id/object/model, created 0."""
    try:
        chunk = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and "prompt_filter_results" in chunk


def _events(raw: bytes) -> list[bytes]:
    """The payloads of a stream framed exactly as Switchboard promises: ``data: <payload>\\n\\n``,
    one line per event, nothing else (no comments, ``event:``/``id:`` lines or CRs)."""
    if not raw:
        raise _fail("stream", "empty")
    if b"\r" in raw:
        raise _fail("stream", "contains CR: every line ends with LF alone")
    if not raw.endswith(b"\n\n"):
        raise _fail("stream", f"does not end with a blank line: {raw[-80:]!r}")
    payloads: list[bytes] = []
    for n, frame in enumerate(raw[:-2].split(b"\n\n")):
        if not frame.startswith(DATA_PREFIX) or b"\n" in frame:
            raise _fail(f"stream event {n}", f"is not a single `data: ` line: {frame[:200]!r}")
        payloads.append(frame[len(DATA_PREFIX) :])
    return payloads


@dataclass(slots=True)
class _Choice:
    """What one choice of a stream has shown so far."""

    content: str = ""
    reasoning: str = ""
    finish: str | None = None
    calls: list[dict[str, str]] | None = None


class _StreamState:
    """Cross-chunk rules of one stream, fed chunk by chunk."""

    def __init__(self) -> None:
        self.identity: tuple[object, object, object] | None = None
        self.choices: dict[int, _Choice] = {}
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: Mapping[str, Any], where: str) -> None:
        identity = (chunk["id"], chunk["created"], chunk["model"])
        if self.identity is None:
            self.identity = identity
        elif identity != self.identity:
            raise _fail(where, f"(id, created, model) {identity} differs from the stream's {self.identity}")
        if self.usage is not None:
            raise _fail(where, "nothing but [DONE] follows the usage chunk")
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        for value in chunk["choices"]:
            self._choice(value, f"{where}.choices[{value['index']}]")

    def _choice(self, choice: Mapping[str, Any], where: str) -> None:
        index: int = choice["index"]
        delta: Mapping[str, Any] = choice["delta"]
        state = self.choices.get(index)
        if state is None:
            if delta.get("role") != "assistant":
                raise _fail(f"{where}.delta.role", f"a choice's first chunk has role 'assistant', got {delta!r}")
            state = self.choices[index] = _Choice()
        elif delta.get("role") is not None:
            raise _fail(f"{where}.delta.role", "the role comes once per choice, in its first chunk")
        if state.finish is not None:
            raise _fail(where, f"a chunk after the choice finished ({state.finish!r})")
        if isinstance(delta.get("content"), str):
            state.content += delta["content"]
        if isinstance(delta.get("reasoning_content"), str):
            state.reasoning += delta["reasoning_content"]
        for call in delta.get("tool_calls") or ():
            self._fragment(state, call, f"{where}.delta.tool_calls[{call['index']}]")
        if choice["finish_reason"] is not None:
            state.finish = choice["finish_reason"]

    @staticmethod
    def _fragment(state: _Choice, call: Mapping[str, Any], where: str) -> None:
        calls = state.calls = state.calls or []
        function: Mapping[str, Any] = call.get("function") or {}
        index = call["index"]
        if index == len(calls):  # a new call: its first fragment names it
            if not isinstance(call.get("id"), str) or not call["id"]:
                raise _fail(f"{where}.id", f"a call's first fragment has its id, got {call!r}")
            if call.get("type") != "function":
                raise _fail(f"{where}.type", f"a call's first fragment has type 'function', got {call!r}")
            if not isinstance(function.get("name"), str) or not function["name"]:
                raise _fail(f"{where}.function.name", f"a call's first fragment has its name, got {call!r}")
            calls.append({"id": call["id"], "name": function["name"], "arguments": ""})
        elif 0 <= index < len(calls):
            for key in ("id", "type"):
                if call.get(key) is not None:
                    raise _fail(f"{where}.{key}", "only a call's first fragment carries it")
            if function.get("name") is not None:
                raise _fail(f"{where}.function.name", "only a call's first fragment carries it")
        else:
            raise _fail(f"{where}.index", f"tool call indices count from 0 in order, got {index} after {len(calls)}")
        if isinstance(function.get("arguments"), str):
            calls[index]["arguments"] += function["arguments"]


def check_stream(raw: bytes, *, allow_azure_prelude: bool = False) -> StreamSummary:
    """A whole ``text/event-stream`` body as the client got it.

    Every event but the last is a chunk; the stream ends with ``data: [DONE]``, or with one
    ``{"error": …}`` event after at least one chunk (an error before any chunk is an HTTP error).
    ``allow_azure_prelude`` accepts Azure's prompt-filter first chunk, which Switchboard passes
    through as documented (README, Providers) and which OpenAI's strict types refuse.
    """
    payloads = _events(raw)
    state = _StreamState()
    chunks: list[dict[str, Any]] = []
    error: dict[str, Any] | None = None
    done = payloads[-1] == DONE
    body = payloads[:-1]
    if not done:
        last = f"stream event {len(payloads) - 1}"
        if "error" not in _decode(payloads[-1], last):
            raise _fail("stream", f"ends neither with `data: [DONE]` nor with an error event: {payloads[-1][:200]!r}")
        error = check_error(payloads[-1], where=last)["error"]
    if not body:
        raise _fail("stream", "no chunk before the end: a stream holds at least one chunk")
    for n, payload in enumerate(body):
        where = f"stream event {n}"
        if payload == DONE:
            raise _fail(where, "[DONE] before the end")
        if n == 0 and allow_azure_prelude and _is_azure_prelude(payload):
            prelude = _decode(payload, where)
            _require(prelude, ("id", "object", "created", "model", "choices"), where)
            chunks.append(prelude)
            continue
        chunk = check_chunk(payload, where=where)
        state.feed(chunk, where)
        chunks.append(chunk)
    if not state.choices:
        raise _fail("stream", "no chunk carried a choice")
    if done:
        unfinished = sorted(i for i, c in state.choices.items() if c.finish is None)
        if unfinished:
            raise _fail("stream", f"ended with [DONE] but choice(s) {unfinished} have no finish_reason")
        for i, choice in state.choices.items():
            for n, call in enumerate(choice.calls or ()):
                _check_arguments(call["arguments"], f"stream choice {i} tool call {n}")
    return StreamSummary(
        chunks=tuple(chunks),
        error=error,
        done=done,
        usage=state.usage,
        content={i: c.content for i, c in state.choices.items()},
        reasoning={i: c.reasoning for i, c in state.choices.items()},
        tool_calls={i: tuple(ToolCallSummary(**call) for call in c.calls or ()) for i, c in state.choices.items()},
        finish_reasons={i: c.finish for i, c in state.choices.items() if c.finish is not None},
    )


# ---- errors and models ---------------------------------------------------------------------------


def check_error(body: bytes, *, where: str = "error body") -> dict[str, Any]:
    """``{"error": {"message": str, "type": str, "param": str | null, "code": str | null}}``,
    exactly: all four keys present, nothing else."""
    envelope = _decode(body, where)
    if set(envelope) != {"error"}:
        raise _fail(where, f"expected exactly the key 'error', got {sorted(envelope)}")
    error = _object(envelope["error"], f"{where}.error")
    if set(error) != ERROR_KEYS:
        raise _fail(f"{where}.error", f"expected exactly the keys {sorted(ERROR_KEYS)}, got {sorted(error)}")
    _nonempty_str(error, "message", f"{where}.error")
    _nonempty_str(error, "type", f"{where}.error")
    for key in ("param", "code"):
        if error[key] is not None and not isinstance(error[key], str):
            raise _fail(f"{where}.error.{key}", f"expected a string or null, got {error[key]!r}")
    _strict(ErrorObject, msgspec.json.encode(error), f"{where}.error")
    return envelope


def check_models(body: bytes) -> dict[str, Any]:
    """``GET /v1/models``: ``{"object": "list", "data": [Model…]}``."""
    listing = _decode(body, "models")
    _require(listing, ("object", "data"), "models")
    if listing["object"] != "list":
        raise _fail("models.object", f"expected 'list', got {listing['object']!r}")
    for i, value in enumerate(_list(listing["data"], "models.data")):
        where = f"models.data[{i}]"
        card = _object(value, where)
        _require(card, ("id", "object", "created", "owned_by"), where)
        _nonempty_str(card, "id", where)
        _strict(Model, msgspec.json.encode(card), where)
    return listing
