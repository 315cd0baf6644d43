"""Anthropic's Messages API spoken by clients (``POST /v1/messages``), to and from Chat
Completions, Switchboard's internal form. Pure: bodies in, bodies out.

- ``to_chat``: a Messages request → a Chat Completions body (``InvalidRequest``-style errors
  naming the parameter for what cannot be expressed).
- ``from_chat``: a Chat Completions answer → a Messages answer.
- ``MessagesStream``: Chat Completions chunk payloads → Anthropic's event stream, every frame with
  its ``event:`` line (the Anthropic SDK dispatches on it and drops data-only frames).
- ``error_body``: an error in Anthropic's shape.

What the translation cannot carry (thinking blocks and their signatures, ``cache_control``,
documents, server tools, ``top_k``) is listed in the README; an ``anthropic`` target gets the
request untouched instead, so nothing is lost there.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from providers.base import TokenUsage
from providers.chunk_view import ChunkBody, ChunkDelta, ChunkView, Decoded, decode_body, decode_chunk, usage_fields

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

STOP_REASONS: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
MAX_TOOL_NAME: Final = 64  # OpenAI's limit on a function's name


class Untranslatable(Exception):
    """A Messages request Chat Completions cannot express: ``param`` names where."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error_body(status: int, message: str, request_id: str | None = None) -> bytes:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    kind = ERROR_TYPES.get(status, "api_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return _encode(body)


# ---- the request --------------------------------------------------------------------------------


def to_chat(request: Mapping[str, Any]) -> dict[str, Any]:
    """A Messages request (decoded JSON, already checked for its required fields) as a Chat
    Completions body."""
    messages: list[dict[str, Any]] = []
    system = request.get("system")
    if system is not None:
        text = system if isinstance(system, str) else _texts(system, "system")
        if text:
            messages.append({"role": "system", "content": text})
    for i, message in enumerate(request["messages"]):
        messages.extend(_message(message, f"messages[{i}]"))
    body: dict[str, Any] = {"model": request["model"], "messages": messages, "max_tokens": request["max_tokens"]}
    for name in ("temperature", "top_p"):
        if request.get(name) is not None:
            body[name] = request[name]
    stops = _stops(request.get("stop_sequences"))
    if stops:
        body["stop"] = stops
    metadata = request.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        body["user"] = metadata["user_id"]
    tools = request.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise Untranslatable("'tools' must be a list.", "tools")
    if tools:
        body["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = request.get("tool_choice")
    if choice is not None:
        body.update(_tool_choice(choice))
    if request.get("stream") is True:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # message_delta carries the output tokens
    return body


def _stops(stops: Any) -> list[str]:
    if stops is None:
        return []
    if not isinstance(stops, list) or not all(isinstance(x, str) for x in stops):
        raise Untranslatable("'stop_sequences' must be a list of strings.", "stop_sequences")
    return stops


def _texts(blocks: Any, where: str) -> str:
    if not isinstance(blocks, list):
        raise Untranslatable(f"'{where}' must be a string or a list of text blocks.", where)
    parts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise Untranslatable(f"'{where}[{j}]' must be a text block.", f"{where}[{j}]")
        parts.append(block["text"])
    return "\n\n".join(parts)


def _message(message: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise Untranslatable(f"'{where}.role' must be 'user' or 'assistant'.", f"{where}.role")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise Untranslatable(f"'{where}.content' must be a string or a list of blocks.", f"{where}.content")
    if role == "assistant":
        return [_assistant(content, f"{where}.content")]
    out: list[dict[str, Any]] = []  # tool results first: they answer the turn before
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            out.append(_tool_result(block, at))
        elif kind == "text":
            parts.append({"type": "text", "text": _str(block, "text", at)})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, at)}})
        else:
            raise Untranslatable(f"'{at}': a '{kind}' block cannot be sent to this model's provider.", at)
    if parts:
        simple = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts) if simple else parts})
    return out


def _assistant(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_str(block, "text", at))
        elif kind == "tool_use":
            arguments = block.get("input", {})
            calls.append(
                {
                    "id": _str(block, "id", at),
                    "type": "function",
                    "function": {"name": _str(block, "name", at), "arguments": _encode(arguments).decode()},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # a chat model neither takes nor needs the reasoning back
        else:
            raise Untranslatable(f"'{at}': a '{kind}' block cannot be sent to this model's provider.", at)
    turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _tool_result(block: dict[str, Any], at: str) -> dict[str, Any]:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = _texts([b for b in content if not (isinstance(b, dict) and b.get("type") == "image")], f"{at}.content")
    else:
        raise Untranslatable(f"'{at}.content' must be a string or a list of blocks.", f"{at}.content")
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": _str(block, "tool_use_id", at), "content": text}


def _image_url(block: dict[str, Any], at: str) -> str:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{_str(source, 'media_type', f'{at}.source')};base64,{_str(source, 'data', f'{at}.source')}"
    if isinstance(source, dict) and source.get("type") == "url":
        return _str(source, "url", f"{at}.source")
    raise Untranslatable(f"'{at}.source' must be a base64 or url image source.", f"{at}.source")


def _tool(tool: Any, at: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or "input_schema" not in tool:
        raise Untranslatable(f"'{at}': only client tools (with input_schema) can be sent to this model's provider.", at)
    name = _str(tool, "name", at)
    if len(name) > MAX_TOOL_NAME:
        raise Untranslatable(f"'{at}.name' is longer than {MAX_TOOL_NAME} characters.", f"{at}.name")
    function: dict[str, Any] = {"name": name, "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool":
        out = {"tool_choice": {"type": "function", "function": {"name": _str(choice, "name", "tool_choice")}}}
    else:
        raise Untranslatable("'tool_choice.type' must be auto, any, tool or none.", "tool_choice.type")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def _str(block: Mapping[str, Any], name: str, at: str) -> str:
    value = block.get(name)
    if not isinstance(value, str):
        raise Untranslatable(f"'{at}.{name}' must be a string.", f"{at}.{name}")
    return value


# ---- the answer ---------------------------------------------------------------------------------


def message_id(chat_id: object) -> str:
    return f"msg_{chat_id}" if isinstance(chat_id, str) and chat_id else f"msg_{secrets.token_hex(12)}"


def usage_of(usage: TokenUsage | None, estimate: int = 0) -> dict[str, int]:
    """Anthropic counts cached input apart from ``input_tokens``."""
    if usage is None:
        return {"input_tokens": estimate, "output_tokens": 0}
    return {
        "input_tokens": usage.prompt - usage.cached,
        "output_tokens": usage.completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached,
    }


def from_chat(body: bytes, usage: TokenUsage | None, model: str) -> bytes:
    """A Chat Completions answer (already validated by its adapter) as a Messages answer."""
    completion = _decode(body)
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{secrets.token_hex(12)}",
                "name": function.get("name") or "",
                "input": _arguments(function.get("arguments")),
            }
        )
    answer = {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": usage_of(usage),
    }
    return _encode(answer)


def _arguments(text: object) -> dict[str, Any]:
    """``tool_use.input`` must be an object: arguments that are not a JSON object are kept whole."""
    if isinstance(text, str) and text:
        try:
            value = _decode(text)
        except msgspec.DecodeError:
            return {"arguments": text}
        if isinstance(value, dict):
            return value
        return {"arguments": value}
    return {}


# ---- the stream ---------------------------------------------------------------------------------


def event(name: str, payload: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


# A text block's delta event up to its text, for the block at each index: the text (a JSON string)
# and the end are all that differ from one token to the next. The bytes are those ``event`` gives
# for ``{"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": t}}``.
_TEXT_DELTA: Final = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":'
)
_TEXT_DELTA_END: Final = b"}}\n\n"


class MessagesStream:
    """Chat Completions chunk payloads → Anthropic's events, block by block in index order."""

    def __init__(self, model: str, input_estimate: int) -> None:
        self._model = model
        self._estimate = input_estimate  # message_start must carry input_tokens: 0 breaks clients
        self._started = False
        self._index = -1  # the open block's index
        self._open: str | None = None  # its type
        self._tools: dict[int, int] = {}  # chat tool call index → block index
        self._stop = "end_turn"
        self._output = 0
        self._input: int | None = None
        self._cached = 0
        self._text_head = b""  # the open text block's delta event up to the text (see _TEXT_DELTA)

    def frames(self, payloads: Sequence[bytes]) -> bytes:
        out: list[bytes] = []
        views = payloads.views if isinstance(payloads, Decoded) else None  # decoded once, upstream
        chunk: ChunkBody
        for i, payload in enumerate(payloads):
            if not self._started:  # its id and model are read from the first chunk only
                view = views[i] if views is not None else decode_chunk(payload)
                out.append(self._start(view if isinstance(view, ChunkView) else ChunkView()))
                chunk = view
            else:
                chunk = views[i] if views is not None else decode_body(payload)
                # The common case, once per token: more text for the open text block, nothing else.
                choices = chunk.choices
                if choices and self._open == "text" and len(chunk.usage) <= 4:
                    choice = choices[0]
                    delta = choice.delta
                    if delta.content and delta.tool_calls is None and choice.finish_reason is None:
                        out += (self._text_head, _encode(delta.content), _TEXT_DELTA_END)
                        continue
            usage = usage_fields(chunk.usage)
            if usage:
                self._usage(usage)
            for choice in chunk.choices[:1]:  # Messages has one answer
                self._delta(choice.delta, out)
                if choice.finish_reason:
                    self._stop = STOP_REASONS.get(choice.finish_reason, "end_turn")
        return b"".join(out)

    def done(self) -> bytes:
        out: list[bytes] = []
        if not self._started:
            out.append(self._start(ChunkView()))
        self._close(out)
        usage: dict[str, Any] = {"output_tokens": self._output}
        if self._input is not None:
            usage |= {"input_tokens": self._input, "cache_read_input_tokens": self._cached}
        out.append(
            event(
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": self._stop, "stop_sequence": None}, "usage": usage},
            )
        )
        out.append(event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    @staticmethod
    def error(status: int, message: str) -> bytes:
        kind = ERROR_TYPES.get(status, "api_error")
        return event("error", {"type": "error", "error": {"type": kind, "message": message}})

    def _start(self, chunk: ChunkView) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": message_id(chunk.id),
            "type": "message",
            "role": "assistant",
            "model": chunk.model or self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._estimate, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message}) + event("ping", {"type": "ping"})

    def _usage(self, usage: Mapping[str, Any]) -> None:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        self._cached = cached if isinstance(cached, int) else 0
        if isinstance(prompt, int):
            self._input = prompt - self._cached
        if isinstance(completion, int):
            self._output = completion

    def _delta(self, delta: ChunkDelta, out: list[bytes]) -> None:
        if delta.content:
            if self._open != "text":
                self._begin(out, {"type": "text", "text": ""})
            out += (self._text_head, _encode(delta.content), _TEXT_DELTA_END)
        for call in delta.tool_calls or ():
            position = call.get("index", 0)
            function = call.get("function") or {}
            if position not in self._tools:
                block: dict[str, Any] = {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{secrets.token_hex(12)}",
                    "name": function.get("name") or "",
                    "input": {},
                }
                self._begin(out, block)
                self._tools[position] = self._index
            arguments = function.get("arguments")
            if arguments and self._tools[position] == self._index:
                out.append(self._block_delta({"type": "input_json_delta", "partial_json": arguments}))

    def _begin(self, out: list[bytes], block: dict[str, Any]) -> None:
        self._close(out)
        self._index += 1
        self._open = block["type"]
        self._text_head = _TEXT_DELTA % self._index
        out.append(
            event("content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block})
        )

    def _block_delta(self, delta: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": self._index}))
            self._open = None
